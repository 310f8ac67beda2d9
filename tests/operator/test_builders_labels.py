"""Child names, labels and the spec hash."""

from __future__ import annotations

import re

import pytest

from kascade.operator.labels import (
    CASCADE_LABEL,
    SPEC_HASH_ANNOTATION,
    child_name,
    common_labels,
    is_owned_by,
    label_value,
    owned_selector,
    selector_labels,
    selector_string,
    spec_hash,
    with_spec_hash,
)

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_short_names_are_plain() -> None:
    assert child_name("chat", "small") == "chat-small"
    assert child_name("chat", "router") == "chat-router"


@pytest.mark.parametrize(
    "cascade",
    ["a" * 253, "x" * 60, "my.cascade.v2", "7b-chat", "a" * 22 + "." + "b" * 30, "0" * 100],
)
@pytest.mark.parametrize("suffix", ["router", "t", "a" * 40])
def test_names_are_dns_1035_labels_and_keep_their_suffix(cascade: str, suffix: str) -> None:
    name = child_name(cascade, suffix)
    assert DNS_1035.match(name), name
    assert len(name) <= 63
    assert name.endswith(f"-{suffix}")


def test_long_names_differ_by_hash() -> None:
    one = child_name("a" * 100 + "x", "router")
    two = child_name("a" * 100 + "y", "router")
    assert one != two
    assert child_name("a" * 100 + "x", "router") == one  # stable


def test_selector_labels_are_a_stable_subset_of_the_common_labels() -> None:
    selector = selector_labels("chat", "tier", "small")
    common = common_labels("chat", "tier", "small")
    assert selector.items() <= common.items()
    assert "app.kubernetes.io/version" in common
    assert "app.kubernetes.io/version" not in selector
    assert common["app.kubernetes.io/part-of"] == "kascade"
    assert common["app.kubernetes.io/managed-by"] == "kascade-operator"
    assert selector == {
        "app.kubernetes.io/name": "kascade",
        "app.kubernetes.io/instance": "chat",
        "app.kubernetes.io/component": "tier",
        "kascade.dev/cascade": "chat",
        "kascade.dev/tier": "small",
    }
    assert "kascade.dev/tier" not in selector_labels("chat", "router")


def test_label_values_fit_63_characters() -> None:
    long = "a" * 200
    assert len(label_value(long)) <= 63
    assert selector_labels(long, "router")[CASCADE_LABEL] == label_value(long)
    assert label_value("short") == "short"


def test_ownership_by_labels() -> None:
    child = {"metadata": {"labels": common_labels("chat", "router")}}
    assert is_owned_by(child, "chat")
    assert not is_owned_by(child, "other")
    assert not is_owned_by({"metadata": {"labels": {CASCADE_LABEL: "chat"}}}, "chat")
    assert selector_string(owned_selector("chat")) == (
        "app.kubernetes.io/managed-by=kascade-operator,kascade.dev/cascade=chat"
    )


def _manifest() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "n", "labels": {"a": "b"}},
        "data": {"k": "v"},
    }


def test_spec_hash_ignores_what_the_server_and_kopf_add() -> None:
    desired = with_spec_hash(_manifest())
    digest = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert spec_hash(_manifest()) == digest
    served = {
        **desired,
        "metadata": {
            **desired["metadata"],
            "uid": "123",
            "resourceVersion": "42",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "managedFields": [{"manager": "kopf"}],
            "ownerReferences": [{"kind": "ModelCascade", "name": "chat", "uid": "u"}],
        },
        "status": {"anything": 1},
    }
    assert spec_hash(served) == digest


def test_spec_hash_sees_every_desired_change_and_ignores_key_order() -> None:
    base = spec_hash(_manifest())
    changed = _manifest()
    changed["data"]["k"] = "w"
    assert spec_hash(changed) != base
    relabelled = _manifest()
    relabelled["metadata"]["labels"]["a"] = "c"
    assert spec_hash(relabelled) != base
    reordered = {
        "data": {"k": "v"},
        "metadata": {"labels": {"a": "b"}, "namespace": "n", "name": "x"},
        "kind": "ConfigMap",
        "apiVersion": "v1",
    }
    assert spec_hash(reordered) == base
