"""The promotion gate: is the distilled student better than the one it would replace? Pure.

Both are measured on the same held-out examples (`before`: the serving
student, `after`: the distilled one). The student passes when its agreement
with the teacher gains at least `min_agreement_gain` overall AND no slice of
the held-out data with at least `min_slice_examples` examples loses more than
`slice_tolerance`: an aggregate can hide a regression (a class, or the long
answers, getting worse while the rest improves). Slices: the teacher's label
for classifiers; the length of the teacher's answer for language models
(`evaluate.answer_length_slice`). Agreement of a generated answer is judged by
the run's matcher (`DistillSettings.matcher`: a cluster run gets its cascade's;
`kascade.distillation.held_out_judge`). An answer the matcher could not judge
(an LLM judge with no verdict or out of reach, an encoder that failed) is
counted, never guessed, and the gate judges only when it judged at least
`MIN_JUDGED_SHARE` of the held-out answers both before and after: agreement
measured on the share the failures left would be a figure the failures chose.

`kascade distill` writes the verdict into the provenance and its
Distillation's status (`gate`); the operator promotes from that status
(`kascade.operator.promotion`) and never promotes a student that failed it.
"""

from __future__ import annotations

from kascade.api.distillation import GateVerdict, SliceChange
from kascade.api.loop import Gate
from kascade.distillation.result import HeldOutFigures

NOTHING_TO_COMPARE = "no held-out answers to compare"
MIN_JUDGED_SHARE = 0.9  # of the held-out answers generated, before and after, the matcher must judge


def too_few_judged(before: HeldOutFigures, after: HeldOutFigures) -> list[str]:
    """Why the figures cannot be judged: fewer than `MIN_JUDGED_SHARE` of the answers got a judgement."""
    reasons = []
    for moment, figures in (("before", before), ("after", after)):
        compared, judged = figures.answers_compared, figures.answers_judged
        if judged < MIN_JUDGED_SHARE * compared or judged == 0:
            reasons.append(
                f"the matcher judged {judged} of {compared} held-out answers {moment} training "
                f"({compared - judged} unjudged); the gate needs at least {MIN_JUDGED_SHARE:.0%} judged"
            )
    return reasons


def _rate(counts: tuple[int, int]) -> float | None:
    agreed, total = counts
    return agreed / total if total else None


def promotion_gate(before: HeldOutFigures, after: HeldOutFigures, gate: Gate) -> GateVerdict:
    """The verdict: passed or not, the overall gain, every slice's change, and each reason it failed."""
    start, end = before.answer_agreement, after.answer_agreement
    if start is None or end is None or not after.answers_compared:
        return GateVerdict(passed=False, gain=None, reasons=[NOTHING_TO_COMPARE])
    if unjudged := too_few_judged(before, after):
        return GateVerdict(passed=False, gain=None, reasons=unjudged)
    reasons = []
    gain = end - start
    if gain < gate.min_agreement_gain:
        reasons.append(
            f"agreement with the teacher gained {gain:+.4f} ({start:.4f} -> {end:.4f}); "
            f"the gate needs at least {gate.min_agreement_gain:+.4f}"
        )
    slices = {}
    for name, counts in sorted(after.slices.items()):
        was, now = _rate(before.slices.get(name, (0, 0))), _rate(counts)
        if was is None or now is None:
            continue
        examples = counts[1]
        slices[name] = SliceChange(examples=examples, before=was, after=now, change=now - was)
        if examples >= gate.min_slice_examples and now - was < -gate.slice_tolerance:
            reasons.append(
                f"slice {name} ({examples} examples) lost {now - was:+.4f} ({was:.4f} -> {now:.4f}); "
                f"the gate allows {-gate.slice_tolerance:+.4f}"
            )
    return GateVerdict(passed=not reasons, gain=gain, reasons=reasons, slices=slices)
