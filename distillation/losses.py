"""Distillation losses: pure functions of tensors, no I/O, no model.

Shapes: B = batch, L = positions, V = vocabulary (or classes), k = teacher
entries kept per position. Logits and labels are aligned: the logits at
position t are scored against the label at position t (a causal LM's shift is
the caller's). A label of `IGNORE_INDEX` (-100) masks its position out of
every term, as in transformers and TRL.

Divergences (`kascade.api.loop.DistillationLoss`; per position, summed over
the vocabulary; averaged over the positions that are not masked):

- forward KL, KL(teacher ‖ student): mode-covering; Hinton's soft targets;
- reverse KL, KL(student ‖ teacher): mode-seeking (MiniLLM, on-policy GKD);
- generalized JSD with `beta` (Agarwal et al., GKD, eq. 1): with
  M = beta·teacher + (1 − beta)·student,
  beta·KL(teacher ‖ M) + (1 − beta)·KL(student ‖ M); beta = 0 is forward KL,
  beta = 1 reverse KL (TRL's convention, equal to its `generalized_jsd_loss`).

Both distributions are softened by the same temperature T. `distillation_loss`
mixes the divergence with the hard-label cross-entropy (at T = 1):
alpha · T² · divergence + (1 − alpha) · CE. The T² keeps the soft term's
gradients on the same scale as the hard term's when T changes (Hinton et al.,
2015, section 2).

The sparse form reads the teacher as the escalation log keeps it: the top-k
token ids with their logprobs, plus the probability mass outside them (the
tail). Both distributions are compared over k + 1 buckets, the k ids and the
tail; caching only the top-k without the tail biases the student towards
over-confidence (Sparse Logit Sampling, ACL 2025). At T = 1 the bucketed
divergence is exact over those buckets; at T ≠ 1 the tail is softened as if it
were one token (its inner shape is not known). With k = V and no tail it
equals the dense loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kascade.api.loop import DistillationLoss

IGNORE_INDEX = -100
_SMALLEST_TAIL = 1e-12  # the tail's floor: log(0) would make reverse KL infinite on rounding noise
# A recorded tail below this is rounding noise of 1 − Σ top-k in float32, not mass: it is not softened by T
# (T = 3 would lift a 6e-8 of noise to a 0.4% bucket).
NEGLIGIBLE_TAIL = 1e-5


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension, [..., V] → [...]; entries with p = 0 add nothing (0 · log 0 = 0)."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def divergence_per_position(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, divergence: DistillationLoss, beta: float = 0.5
) -> torch.Tensor:
    """The chosen divergence at each position: log-probabilities [..., V] → [...]."""
    if divergence is DistillationLoss.forward_kl or (divergence is DistillationLoss.jsd and beta == 0):
        return _kl(teacher_log_probs, student_log_probs)
    if divergence is DistillationLoss.reverse_kl or (divergence is DistillationLoss.jsd and beta == 1):
        return _kl(student_log_probs, teacher_log_probs)
    mixture = torch.logsumexp(
        torch.stack([teacher_log_probs + math.log(beta), student_log_probs + math.log1p(-beta)]), dim=0
    )
    return beta * _kl(teacher_log_probs, mixture) + (1 - beta) * _kl(student_log_probs, mixture)


def masked_mean(values: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` [B, L] over the positions whose label is not IGNORE_INDEX; 0 when every one is masked."""
    if labels is None:
        return values.mean()
    keep = labels != IGNORE_INDEX
    return (values * keep).sum() / keep.sum().clamp_min(1)


def dense_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    divergence: DistillationLoss = DistillationLoss.forward_kl,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean divergence between full distributions; logits [B, L, V] (or [B, V] for classifiers), labels [B, L]."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return masked_mean(divergence_per_position(student, teacher, divergence, beta), labels)


def _log_one_minus(log_mass: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, floored at log(_SMALLEST_TAIL)."""
    return torch.clamp(-torch.expm1(log_mass.clamp_max(0)), min=_SMALLEST_TAIL).log()


def bucket_log_probs(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher over k + 1 buckets (the teacher's top-k ids, then the tail), as log-probabilities.

    student_logits [B, L, V]; teacher_ids [B, L, k] (long); teacher_logprobs
    [B, L, k] at T = 1, `-inf` where a position kept fewer than k entries (its
    id is then ignored); teacher_tail [B, L], the teacher's mass outside its
    top-k. Returns two tensors [B, L, k + 1].
    """
    kept = torch.isfinite(teacher_logprobs)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    student_top = student.gather(-1, teacher_ids.clamp_min(0)).masked_fill(~kept, -math.inf)
    student_tail = _log_one_minus(torch.logsumexp(student_top, dim=-1))
    tail = teacher_tail.float()
    floor = torch.full_like(tail, math.log(_SMALLEST_TAIL))
    tail_log = torch.where(tail > NEGLIGIBLE_TAIL, tail.clamp_min(_SMALLEST_TAIL).log() / temperature, floor)
    teacher = torch.cat([teacher_logprobs.float() / temperature, tail_log.unsqueeze(-1)], dim=-1)
    teacher = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)
    return torch.cat([student_top, student_tail.unsqueeze(-1)], dim=-1), teacher


def sparse_divergence(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    divergence: DistillationLoss = DistillationLoss.forward_kl,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean divergence against a top-k + tail teacher (shapes in `bucket_log_probs`); labels [B, L]."""
    student, teacher = bucket_log_probs(student_logits, teacher_ids, teacher_logprobs, teacher_tail, temperature)
    return masked_mean(divergence_per_position(student, teacher, divergence, beta), labels)


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the labels at T = 1; logits [B, L, V] or [B, V], labels [B, L] or [B]."""
    return F.cross_entropy(
        student_logits.float().reshape(-1, student_logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def distillation_loss(
    soft: torch.Tensor, hard: torch.Tensor | None, *, alpha: float, temperature: float
) -> torch.Tensor:
    """alpha · T² · soft + (1 − alpha) · hard; without a hard term, T² · soft alone."""
    scaled = soft * temperature**2
    if hard is None:
        return scaled
    return alpha * scaled + (1 - alpha) * hard
