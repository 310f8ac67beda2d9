"""The operator's RBAC in the chart: exactly the calls it makes, in the scope it runs in.

kascade.operator.permissions.OPERATOR_RULES lists every (verb, group,
resource) the operator calls, with why; the chart's rules and the table in
docs/operator.md are generated from it (scripts/render_permissions.py) and
must not be stale; the rendered Roles must grant exactly those calls (checked
through `rbac_coverage.check_rbac`, the same function the operator's
end-to-end test feeds its recorded requests to).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from typing import Any

import pytest
import yaml
from chart_testkit import REPO, by_kind, operator_deployment, render, render_values
from rbac_coverage import ApiCall, api_call, check_rbac, grants

from kascade.api.modelcascade import ModelCascade
from kascade.operator.builders import CHILD_KINDS, KEDA_CHILD_KINDS, build_router_role
from kascade.operator.permissions import OPERATOR_RULES
from kascade.operator.settings import OperatorSettings
from kascade.testing import RecordedRequest

TABLE = "kascade.operator.permissions.OPERATOR_RULES"
RENDER_SCRIPT = REPO / "scripts" / "render_permissions.py"
WATCHED = ["team-a", "team-b"]  # the "namespaced" value set
NAMED_VERBS = ("get", "patch", "update", "delete")


def listed_calls() -> list[dict[str, Any]]:
    """The operator's table, one entry per resource: group, resource, scope, modes, verbs (verb -> why)."""
    return [
        {
            "group": rule.api_group,
            "resource": resource,
            "scope": rule.scope.value,
            "verbs": dict(rule.reasons),
            "modes": [mode.value for mode in rule.modes],
            **({"never_called": True} if rule.never_called else {}),
        }
        for rule in OPERATOR_RULES
        for resource in rule.resources
    ]


