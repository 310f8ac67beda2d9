"""Writing a calibrated rule keeps the user's comments, layout and other documents; the result still validates."""

from __future__ import annotations

from pathlib import Path

from kascade.api.modelcascade import Accept
from kascade.evaluation.manifest_edit import write_accept
from kascade.runtime.local.manifest import load_manifest

MANIFEST = """\
# My cascade: keep this comment.
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
---
apiVersion: kascade.dev/v1alpha1
kind: ModelCascade
metadata:
  name: mine   # and this one
spec:
  task: chat
  tiers:
    - name: small
      model:
        uri: /models/small
      accept:
        method: quantile
        quantile: 0.2
        threshold: 0.5   # hand-picked
    - name: large
      model:
        uri: /models/large
"""


def test_only_the_rule_changes(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(MANIFEST)
    learned = {"features": ["minProb", "meanMargin"], "weights": [2.5, 1.0], "bias": -1.25}
    write_accept(
        path,
        "small",
        Accept(method="learned", threshold=0.8125, span="finalCodeBlock", learned=learned),
        "Set by kascade calibrate on test.jsonl.",
    )
    text = path.read_text()
    assert "# My cascade: keep this comment." in text and "name: mine   # and this one" in text
    assert "kind: ConfigMap" in text
    assert "    - name: small\n" in text and "    - name: large\n" in text  # the list layout is the user's
    assert "# Set by kascade calibrate on test.jsonl." in text
    accept = load_manifest(path).spec.tiers[0].accept
    assert accept is not None and accept.threshold == 0.8125 and accept.learned is not None
    assert accept.learned.weights == [2.5, 1.0] and "quantile:" not in text.split("name: large")[0].split("accept:")[1]


def test_calibrating_again_replaces_the_note(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(MANIFEST)
    write_accept(path, "small", Accept(method="quantile", threshold=0.6), "Set by kascade calibrate on a.jsonl.")
    write_accept(path, "small", Accept(method="quantile", threshold=0.7), "Set by kascade calibrate on b.jsonl.")
    text = path.read_text()
    assert "on b.jsonl" in text and "on a.jsonl" not in text and text.count("Set by kascade calibrate") == 1
