"""Held-out figures of a student, before and after: agreement with the teacher and accuracy where labels exist.

LM: token top-1 agreement (with the teacher's answer fed in, how often the
student's most likely next token is the teacher's), the held-out loss, and
final-answer agreement on up to `eval_generate` answers the student generates
greedily (judged against the teacher's answer by the run's matcher,
`kascade.distillation.held_out_judge`: the same label, number or text, an
embedding cosine, an LLM judge's verdict). An answer the matcher could not
judge is counted (`answers_unjudged`) and left out of the agreement.
Classifier: agreement with the teacher's label and accuracy against the
reference label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from kascade.api.agreement import AnswerMatcher
from kascade.api.distill_settings import DistillSettings
from kascade.distillation.batches import EncodedLm, collate_classify, collate_lm
from kascade.distillation.examples import DistillExample
from kascade.distillation.held_out_judge import HeldOutJudge, TextJudge, request_body
from kascade.distillation.losses import IGNORE_INDEX, hard_label_loss
from kascade.distillation.result import HeldOutFigures
from kascade.runtime.online.agreement import AgreementQuestion


def answer_length_slice(answer_tokens: int) -> str:
    """The slice of a language model's held-out example: how long the teacher's answer is."""
    if answer_tokens <= 16:
        return "answer<=16 tokens"
    return "answer 17-64 tokens" if answer_tokens <= 64 else "answer>64 tokens"


def slice_counts(keys: Sequence[str], agreed: Sequence[bool | None]) -> dict[str, tuple[int, int]]:
    """Per slice: (agreeing, examples judged); an unjudged example counts in none."""
    counts: dict[str, tuple[int, int]] = {}
    for key, same in zip(keys, agreed, strict=True):
        if same is None:
            continue
        agreeing, examples = counts.get(key, (0, 0))
        counts[key] = (agreeing + int(same), examples + 1)
    return counts


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@torch.no_grad()
def lm_metrics(
    student: Any,
    tokenizer: Any,
    examples: Sequence[DistillExample],
    encoded: Sequence[EncodedLm],
    settings: DistillSettings,
    pad_id: int,
    judge: HeldOutJudge,
) -> HeldOutFigures:
    training = settings.training
    was_training = student.training
    student.eval()
    agreeing = positions = 0
    losses = []
    for chunk in _chunks(list(encoded), training.batch_size):
        batch = collate_lm(chunk, pad_id).to(student.device)
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        labels = batch.labels[:, 1:]
        keep = labels != IGNORE_INDEX
        agreeing += int(((logits.argmax(-1) == labels) & keep).sum())
        positions += int(keep.sum())
        losses.append(float(hard_label_loss(logits, labels)))
    generated = generate_answers(
        student,
        tokenizer,
        [e.prompt for e in encoded[: training.eval_generate]],
        max_new_tokens=training.max_new_tokens,
        batch_size=training.batch_size,
        pad_id=pad_id,
    )
    same, right = judged_answers(judge, generated, examples)
    student.train(was_training)
    return answer_figures(same, right, [len(e.answer) for e in encoded[: len(same)]]).model_copy(
        update={
            "examples": len(examples),
            "token_agreement": agreeing / positions if positions else 0.0,
            "loss": sum(losses) / len(losses) if losses else 0.0,
        }
    )


def answer_figures(
    same: Sequence[bool | None], right: Sequence[bool | None], answer_tokens: Sequence[int]
) -> HeldOutFigures:
    """The figures of generated answers judged against the teacher's (`same`) and the references (`right`):
    agreement and accuracy among those judged, the unjudged counted; slices by the teacher's answer length."""
    agreed, judged = [x for x in same if x is not None], [x for x in right if x is not None]
    return HeldOutFigures(
        examples=len(same),
        answers_generated=len(same),
        answers_unjudged=len(same) - len(agreed),
        answer_agreement=sum(agreed) / len(agreed) if agreed else 0.0,
        answer_accuracy=sum(judged) / len(judged) if judged else None,
        slices=slice_counts([answer_length_slice(tokens) for tokens in answer_tokens], same),
    )


def judged_answers(
    judge: AnswerMatcher | HeldOutJudge, generated: Sequence[str], examples: Sequence[DistillExample]
) -> tuple[list[bool | None], list[bool | None]]:
    """Of the generated answers (to the first examples): which agree with the teacher's, and, of those with a
    reference, which are right; both judged by the run's matcher (a pure one by name), None where it could not."""
    judging = TextJudge(judge) if isinstance(judge, AnswerMatcher) else judge
    pairs = list(zip(generated, examples, strict=False))
    questions = [AgreementQuestion(request_body(e.kind, e.prompt), text, e.target) for text, e in pairs]
    # A reference that is the teacher's answer (a dataset's) is the same question: asked once.
    other = {i: e.reference for i, (_, e) in enumerate(pairs) if e.reference is not None and e.reference != e.target}
    asked = judging.agree(questions + [replace(questions[i], reference=ref) for i, ref in other.items()])
    same, by_reference = asked[: len(questions)], dict(zip(other, asked[len(questions) :], strict=True))
    right = [by_reference.get(i, same[i]) for i, (_, e) in enumerate(pairs) if e.reference is not None]
    return same, right


def generate_answers(
    student: Any, tokenizer: Any, prompts: Sequence[list[int]], *, max_new_tokens: int, batch_size: int, pad_id: int
) -> list[str]:
    """Greedy answers, left-padded batches; the text up to the end-of-sequence token."""
    answers: list[str] = []
    for chunk in _chunks(list(prompts), batch_size):
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=student.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=student.device)
        out = student.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )
        answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out)
    return answers


@torch.no_grad()
def classify_metrics(
    student: Any,
    tokenizer: Any,
    examples: Sequence[DistillExample],
    label_ids: dict[str, int],
    settings: DistillSettings,
) -> HeldOutFigures:
    was_training = student.training
    student.eval()
    agree = right = labelled = 0
    agreed: list[bool] = []
    for chunk in _chunks(list(examples), settings.training.batch_size):
        batch = collate_classify(tokenizer, chunk, label_ids, max_length=settings.training.max_length)
        batch = batch.to(student.device)
        predicted = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.argmax(-1).tolist()
        for example, index in zip(chunk, predicted, strict=True):
            agree += index == label_ids[example.target]
            agreed.append(index == label_ids[example.target])
            if example.reference is not None:
                labelled += 1
                right += index == label_ids[example.reference]
    student.train(was_training)
    return HeldOutFigures(
        examples=len(examples),
        answer_agreement=agree / len(examples) if examples else 0.0,
        answer_accuracy=right / labelled if labelled else None,
        slices=slice_counts([f"label={e.target}" for e in examples], agreed),
    )
