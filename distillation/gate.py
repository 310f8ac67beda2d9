"""The promotion gate: is the distilled student better than the one it would replace? Pure.

Both are measured on the same held-out examples (`before`: the serving
student, `after`: the distilled one). The student passes when its agreement
with the teacher gains at least `min_agreement_gain` overall AND no slice of
the held-out data with at least `min_slice_examples` examples loses more than
`slice_tolerance`: an aggregate can hide a regression (a class, or the long
answers, getting worse while the rest improves). Slices: the teacher's label
for classifiers; the length of the teacher's answer for language models
(`evaluate.answer_length_slice`).

`kascade distill` writes the verdict into the provenance (`gate`); the
operator's promotion (a later issue) reads the same verdict and never
promotes a student that failed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateSettings:
    min_agreement_gain: float = 0.01
    slice_tolerance: float = 0.02
    min_slice_examples: int = 20


def _rate(counts: Any) -> float | None:
    agreed, total = counts
    return agreed / total if total else None


def promotion_gate(before: Mapping[str, Any], after: Mapping[str, Any], settings: GateSettings) -> dict[str, Any]:
    """The verdict: passed or not, the overall gain, every slice's change, and each reason it failed."""
    reasons = []
    start, end = before.get("answer_agreement"), after.get("answer_agreement")
    if start is None or end is None or not after.get("answers_generated", after.get("examples", 0)):
        return {
            "passed": False,
            "gain": None,
            "slices": {},
            "reasons": ["no held-out answers to compare"],
            "settings": asdict(settings),
        }
    gain = end - start
    if gain < settings.min_agreement_gain:
        reasons.append(
            f"agreement with the teacher gained {gain:+.4f} ({start:.4f} -> {end:.4f}); "
            f"the gate needs at least {settings.min_agreement_gain:+.4f}"
        )
    slices = {}
    for name, counts in sorted((after.get("slices") or {}).items()):
        was, now = _rate((before.get("slices") or {}).get(name, (0, 0))), _rate(counts)
        if was is None or now is None:
            continue
        slices[name] = {"examples": counts[1], "before": was, "after": now, "change": now - was}
        if counts[1] >= settings.min_slice_examples and now - was < -settings.slice_tolerance:
            reasons.append(
                f"slice {name} ({counts[1]} examples) lost {now - was:+.4f} ({was:.4f} -> {now:.4f}); "
                f"the gate allows {-settings.slice_tolerance:+.4f}"
            )
    return {"passed": not reasons, "gain": gain, "slices": slices, "reasons": reasons, "settings": asdict(settings)}
