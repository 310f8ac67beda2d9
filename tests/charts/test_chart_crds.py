"""The chart's CRDs are the generated ones, byte for byte, and can be upgraded.

Helm installs a chart's crds/ folder on the first install only and never
upgrades it; `crds.manage=true` renders the same CRDs as templates instead
(kept on uninstall), so that `helm upgrade` upgrades them.
"""

from __future__ import annotations

import pytest
import yaml
from chart_testkit import CHART, CRDS, by_kind, render, render_values

CHART_CRDS = CHART / "crds"


def test_the_charts_crds_are_byte_identical_to_the_generated_ones():
    generated = {path.name: path.read_bytes() for path in sorted(CRDS.glob("*.yaml"))}
    shipped = {path.name: path.read_bytes() for path in sorted(CHART_CRDS.glob("*.yaml"))}
    assert generated, "crds/ holds no CRDs"
    assert sorted(shipped) == sorted(generated), "charts/kascade/crds/ must hold exactly the files of crds/"
    stale = [name for name in generated if shipped[name] != generated[name]]
    assert stale == [], f"charts/kascade/crds/ is stale: run `kascade crds --out charts/kascade/crds` ({stale})"


@pytest.mark.slow  # helm
def test_helm_installs_the_crds_from_the_crds_folder():
    crds = by_kind(render("defaults", "--include-crds"), "CustomResourceDefinition")
    expected = [yaml.safe_load(path.read_text()) for path in sorted(CHART_CRDS.glob("*.yaml"))]
    assert crds == expected
    assert by_kind(render("defaults"), "CustomResourceDefinition") == []


@pytest.mark.slow  # helm
def test_managed_crds_are_the_same_crds_kept_on_uninstall():
    crds = by_kind(render_values({"crds": {"manage": True}}), "CustomResourceDefinition")
    expected = [yaml.safe_load(path.read_text()) for path in sorted(CHART_CRDS.glob("*.yaml"))]
    assert len(crds) == len(expected) > 0
    for crd, original in zip(crds, expected, strict=True):
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {**original["metadata"].get("annotations", {}), "helm.sh/resource-policy": "keep"}
        assert crd == original


@pytest.mark.slow  # helm
def test_the_documented_crd_upgrade_command_prints_the_crds():
    """`helm show crds <chart> | kubectl apply --server-side -f -` (NOTES.txt, docs/install.md) applies exactly crds/."""
    from chart_testkit import helm

    shown = [doc for doc in yaml.safe_load_all(helm("show", "crds", str(CHART)).stdout) if doc]
    assert shown == [yaml.safe_load(path.read_text()) for path in sorted(CHART_CRDS.glob("*.yaml"))]
