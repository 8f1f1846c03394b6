"""The seams between the request kinds and the adapters, checked from both sides.

* One catalogue of step actions (``handlers.actions.ActionName``): the names the kinds' plans
  emit, the live registries (Kubeflow, Dex, AWS) and the dry-run renderers are exactly that set,
  so no step can name an action one backend lacks.
* Each action's params have a type (``handlers.actions.PARAMS``): what every kind emits parses into
  it, and a malformed param is refused, naming the action and the field, before any call goes out.
* The adapters do not branch on a request kind: what a kind does lives in its module under
  ``handlers/kinds/``. Read from the source (AST), so a new ``if request.kind == ...`` in
  ``provisioning/`` fails here however it is spelled.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from kubernetes import client

from handlers import kinds
from handlers.actions import PARAMS, REQUEST_MARK, ActionName
from handlers.errors import PermanentError, TemporaryError
from handlers.plan import JSON, Step, StepOutcome
from provisioning import dryrun
from provisioning.actions import Action
from provisioning.aws import AwsActions, AwsSettings
from provisioning.dex import DexActions
from provisioning.kubeflow import KubeflowActions
from provisioning.settings import DexSettings, KubeflowSettings
from tests.fakes.aws_fixtures import AwsEnv, ThreadKeyedLock
from tests.fakes.clock import FakeClock
from tests.test_aws_actions import closed_port_url
from tests.test_plan_digests import CASES, _plan

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = {str(name) for name in ActionName}


def test_kinds_emit_only_catalogued_actions_and_all_of_them() -> None:
    emitted = {
        str(step.action)
        for kind, facts, settings in CASES.values()
        for step in _plan(kind, facts, settings).steps
    }
    assert emitted == CATALOGUE


def test_the_live_registries_implement_exactly_the_catalogue() -> None:
    clock = FakeClock()
    api = client.ApiClient(client.Configuration())
    live = {
        **KubeflowActions(api, KubeflowSettings(), clock).registry(),
        **DexActions(api, DexSettings(), clock).registry(),
        **AwsActions(AwsSettings(), clock, ThreadKeyedLock()).registry(),
    }
    assert set(live) == CATALOGUE


def test_the_dry_run_renders_exactly_the_catalogue() -> None:
    assert set(dryrun.RENDERERS) == CATALOGUE
    assert set(dryrun.registry()) == CATALOGUE


def test_what_a_removal_kept_survives_storage() -> None:
    outcome = StepOutcome(created=False, details={"deleted": False}, kept=("S3 bucket `b`",))
    assert StepOutcome.from_json(outcome.to_json()) == outcome
    # Outcomes stored before the field existed read as keeping nothing.
    assert StepOutcome.from_json({"created": True, "details": {}}).kept == ()


# -- no branching on a request kind outside handlers/kinds ------------------------------------------

KIND_NAMES = set(kinds.KINDS)
KIND_CLASSES = {cls.__name__ for cls in kinds.KINDS.values()}


def _names_a_kind_class(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in KIND_CLASSES
    if isinstance(node, ast.Name):
        return node.id in KIND_CLASSES
    if isinstance(node, ast.Tuple):
        return any(_names_a_kind_class(e) for e in node.elts)
    return False


OTHER_KINDS = {"secret"}
"""Names whose ``.kind`` is another domain that shares words with request kinds (a revealed
secret's kind is ``password`` or ``token``)."""


def _is_kind_attr(node: ast.expr) -> bool:
    """``X.KIND`` of a kind class."""
    return isinstance(node, ast.Attribute) and node.attr == "KIND"


def _is_kind_literal(node: ast.expr) -> bool:
    """A string that is a kind's name, or a collection holding one."""
    if isinstance(node, ast.Constant):
        return node.value in KIND_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_kind_literal(e) or _is_kind_attr(e) for e in node.elts)
    return False