def render_script() -> Any:
    spec = importlib.util.spec_from_file_location("render_permissions", RENDER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def calls_in(namespace: str, *, mode: str, scopes: tuple[str, ...] = ("namespaced", "cluster")) -> list[ApiCall]:
    """The listed calls of a watch mode as requests would make them: namespaced ones in `namespace`."""
    result = []
    for entry in listed_calls():
        if entry["scope"] not in scopes or mode not in entry.get("modes", ["namespaced", "cluster-wide"]):
            continue
        for verb in entry["verbs"]:
            ns = namespace if entry["scope"] == "namespaced" else None
            named = "x" if verb in NAMED_VERBS else None
            result.append(ApiCall(verb, entry["group"], entry["resource"], ns, named))
    return result


def never_called() -> set[tuple[str, str, str]]:
    """Grants for an admission check, which no request uses."""
    return {(verb, e["group"], e["resource"]) for e in listed_calls() if e.get("never_called") for verb in e["verbs"]}


def assert_exact(report: Any) -> None:
    """Every call allowed, and nothing granted that no call uses (except the admission-only grants)."""
    unused = [grant for grant in report.unused if (grant.verb, grant.group, grant.resource) not in never_called()]
    assert report.not_allowed == [] and unused == [], report.explain()


def roles_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(objects, "Role") + by_kind(objects, "ClusterRole")


# --- the list itself ---------------------------------------------------------------


def test_every_listed_call_says_why():
    for entry in listed_calls():
        assert entry["scope"] in ("namespaced", "cluster"), entry
        for verb, why in entry["verbs"].items():
            assert verb in ("get", "list", "watch", "create", "patch", "update", "delete", "deletecollection")
            assert isinstance(why, str) and len(why.split()) >= 5, f"{verb} {entry['resource']}: say why"


def test_every_child_kind_of_the_operator_has_its_whole_life_cycle_listed():
    """A kind added to CHILD_KINDS without RBAC would fail on the first cascade; this catches it first."""
    listed = {(entry["group"], entry["resource"]): set(entry["verbs"]) for entry in listed_calls()}
    for child in (*CHILD_KINDS, *KEDA_CHILD_KINDS):
        group = child.api_version.rpartition("/")[0]
        verbs = listed.get((group, child.plural))
        assert verbs is not None, f"{child.kind} ({child.plural}) is a child kind but not in {TABLE}"
        assert {"get", "list", "create", "update", "delete"} <= verbs, f"{child.plural}: {sorted(verbs)}"


def test_the_list_agrees_with_the_operators_own_rules():
    """The calls as the chart's tests read them say what OPERATOR_RULES says, verb by verb and scope by scope."""
    rules = OPERATOR_RULES
    theirs = {
        (verb, rule.api_group, resource, "cluster" if rule.cluster_scoped else "namespaced")
        for rule in rules
        for verb in rule.verbs
        for resource in rule.resources
    }
    ours = {(verb, e["group"], e["resource"], e["scope"]) for e in listed_calls() for verb in e["verbs"]}
    ours_called = {call for call in ours if call[:3] not in never_called()}  # OPERATOR_RULES may list these or not
    assert ours_called - theirs == set(), "listed here, not in OPERATOR_RULES"
    assert theirs - ours == set(), "in OPERATOR_RULES, not in the calls"


# --- namespaced mode: Roles only ---------------------------------------------------------


@pytest.mark.slow  # helm template
def test_namespaced_mode_grants_exactly_the_listed_calls_in_each_watched_namespace():
    objects = render("namespaced")
    assert by_kind(objects, "ClusterRole") == [] and by_kind(objects, "ClusterRoleBinding") == []
    assert sorted(role["metadata"]["namespace"] for role in by_kind(objects, "Role")) == WATCHED
    requests = [call for ns in WATCHED for call in calls_in(ns, mode="namespaced", scopes=("namespaced",))]
    assert_exact(check_rbac(requests, roles_of(objects)))


@pytest.mark.slow  # helm template
def test_namespaced_mode_grants_nothing_outside_the_watched_namespaces():
    calls = calls_in("somewhere-else", mode="namespaced")
    report = check_rbac(calls, roles_of(render("namespaced")))
    assert report.not_allowed == sorted(calls)


@pytest.mark.slow  # helm template
def test_namespaced_mode_makes_cluster_reads_only_on_request():
    """Nodes, CRDs and Namespaces are cluster-scoped: reading them needs a ClusterRole, made only when asked."""
    cluster_calls = calls_in("team-a", mode="namespaced", scopes=("cluster",))
    assert {call.resource for call in cluster_calls} == {"nodes", "customresourcedefinitions", "namespaces"}
    assert check_rbac(cluster_calls, roles_of(render("namespaced"))).not_allowed == sorted(cluster_calls)
    objects = render_values({"watch": {"namespaces": ["team-a"]}, "rbac": {"clusterReads": True}})
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert_exact(check_rbac(cluster_calls, [cluster_role]))
    requests = calls_in("team-a", mode="namespaced")
    assert_exact(check_rbac(requests, roles_of(objects)))


# --- cluster-wide mode: one ClusterRole -----------------------------------------------------


@pytest.mark.parametrize("value_set", ["defaults", "cluster-wide"])
@pytest.mark.slow  # helm template
def test_cluster_wide_mode_grants_exactly_the_listed_calls_everywhere(value_set: str):
    objects = render(value_set)
    assert by_kind(objects, "Role") == [] and by_kind(objects, "RoleBinding") == []
    (cluster_role,) = by_kind(objects, "ClusterRole")
    requests = calls_in("any-namespace", mode="cluster-wide") + calls_in("another", mode="cluster-wide")
    assert "namespaces" not in {call.resource for call in requests}  # Kopf reads none with --all-namespaces
    assert_exact(check_rbac(requests, [cluster_role]))


@pytest.mark.slow  # helm template
def test_cluster_wide_mode_without_the_cluster_reads():
    objects = render_values({"rbac": {"clusterReads": False}})
    assert_exact(check_rbac(calls_in("ns", mode="cluster-wide", scopes=("namespaced",)), roles_of(objects)))
    cluster_calls = calls_in("ns", mode="cluster-wide", scopes=("cluster",))
    assert check_rbac(cluster_calls, roles_of(objects)).not_allowed == sorted(cluster_calls)


@pytest.mark.slow  # helm template
def test_no_rbac_objects_when_rbac_create_is_false():
    objects = render_values({"rbac": {"create": False}})
    assert not [obj for obj in objects if obj["kind"].endswith(("Role", "RoleBinding"))]


# --- what the rules must never hold --------------------------------------------------------


@pytest.mark.parametrize("value_set", ["defaults", "namespaced", "cluster-wide", "customised"])
@pytest.mark.slow  # helm template
def test_no_wildcards_escalation_or_secret_enumeration(value_set: str):
    children = {child.plural for child in (*CHILD_KINDS, *KEDA_CHILD_KINDS)}
    for grant in grants(roles_of(render(value_set))):
        assert "*" not in (grant.verb, grant.group, grant.resource), grant
        assert grant.verb not in ("escalate", "bind", "impersonate", "deletecollection"), grant
        if grant.verb == "update":
            # The finalizers of the owners whose dependents carry blockOwnerDeletion: cascades, and runs (their Jobs).
            assert grant.resource in children | {"modelcascades/finalizers", "distillations/finalizers"}, grant
        if grant.resource == "secrets":
            assert grant.verb == "get", f"{grant}: the operator reads Secrets by name, never enumerates them"


def test_every_rule_carries_a_comment_saying_why():
    text = (REPO / "charts" / "kascade" / "templates" / "_operator_rules.tpl").read_text()
    lines = text.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    assert len(rule_lines) >= 9
    for index in rule_lines:
        assert lines[index - 1].lstrip().startswith("#"), (
            f"_operator_rules.tpl line {index + 1}: a rule with no comment above it"
        )


def test_the_charts_rules_and_the_docs_table_are_generated_from_the_operators_table():
    """One source: a permission added to kascade.operator.permissions must be rendered into the chart and docs."""
    script = render_script()
    for path, text in script.rendered().items():
        stale = f"{path.relative_to(REPO)} is stale: run `python scripts/render_permissions.py`"
        assert path.read_text() == text, stale
    assert script.main(["--check"]) == 0


def test_the_rbac_template_holds_no_rule_of_its_own():
    """rbac.yaml only places the generated rules into Roles and ClusterRoles."""
    text = (REPO / "charts" / "kascade" / "templates" / "rbac.yaml").read_text()
    assert not [line for line in text.splitlines() if line.lstrip().startswith("- apiGroups:")]


# --- bindings and the router's permissions ---------------------------------------------------


@pytest.mark.parametrize("value_set", ["defaults", "namespaced", "customised"])
@pytest.mark.slow  # helm template
def test_bindings_bind_the_operators_service_account(value_set: str):
    objects = render(value_set)
    pod = operator_deployment(objects)["spec"]["template"]["spec"]
    bindings = by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding")
    assert bindings
    names = {(role["kind"], role["metadata"].get("namespace"), role["metadata"]["name"]) for role in roles_of(objects)}
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "kascade-system"}
        ]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], namespace, ref["name"]) in names, f"{binding['metadata']['name']} binds a missing role"


