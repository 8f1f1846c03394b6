"""``drift.cleanup``: delete an orphan, an S3 bucket or EKS nodegroup the bot made (or tagged) for
a workspace that is gone (the drift report's **Clean up** button, or
``/kf drift cleanup bucket:NAME|nodegroup:NAME [--purge-data]``).

An admin asks and another admin decides: the plan names the object, and it is made only while the
drift report lists the target as an orphan (``Facts.orphan``, read again before it applies: never
an object a live workspace records); the removal action then deletes only what carries the bot's
mark (``provisioning.actions.check_removable``), and a bucket's data goes only
with ``--purge-data`` (without it a bucket holding data is kept and reported, as a workspace
delete keeps it). The button files it without ``--purge-data``. Nothing in the registry changes:
the object's workspace is gone already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import ActionName
from handlers.kinds.base import (
    POLICY_VERSION_NOTE,
    Applied,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    short_name,
)
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step
from handlers.ports import Facts
from handlers.settings import CoreSettings

USAGE = "/kf drift cleanup bucket:NAME|nodegroup:NAME|iam:BUCKET|dex:EMAIL [--purge-data]"


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    if not actor.is_admin:
        raise errors.Forbidden("Only an admin can ask to clean up an orphan.")


def _build(p: Parsed) -> DriftCleanup:
    return DriftCleanup(p.positional[0], purge_data=bool(p.options.get("purge_data")))


@dataclass(frozen=True)
class DriftCleanup:
    KIND: ClassVar[str] = "drift.cleanup"
    USAGE: ClassVar[str] = USAGE
    SYNTAX: ClassVar[Syntax] = Syntax(
        "drift cleanup", ("TARGET",), {"--purge-data": Flag("purge_data", None)}, _build
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(may_request=_may_request)  # an admin always decides
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    target: str
    purge_data: bool = False
    workspace: str | None = None
    """The gone workspace the drift report named (shown in the plan)."""

    def __post_init__(self) -> None:
        what, _, name = str(self.target).partition(":")
        if what in ("bucket", "iam"):
            naming.validate_bucket_name(name, field="target")
        elif what == "nodegroup":
            naming.validate_nodegroup_name(name, field="target")
        elif what == "dex":
            object.__setattr__(self, "target", f"dex:{naming.normalize_email(name)}")
        else:
            raise errors.InvalidInput(
                f"{naming.show_value(str(self.target))} is not an orphan to clean up.", usage=USAGE
            )
        if not isinstance(self.purge_data, bool):
            raise errors.InvalidInput("--purge-data is a switch.", usage=USAGE)
        if self.workspace is not None:
            naming.validate_workspace_name(self.workspace)

    @property
    def what(self) -> str:
        return self.target.partition(":")[0]

    @property
    def name(self) -> str:
        return self.target.partition(":")[2]

    def subject(self) -> str:
        return f"orphan:{self.target}"

    def describe(self) -> str:
        return f"delete the orphan {self.what} `{self.name}`"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Clean up {self.target}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return ()

    def plan(self, ctx: PlanContext) -> Plan:
        if self.workspace is not None and ctx.facts.workspace(self.workspace) is not None:
            raise errors.InvalidInput(f"`{self.workspace}` exists: its objects are no orphans.")
        # Read afresh each time the plan is rendered (filing, and again before it applies): a
        # typed target is whatever the admin wrote, and a button's may be stale by the approval.
        listed = ctx.facts.orphan(self.target)
        if listed is None:
            raise errors.InvalidInput("There is no cluster to check orphans against (dry run).")
        if not listed:
            raise errors.InvalidInput(
                f"{self.what} `{self.name}` is not an orphan: the drift report does not list it now "
                "(a live workspace records it, made or adopted, or the bot did not make it). "
                "Run `/kf drift` to see the orphans."
            )
        gone = f" (workspace `{self.workspace}` is gone)" if self.workspace else ""
        if self.what == "bucket":
            step = Step(
                ActionName.BUCKET_REMOVE,
                f"Bucket/{self.name}",
                {"bucket": self.name, "purge_data": self.purge_data},
                f"delete S3 bucket `{self.name}`{gone}"
                + (" and every object in it" if self.purge_data else " if it is empty"),
            )
            warning = (
                "Every object in the bucket is deleted." if self.purge_data
                else "A bucket that holds data is kept and reported (`--purge-data` deletes it)."
            )
        elif self.what == "dex":
            if why := ctx.facts.user_in_use(self.name, ""):
                raise errors.InvalidInput(f"The Dex login {self.name} is still in use: its holder is {why}.")
            step = Step(
                ActionName.DEX_USER_REMOVE,
                f"DexUser/{self.name}",
                {"email": self.name, "mode": ctx.settings.workspace.dex_mode},
                f"delete the Dex login {self.name}{gone}",
            )
            warning = "The person can no longer sign in to Kubeflow with it."
        elif self.what == "iam":
            arns = ctx.settings.workspace.iam_policy_arns
            if not arns:
                raise errors.InvalidInput("No IAM policies are configured (KFBOT_IAM_POLICY_ARNS).")
            resources: list[JSON] = [f"arn:aws:s3:::{self.name}", f"arn:aws:s3:::{self.name}/*"]
            steps = [
                Step(
                    ActionName.IAM_RESOURCES_REMOVE,
                    f"IamPolicy/{arn}",
                    {"policy_arn": arn, "resources": resources},
                    f"remove bucket `{self.name}` from IAM policy `{arn.rsplit('/', 1)[-1]}`{gone} "
                    f"({POLICY_VERSION_NOTE})",
                )
                for arn in arns
            ]
            return Plan.of(steps, ["Only the bot's own statement changes; the bucket is not touched."])
        else:
            cluster = ctx.settings.workspace.cluster
            step = Step(
                ActionName.NODEGROUP_REMOVE,
                f"Nodegroup/{cluster}/{self.name}",
                {"cluster": cluster, "name": self.name},
                f"delete EKS nodegroup `{self.name}` in `{cluster}`{gone}",
            )
            warning = "Pods running on its nodes are evicted."
        return Plan.of([step], [warning])

    def on_success(self, done: Applied) -> Success:
        return Success()