def _is_a_kind(node: ast.expr) -> bool:
    """An expression holding a request's kind (``request.kind``, ``kind``), not another domain's."""
    if isinstance(node, ast.Attribute) and node.attr == "kind":
        return not (isinstance(node.value, ast.Name) and node.value.id in OTHER_KINDS)
    return isinstance(node, ast.Name) and node.id in ("kind", "kind_name")


def _compares_kinds(node: ast.Compare) -> bool:
    operands = (node.left, *node.comparators)
    if any(_is_kind_attr(e) for e in operands):
        return True
    return any(_is_kind_literal(e) for e in operands) and any(_is_a_kind(e) for e in operands)


def branches_in(source: str, where: str) -> list[str]:
    """``where:line: code`` of every place in ``source`` that branches on a request kind: compares
    with a kind's name or ``KIND``, keys a table by one, matches one, or asks ``isinstance`` of a
    kind class."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        hit = False
        if isinstance(node, ast.Compare):
            hit = _compares_kinds(node)
        elif isinstance(node, ast.Dict):
            hit = any(k is not None and _is_kind_attr(k) for k in node.keys)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            hit = len(node.args) == 2 and _names_a_kind_class(node.args[1])
        elif isinstance(node, ast.MatchValue):
            hit = _is_kind_literal(node.value) or _is_kind_attr(node.value)
        if hit:
            segment = ast.get_source_segment(source, node) or ""
            found.append(f"{where}:{getattr(node, 'lineno', 0)}: {segment.splitlines()[0]}")
    return found


def kind_branches(package: str) -> list[str]:
    return [
        hit
        for path in sorted((ROOT / package).rglob("*.py"))
        for hit in branches_in(path.read_text(), str(path.relative_to(ROOT)))
    ]


def test_the_finder_sees_each_spelling() -> None:
    source = (
        "if request.kind == kinds.Share.KIND: pass\n"
        "if kind in ('quota', 'token'): pass\n"
        "if isinstance(k, (kinds.Unshare, int)): pass\n"
        "TABLE = {kinds.TokenIssue.KIND: 1}\n"
        "match request.kind:\n    case 'workspace.delete': pass\n"
        "if step.action == 'aws.bucket' or isinstance(k, str): pass\n"  # not a kind: no hit
        "if secret.kind == 'token' or name == 'quota': pass\n"  # other domains: no hit
    )
    assert [hit.split(":")[1] for hit in branches_in(source, "x")] == ["1", "2", "3", "4", "6"]


@pytest.mark.parametrize(
    "package",
    # bot/ chooses texts through the notification router's tables (handlers.notifications).
    ["provisioning", "bot"],
)
def test_adapters_do_not_branch_on_a_request_kind(package: str) -> None:
    assert kind_branches(package) == []


# -- typed params, checked once where the registries hand them to an action -----------------------


def _emitted_steps() -> list[tuple[str, Step]]:
    return [
        (case, step)
        for case, (kind, facts, settings) in sorted(CASES.items())
        for step in _plan(kind, facts, settings).steps
    ]


def test_every_action_has_a_params_type() -> None:
    assert {str(name) for name in PARAMS} == CATALOGUE
    assert all(PARAMS[name].ACTION is name for name in PARAMS)


@pytest.mark.parametrize(("case", "step"), _emitted_steps(), ids=lambda v: v if isinstance(v, str) else v.key)
def test_every_kind_emits_params_its_action_parses(case: str, step: Step) -> None:
    parsed = PARAMS[ActionName(step.action)].parse({**step.params, REQUEST_MARK: "RGOLD01"})
    assert parsed.request == "RGOLD01"
    # Every field the type reads is one the kind wrote, except those left to the adapter's default.
    read = {f.name for f in dataclasses.fields(parsed)} - {"request", *ADAPTER_DEFAULTS.get(step.action, ())}
    assert read <= set(step.params), f"{case}: {step.action} defaults {read - set(step.params)}"


ADAPTER_DEFAULTS = {
    "aws.nodegroup": {"capacity_type", "disk_size", "launch_template"},
    "dex.user": {"user_id"},
    "kubeflow.profile": {"aws_iam_role"},
    "aws.nodegroup.scaling": {"adopted"},
    "aws.bucket.remove": {"adopted", "namespace"},
    "aws.nodegroup.remove": {"adopted", "namespace"},
    "aws.launch_template.remove": {"adopted"},
    "aws.workspace_role.remove": {"adopted"},
    "kubeflow.profile.remove": {"adopted"},
    "kubeflow.adopt": {"resources"},
    "dex.adopt": {"resources"},
    "aws.adopt": {"resources"},
    "aws.iam_resources.remove": {"statements", "statement_shapes", "statement_forms"},
    "dex.user.remove": {"adopted", "static_entry", "env_key", "except_namespace"},
}
"""Fields no kind writes today: EKS's capacity type, Dex's user id derived from the email; fields
written only when a setting asks for them (the runbook's nodegroup fields, per-workspace IAM), so
plans made without those settings keep the params (and digests) they always had; and fields
written only for some objects: ``adopted`` (an adopted nodegroup), ``resources`` (an IAM policy's
entries), ``statements``/``statement_shapes``/``statement_forms``/``static_entry``/``env_key`` (the
shapes an adoption recorded), ``namespace`` on a removal (the workspace an adopted bucket or
nodegroup must still be for), ``except_namespace`` (the workspace whose delete, transfer or unshare
removes a login; a ``login.remove`` or a drift clean-up names none)."""


def _sample_params() -> dict[str, dict[str, JSON]]:
    """One step's params per action, as the kinds emit them, with the engine's request mark."""
    samples: dict[str, dict[str, JSON]] = {}
    for _, step in _emitted_steps():
        samples.setdefault(str(step.action), {**step.params, REQUEST_MARK: "RGOLD01"})
    return samples


SAMPLES = _sample_params()


def _first_field(action: str) -> str:
    return next(f.name for f in dataclasses.fields(PARAMS[ActionName(action)]) if f.name != "request")


@pytest.fixture
def closed_registry(aws: AwsEnv) -> dict[str, Action]:
    """Every live action, each pointed at a port nobody listens on: a call that went out would fail
    as a connection error (temporary), never as the refusal of a param."""
    url = closed_port_url()
    api = client.ApiClient(client.Configuration(host=url))
    clock = FakeClock()
    return {
        **KubeflowActions(api, KubeflowSettings(namespace_timeout=0.0), clock).registry(),
        **DexActions(api, DexSettings(), clock).registry(),
        **aws.actions(endpoint_url=url).registry(),
    }


@pytest.mark.parametrize("broken", ["wrong type", "missing"])
@pytest.mark.parametrize("action", sorted(CATALOGUE))
def test_a_malformed_param_is_refused_naming_action_and_field_before_any_call(
    closed_registry: dict[str, Action], action: str, broken: str
) -> None:
    field = _first_field(action)
    params = dict(SAMPLES[action])
    if broken == "missing":
        del params[field]
    else:
        params[field] = 42
    implementation = closed_registry[action]

    for call in (lambda: implementation.ensure(params), lambda: implementation.undo(params, CREATED)):
        with pytest.raises(PermanentError) as refused:
            call()
        assert f"`{action}`" in refused.value.user_message
        assert f"`{field}`" in refused.value.user_message


CREATED = StepOutcome(created=True, details={"previous": {}, "added": ["arn:aws:s3:::x"]})


def test_the_closed_registry_would_notice_a_call(closed_registry: dict[str, Action]) -> None:
    """The control for the test above: well-formed params do try the network, and fail otherwise."""
    with pytest.raises(TemporaryError):
        closed_registry["kubeflow.quota"].ensure(SAMPLES["kubeflow.quota"])
    with pytest.raises(TemporaryError):
        closed_registry["aws.bucket"].ensure(SAMPLES["aws.bucket"])


def test_a_request_mark_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(PermanentError, match=f"`aws.bucket` step's `{REQUEST_MARK}`"):
        PARAMS[ActionName.BUCKET].parse({**SAMPLES["aws.bucket"], REQUEST_MARK: 7})