def example_cascade(namespace: str) -> ModelCascade:
    manifest = yaml.safe_load((REPO / "examples" / "local-demo.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    return ModelCascade.model_validate(manifest)


@pytest.mark.parametrize(
    ("value_set", "namespace"), [("defaults", "team-a"), ("namespaced", "team-b"), ("customised", "ml")]
)
@pytest.mark.slow  # helm template
def test_the_operator_holds_every_permission_it_grants_a_router(value_set: str, namespace: str):
    """RBAC refuses a Role granting more than its creator holds: the router's Role must fit in the operator's."""
    router_role = build_router_role(example_cascade(namespace), OperatorSettings())
    requests = [
        ApiCall(verb, group, resource, namespace, name)
        for rule in router_role["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in rule.get("resourceNames") or [None]
    ]
    assert requests
    report = check_rbac(requests, roles_of(render(value_set)))
    assert report.not_allowed == [], report.explain()


def test_the_routers_role_patches_only_its_own_cascades_status():
    """The chart creates no router identity; the operator's Role for it allows get/patch of one status, nothing else."""
    router_role = build_router_role(example_cascade("team-a"), OperatorSettings())
    assert router_role["metadata"]["namespace"] == "team-a"
    allowed = [ApiCall("patch", "kascade.dev", "modelcascades/status", "team-a", "local-demo")]
    refused = [
        ApiCall("patch", "kascade.dev", "modelcascades/status", "team-a", "another-cascade"),
        ApiCall("patch", "kascade.dev", "modelcascades", "team-a", "local-demo"),
        ApiCall("list", "kascade.dev", "modelcascades", "team-a"),
        ApiCall("get", "", "secrets", "team-a", "api-keys"),
    ]
    report = check_rbac(allowed + refused, [router_role])
    assert report.not_allowed == sorted(refused)


# --- the hook itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/apis/kascade.dev/v1alpha1/modelcascades", ("list", "kascade.dev", "modelcascades", None, None)),
        (
            "GET",
            "/apis/kascade.dev/v1alpha1/modelcascades?watch=true&resourceVersion=5",
            ("watch", "kascade.dev", "modelcascades", None, None),
        ),
        (
            "GET",
            "/apis/kascade.dev/v1alpha1/namespaces/ml/modelcascades?watch=1",
            ("watch", "kascade.dev", "modelcascades", "ml", None),
        ),
        (
            "PATCH",
            "/apis/kascade.dev/v1alpha1/namespaces/ml/modelcascades/a/status",
            ("patch", "kascade.dev", "modelcascades/status", "ml", "a"),
        ),
        ("POST", "/api/v1/namespaces/ml/events", ("create", "", "events", "ml", None)),
        ("GET", "/api/v1/namespaces/ml/secrets/keys", ("get", "", "secrets", "ml", "keys")),
        ("PUT", "/apis/apps/v1/namespaces/ml/deployments/a-small", ("update", "apps", "deployments", "ml", "a-small")),
        ("DELETE", "/api/v1/namespaces/ml/services/a-small", ("delete", "", "services", "ml", "a-small")),
        ("DELETE", "/api/v1/namespaces/ml/pods", ("deletecollection", "", "pods", "ml", None)),
        ("GET", "/api/v1/nodes", ("list", "", "nodes", None, None)),
        ("GET", "/api/v1/namespaces", ("list", "", "namespaces", None, None)),
        ("GET", "/api/v1/namespaces/ml", ("get", "", "namespaces", "ml", "ml")),
        ("GET", "/api/v1/watch/namespaces/ml/pods", ("watch", "", "pods", "ml", None)),
    ],
)
def test_requests_are_read_as_the_api_servers_authorizer_reads_them(method: str, path: str, expected: tuple):
    assert api_call(method, path) == ApiCall(*expected)


@pytest.mark.parametrize("path", ["/api", "/apis", "/apis/kascade.dev", "/apis/apps/v1", "/version", "/openapi/v3"])
def test_discovery_is_not_a_resource_call(path: str):
    assert api_call("GET", path) is None


def test_the_hook_reads_recorded_requests_and_reports_both_ways():
    """What the lead's end-to-end test passes in: the stand-in's RecordedRequest objects, and tuples."""
    role = {
        "kind": "Role",
        "metadata": {"name": "op", "namespace": "ml"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "delete"]}],
    }
    recorded = [
        RecordedRequest("GET", "/api/v1/namespaces/ml/configmaps", {"labelSelector": "a=b"}, None, "", "kopf"),
        RecordedRequest("GET", "/api/v1/namespaces/ml/configmaps", {"watch": "true"}, None, "", "kopf"),
        RecordedRequest("GET", "/apis", {}, None, "", "kopf"),
        ("POST", "/api/v1/namespaces/ml/configmaps"),
        ("GET", "/api/v1/namespaces/ml/configmaps/x"),
    ]
    report = check_rbac(recorded, [role])
    assert report.not_allowed == [ApiCall("create", "", "configmaps", "ml"), ApiCall("watch", "", "configmaps", "ml")]
    assert [grant.verb for grant in report.unused] == ["delete"]
    assert "NOT ALLOWED: create configmaps in ml" in report.explain()


def test_the_api_calls_list_agrees_with_docs_operator_md_when_it_exists():
    """docs/operator.md (the operator's own account of its calls) names every resource listed here."""
    doc = REPO / "docs" / "operator.md"
    if not doc.exists():
        pytest.skip("docs/operator.md is not written yet")
    text = doc.read_text()
    missing = [e["resource"] for e in listed_calls() if not re.search(rf"\b{re.escape(e['resource'])}\b", text)]
    assert missing == [], f"docs/operator.md does not mention {missing}; one of the two lists is out of date"
