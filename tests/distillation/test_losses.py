"""The losses on tiny tensors: hand-computed values, TRL's generalized JSD, the sparse form against the dense one."""

from __future__ import annotations

import math
import os

import pytest
import torch

from kascade.api.loop import DistillationLoss
from kascade.distillation.losses import (
    IGNORE_INDEX,
    dense_divergence,
    distillation_loss,
    hard_label_loss,
    sparse_divergence,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _two_token(p: float) -> torch.Tensor:
    """Logits [1, 1, 2] whose softmax is (p, 1 - p)."""
    return torch.tensor([[[math.log(p), math.log(1 - p)]]])


def test_forward_and_reverse_kl_match_the_formula_by_hand() -> None:
    teacher, student = _two_token(0.8), _two_token(0.5)
    forward = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert dense_divergence(student, teacher).item() == pytest.approx(forward, rel=1e-6)
    assert dense_divergence(student, teacher, divergence=DistillationLoss.reverse_kl).item() == pytest.approx(
        reverse, rel=1e-6
    )


def test_jsd_matches_the_formula_by_hand_and_reaches_both_kls_at_the_ends() -> None:
    teacher, student = _two_token(0.8), _two_token(0.5)
    beta = 0.3
    mixture = (beta * 0.8 + 0.7 * 0.5, beta * 0.2 + 0.7 * 0.5)
    kl_t = 0.8 * math.log(0.8 / mixture[0]) + 0.2 * math.log(0.2 / mixture[1])
    kl_s = 0.5 * math.log(0.5 / mixture[0]) + 0.5 * math.log(0.5 / mixture[1])
    jsd = dense_divergence(student, teacher, divergence=DistillationLoss.jsd, beta=beta).item()
    assert jsd == pytest.approx(beta * kl_t + (1 - beta) * kl_s, rel=1e-6)
    for beta, same_as in ((0.0, DistillationLoss.forward_kl), (1.0, DistillationLoss.reverse_kl)):
        at_end = dense_divergence(student, teacher, divergence=DistillationLoss.jsd, beta=beta)
        assert at_end.item() == pytest.approx(dense_divergence(student, teacher, divergence=same_as).item())


def test_temperature_softens_both_and_the_mix_scales_the_soft_term_by_t_squared() -> None:
    teacher, student = _two_token(0.8), _two_token(0.5)
    soft = dense_divergence(student, teacher, temperature=2.0)
    # At T = 2 the teacher's (0.8, 0.2) becomes (2/3, 1/3): sqrt(0.8) : sqrt(0.2) = 2 : 1.
    expected = (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)
    assert soft.item() == pytest.approx(expected, rel=1e-6)
    hard = torch.tensor(1.5)
    mixed = distillation_loss(soft, hard, alpha=0.25, temperature=2.0)
    assert mixed.item() == pytest.approx(0.25 * 4 * expected + 0.75 * 1.5, rel=1e-6)


def test_masked_positions_add_nothing() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 3, IGNORE_INDEX], [IGNORE_INDEX] * 4 + [6]])
    scrambled_student = student.clone()
    scrambled_student[labels == IGNORE_INDEX] = torch.randn(int((labels == IGNORE_INDEX).sum()), 7) * 5
    for divergence in DistillationLoss:
        before = dense_divergence(student, teacher, labels, divergence=divergence)
        after = dense_divergence(scrambled_student, teacher, labels, divergence=divergence)
        assert before.item() == pytest.approx(after.item(), rel=1e-6)
    assert hard_label_loss(student, labels).item() == pytest.approx(hard_label_loss(scrambled_student, labels).item())
    all_masked = torch.full((2, 5), IGNORE_INDEX)
    assert dense_divergence(student, teacher, all_masked).item() == 0.0


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_equals_trl_on_the_same_inputs(beta: float, temperature: float) -> None:
    from trl.experimental.gkd import GKDTrainer

    torch.manual_seed(1)
    student, teacher = torch.randn(3, 6, 11), torch.randn(3, 6, 11) * 2
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :2] = IGNORE_INDEX
    ours = dense_divergence(
        student, teacher, labels, divergence=DistillationLoss.jsd, beta=beta, temperature=temperature
    )
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)


def _top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logprobs = torch.log_softmax(logits, dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids, values, (1 - values.exp().sum(-1)).clamp_min(0)


@pytest.mark.parametrize("divergence", list(DistillationLoss))
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_sparse_loss_with_k_equal_to_the_vocabulary_equals_the_dense_one(
    divergence: DistillationLoss, temperature: float
) -> None:
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    labels = torch.tensor([[1, IGNORE_INDEX, 3, 4], [5, 6, 7, IGNORE_INDEX]])
    ids, logprobs, tail = _top_k(teacher, 9)
    sparse = sparse_divergence(student, ids, logprobs, tail, labels, divergence=divergence, temperature=temperature)
    dense = dense_divergence(student, teacher, labels, divergence=divergence, temperature=temperature)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6)


def test_sparse_loss_keeps_the_tail_and_ignores_padding_entries() -> None:
    torch.manual_seed(3)
    student, teacher = torch.randn(1, 3, 20), torch.randn(1, 3, 20)
    ids, logprobs, tail = _top_k(teacher, 4)
    assert (tail > 0.05).all()  # a real tail to keep
    # The bucketed forward KL at T = 1 by hand: top-4 buckets plus one tail bucket.
    s = torch.log_softmax(student, -1)
    s_top = s.gather(-1, ids)
    s_tail = torch.log1p(-s_top.exp().sum(-1))
    by_hand = (logprobs.exp() * (logprobs - s_top)).sum(-1) + tail * (tail.log() - s_tail)
    assert sparse_divergence(student, ids, logprobs, tail).item() == pytest.approx(by_hand.mean().item(), rel=1e-5)
    # A fifth entry that is padding (-inf, any id) changes nothing.
    padded_ids = torch.cat([ids, torch.zeros(1, 3, 1, dtype=torch.long)], -1)
    padded_logprobs = torch.cat([logprobs, torch.full((1, 3, 1), -math.inf)], -1)
    padded = sparse_divergence(student, padded_ids, padded_logprobs, tail)
    assert padded.item() == pytest.approx(by_hand.mean().item(), rel=1e-5)


def test_gradients_are_finite_when_the_student_puts_all_mass_on_the_top_k() -> None:
    teacher = torch.tensor([[[0.0, 0.0, -50.0]]])
    ids, logprobs, tail = _top_k(teacher, 2)
    student = torch.tensor([[[30.0, 30.0, -30.0]]], requires_grad=True)
    for divergence in DistillationLoss:
        loss = sparse_divergence(student, ids, logprobs, tail, divergence=divergence, temperature=2.0)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
