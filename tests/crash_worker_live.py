"""A worker process for the live crash tests (``tests/test_crash_live.py``), and the live stack
both sides build.

The worker runs the *live* backend (Kubeflow, Dex and AWS adapters over the fake apiserver and
moto) on the shared database and dies by SIGKILL at a chosen point, so no ``finally``, no
rollback and no lease release runs, exactly like an OOM kill or a node loss:

* ``after_call_before_record``: step STEP's real ``ensure`` runs to completion, then the process
  kills itself before returning, so the engine never records the outcome;
* ``after_record``: the process kills itself once step STEP's outcome is committed: at the start
  of the next step's ``ensure`` (its RUNNING record is committed by then), or for the last step
  right after the commit of its success (before the request's own success is committed).

Usage: python -m tests.crash_worker_live WORLD_JSON STEP WHEN START_ISO (or ``run_in_child`` in a
process forked from a preloaded forkserver, which is how the tests start it: same code, no import
cost).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from kubernetes import client

from handlers.model import Event, EventType
from handlers.plan import JSON, StepOutcome
from handlers.settings import CoreSettings, WorkspaceDefaults
from provisioning import DexSettings, KubeflowSettings, ProvisioningSettings, build_backend
from provisioning.actions import Action
from provisioning.backend import Backend
from provisioning.engine import Engine
from tests.fakes.clock import FakeClock
from tests.harness import AUDIT_KEY, CORE, RecordingNotifier, engine_settings

CLUSTER = "kf-live"
STEP_ACTIONS = (
    "kubeflow.profile",
    "kubeflow.notebook_activity",
    "dex.user",
    "aws.bucket",
    "aws.iam_resources",
    "aws.nodegroup",
    "kubeflow.poddefault",
)
"""The steps of ``WorkspaceCreate("team-a", owner, gpu=1)`` with one IAM policy, in plan order."""
WHEN = ("after_call_before_record", "after_record")
EXIT_NOT_KILLED = 3


@dataclass(frozen=True)
class World:
    """Where the live stack finds its database, Kubernetes and AWS, and what AWS holds for it."""

    db_url: str
    apiserver_url: str
    aws_url: str
    policy_arn: str
    subnets: tuple[str, ...]
    node_role_arn: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> World:
        data = json.loads(text)
        return cls(**{**data, "subnets": tuple(data["subnets"])})


def core_settings(world: World) -> CoreSettings:
    # Both processes must plan the same: the engine re-plans at approved -> applying and a
    # different digest would send the request back for approval.
    return dataclasses.replace(
        CORE,
        workspace=WorkspaceDefaults(
            cluster=CLUSTER,
            subnets=world.subnets,
            node_role_arn=world.node_role_arn,
            iam_policy_arns=(world.policy_arn,),
            dex_mode="password-cr",
        ),
    )


def live_backend(world: World, clock: FakeClock, worker_id: str) -> tuple[Backend, client.ApiClient]:
    settings = ProvisioningSettings(
        mode="live",
        database_url=world.db_url,
        audit_key=AUDIT_KEY,
        engine=engine_settings(worker_id),
        kubeflow=KubeflowSettings(namespace_timeout=30.0, poll_interval=1.0),
        dex=DexSettings(mode="password-cr", bcrypt_cost=10),  # the cheapest cost Dex accepts
        aws_region="us-east-1",
        aws_endpoint_url=world.aws_url,
    )
    api = client.ApiClient(client.Configuration(host=world.apiserver_url))
    return build_backend(settings, core_settings(world), clock, kube_api=api), api


def _die() -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL cannot be caught")


@dataclass
class _KillAfterCall:
    inner: Action

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        self.inner.ensure(params)  # the real call, with all its effects
        _die()

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        self.inner.undo(params, outcome)


@dataclass
class _KillBeforeCall:
    inner: Action

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        _die()

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        self.inner.undo(params, outcome)


def _kill_on_recorded(idx: int) -> None:
    """Die right after the engine commits step ``idx``'s success: its notices are in the outbox
    by then (``Engine._notified`` runs after each commit), and the request's own success is not."""
    committed = Engine._notified

    def notified(engine: Engine, events: list[Event]) -> None:
        committed(engine, events)
        if any(e.type is EventType.STEP_SUCCEEDED and e.data.get("idx") == idx for e in events):
            _die()

    Engine._notified = notified  # type: ignore[method-assign, assignment]  # this doomed process only


def run_in_child(world_json: str, step: str, when: str, start: str, env: Mapping[str, str]) -> None:
    """Entry point for a child forked from a preloaded ``multiprocessing`` forkserver (what the
    tests use: a fresh interpreter spends seconds importing the SDKs before it can crash). The
    forkserver's environment dates from its start, so the test's (AWS endpoint, credentials) is
    put back first."""
    os.environ.clear()
    os.environ.update(env)
    sys.exit(main(world_json, step, when, start))


def main(world_json: str, step: str, when: str, start: str) -> int:
    idx = int(step)
    assert when in WHEN, when
    world = World.from_json(world_json)
    backend, _ = live_backend(world, FakeClock(datetime.fromisoformat(start)), "doomed-worker")
    actions = dict(backend.actions)
    notifier = RecordingNotifier()
    if when == "after_call_before_record":
        actions[STEP_ACTIONS[idx]] = _KillAfterCall(actions[STEP_ACTIONS[idx]])
    elif idx + 1 < len(STEP_ACTIONS):
        actions[STEP_ACTIONS[idx + 1]] = _KillBeforeCall(actions[STEP_ACTIONS[idx + 1]])
    else:
        _kill_on_recorded(idx)
    backend.actions = actions
    backend.run_until_idle(notifier)
    return EXIT_NOT_KILLED  # the request ran to the end without reaching the kill point


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
