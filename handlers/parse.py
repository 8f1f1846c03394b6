"""``/kf …`` text -> a typed command. Shared by the Slack edge and the local shell.

Parsing is strict: an unknown subcommand, an unknown or repeated flag, a missing value or a
value of the wrong type raises ``InvalidInput`` carrying the usage line, and nothing is recorded.
Users may be named by email or by Slack mention (``<@U123|alice>``); mentions are resolved to an
email by the ``resolve_user`` callable the edge passes in (``users.info`` on Slack).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handlers import errors, kinds, naming
from handlers.kinds.base import Flag, Parsed
from handlers.settings import CoreSettings, kubeflow_user_id


@dataclass(frozen=True)
class Help:
    topic: str = ""


@dataclass(frozen=True)
class ListRequests:
    pass


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class Retry:
    request_id: str


@dataclass(frozen=True)
class WorkspaceList:
    pass


@dataclass(frozen=True)
class WorkspaceShow:
    name: str


@dataclass(frozen=True)
class Contributors:
    workspace: str


@dataclass(frozen=True)
class Tokens:
    pass


@dataclass(frozen=True)
class PasswordReset:
    pass


@dataclass(frozen=True)
class PinAll:
    """``/kf workspace pin --all`` (admins): one pin request per workspace that needs it."""


@dataclass(frozen=True)
class GpuStatus:
    """``/kf gpu status [WORKSPACE]``: GPU nodes, idle items and cost (read-only)."""

    workspace: str | None = None


@dataclass(frozen=True)
class Offboard:
    """``/kf offboard EMAIL`` (admins): ask Slack now whether the person left, and if so file what
    offboarding takes (``handlers.offboard``)."""

    email: str


@dataclass(frozen=True)
class WorkspaceScan:
    """``/kf workspace scan`` (admins): what exists that the bot does not manage (read-only)."""


@dataclass(frozen=True)
class Drift:
    """``/kf drift``: where the cluster and the bot's record disagree (admins: all; owners: theirs)."""


@dataclass(frozen=True)
class WorkspaceForm:
    """``/kf workspace new`` with no arguments: the edge opens the form."""


Control = (
    Help
    | ListRequests
    | Cancel
    | Retry
    | WorkspaceList
    | WorkspaceShow
    | Contributors
    | Tokens
    | PasswordReset
    | WorkspaceForm
    | PinAll
    | GpuStatus
    | Offboard
    | WorkspaceScan
    | Drift
)
Command = kinds.RequestKind | Control
UserResolver = Callable[[str], str]
"""Slack user id -> lowercased email; raises InvalidInput when the user has none."""

CONTROL_USAGE = {
    "help": "/kf help [COMMAND]",
    "requests": "/kf requests",
    "cancel": "/kf cancel REQUEST_ID",
    "retry": "/kf retry REQUEST_ID",
    "workspace list": "/kf workspace list",
    "workspace show": "/kf workspace show NAME",
    "contributors": "/kf contributors WORKSPACE",
    "tokens": "/kf tokens",
    "gpu status": "/kf gpu status [WORKSPACE]",
    "offboard": "/kf offboard EMAIL",
    "workspace scan": "/kf workspace scan",
    "drift": "/kf drift",
}
USAGE = {**CONTROL_USAGE, **kinds.USAGES}
"""Every command's usage line, by its words (``"workspace new"``); the kinds' come from their modules."""
_GROUPS = {"workspace": "workspace", "ws": "workspace"}
"""Heads whose next word is a subcommand (case-insensitive): ``/kf ws create`` is ``workspace new``."""
_SUBCOMMAND_ALIASES = {"create": "new"}

_MENTION = re.compile(r"<@([UW][A-Z0-9]{2,20})(?:\|[^>]*)?>")
_REQUEST_ID = re.compile(r"R[A-Z0-9]{4,12}")
_MAX_TEXT = 1000
_DASHES = "\u2010-\u2015\u2212\ufe58\ufe63\uff0d"
_DASH_FLAG = re.compile(f"^([{_DASHES}])[{_DASHES}-]*([a-z].*)$")
"""A word that starts with a typographic dash (en, em, minus...) then letters: a flag mistyped."""
_SMART_QUOTES = {0x201C: '"', 0x201D: '"', 0x2018: "'", 0x2019: "'"}  # what Slack clients type for quotes


def _flags(
    usage_key: str, args: Sequence[str], spec: Mapping[str, Flag]
) -> tuple[list[str], dict[str, Any]]:
    positional: list[str] = []
    values: dict[str, Any] = {}
    it = iter(args)
    for token in it:
        dashed = _DASH_FLAG.match(token)
        if dashed:
            # Slack's desktop clients and macOS turn a typed `--` into a dash, so `--gpu` arrives
            # as `\u2013gpu` (an en dash); say so rather than read it as a stray argument.
            raise errors.InvalidInput(
                f"{naming.show_value(token)} starts with a dash character ({dashed.group(1)}), not two "
                f"hyphens: type `--{dashed.group(2)}` (your keyboard "
                "or Slack may turn `--` into a dash).",
                usage=USAGE[usage_key],
            )
        if not token.startswith("--"):
            positional.append(token)
            continue
        name, eq, inline = token.partition("=")
        flag = spec.get(name)
        if flag is None:
            raise errors.InvalidInput(f"Unknown option {naming.show_value(name)}.", usage=USAGE[usage_key])
        if flag.dest in values:
            raise errors.InvalidInput(f"`{name}` is given twice.", usage=USAGE[usage_key])
        if flag.convert is None:
            if eq:
                raise errors.InvalidInput(f"`{name}` takes no value.", usage=USAGE[usage_key])
            values[flag.dest] = True
            continue
        raw = inline if eq else next(it, None)
        if raw is None or (not eq and raw.startswith("--")):
            raise errors.InvalidInput(f"`{name}` needs a value.", usage=USAGE[usage_key])
        values[flag.dest] = flag.convert(raw)
    return positional, values


def _positional(usage_key: str, positional: list[str], names: Sequence[str]) -> list[str]:
    if len(positional) != len(names):
        if not names:
            raise errors.InvalidInput(
                f"`/kf {usage_key}` takes no arguments; {naming.show_value(positional[0])} is one too many.",
                usage=USAGE[usage_key],
            )
        what = "Missing" if len(positional) < len(names) else "Too many"
        raise errors.InvalidInput(f"{what} arguments: expected {' '.join(names)}.", usage=USAGE[usage_key])
    return positional


def tokenize(text: str) -> list[str]:
    if len(text) > _MAX_TEXT:
        raise errors.InvalidInput(f"That command is too long ({len(text)} characters; at most {_MAX_TEXT}).")
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise errors.InvalidInput("The command contains control characters.")
    # Slack sends smart quotes when users type them; treat them as plain quotes.
    text = text.translate(_SMART_QUOTES)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise errors.InvalidInput(f"Could not read the command: {exc}.") from exc


def _user(token: str, resolve_user: UserResolver) -> str:
    mention = _MENTION.fullmatch(token)
    if mention:
        return resolve_user(mention.group(1))
    # normalize_email reads Slack's <mailto:a|label> itself and refuses a label that differs
    # from the target, so a link cannot show one address and grant another.
    return naming.normalize_email(token)


def _is_self(token: str, requester_email: str, resolve_user: UserResolver, settings: CoreSettings) -> bool:
    if token.startswith("--"):
        return False
    user = _user(token, resolve_user)
    return user == requester_email or kubeflow_user_id(settings, user) == kubeflow_user_id(
        settings, requester_email
    )


def request_id(value: str, usage: str | None = None) -> str:
    """A request id as typed (``r7kq2m`` -> ``R7KQ2M``); ``InvalidInput`` for anything else, so
    that no lookup ever sees (or echoes) an arbitrary string."""
    value = value.strip().upper()
    if not _REQUEST_ID.fullmatch(value):
        raise errors.InvalidInput(f"{naming.show_value(value)} is not a request id.", usage=usage)
    return value


def _words(words: list[str]) -> tuple[str, list[str]]:
    """The command's words (``"token revoke"``, ``"workspace new"``) and its arguments."""
    head, rest = words[0].lower(), words[1:]
    group = _GROUPS.get(head)
    if group is not None:
        sub = rest[0].lower() if rest else ""
        return f"{group} {_SUBCOMMAND_ALIASES.get(sub, sub)}", rest[1:]
    if rest and f"{head} {rest[0]}" in kinds.SYNTAXES:
        return f"{head} {rest[0]}", rest[1:]
    return head, rest


def parse_command(
    text: str, *, requester_email: str, resolve_user: UserResolver, settings: CoreSettings
) -> Command:
    """Parse the text after ``/kf``. ``requester_email`` is the default workspace owner; a flag
    left out takes its default from ``settings`` here, so the request records what was decided."""
    words = tokenize(text)
    if not words:
        return Help()
    if words[0].lower() == "gpu" and len(words) > 1 and words[1].lower() == "status":
        # Matched on the words themselves: the `gpu` request kinds may make `gpu` a group.
        args = words[2:]
        if len(args) > 1:
            raise errors.InvalidInput("Too many arguments: expected [WORKSPACE].", usage=USAGE["gpu status"])
        if args:
            naming.validate_workspace_name(args[0])
        return GpuStatus(args[0] if args else None)
    command, rest = _words(words)
    if command in ("help", "-h", "--help"):
        return Help(" ".join(rest))
    if command == "requests":
        _positional("requests", rest, [])
        return ListRequests()
    if command in ("cancel", "retry"):
        (rid,) = _positional(command, rest, ["REQUEST_ID"])
        checked = request_id(rid, USAGE[command])
        return Cancel(checked) if command == "cancel" else Retry(checked)
    if command == "contributors":
        (workspace,) = _positional("contributors", rest, ["WORKSPACE"])
        naming.validate_workspace_name(workspace)
        return Contributors(workspace)
    if command == "drift":
        _positional("drift", rest, [])
        return Drift()
    if command == "tokens":
        _positional("tokens", rest, [])
        return Tokens()
    if command == "password":
        _positional("password reset", rest, ["reset"])
        if rest[0].lower() != "reset":
            raise errors.InvalidInput("Did you mean `/kf password reset`?", usage=USAGE["password reset"])
        return PasswordReset()
    if command == "offboard":
        (email,) = _positional("offboard", rest, ["EMAIL"])
        return Offboard(_user(email, resolve_user))
    if command == "password reset" and (not rest or (len(rest) == 1 and _is_self(rest[0], requester_email,
                                                                                 resolve_user, settings))):
        # One's own login: the self-service button, no request (an admin's own included).
        return PasswordReset()
    if command == "workspace list":
        _positional("workspace list", rest, [])
        return WorkspaceList()
    if command == "workspace show":
        (name,) = _positional("workspace show", rest, ["NAME"])
        naming.validate_workspace_name(name)
        return WorkspaceShow(name)
    if command == "workspace scan":
        _positional("workspace scan", rest, [])
        return WorkspaceScan()
    if command == "workspace new" and not rest:
        return WorkspaceForm()
    if command == "workspace pin" and any(t == "--all" or t.startswith("--all=") for t in rest):
        pos, _ = _flags("workspace pin", rest, {"--all": Flag("all", None)})
        _positional("workspace pin", pos, [])
        return PinAll()
    syntax = kinds.SYNTAXES.get(command)
    if syntax is not None:
        pos, opts = _flags(command, rest, syntax.flags)
        names = (*syntax.positional, *syntax.optional)
        args = _positional(command, pos, names[: max(min(len(pos), len(names)), len(syntax.positional))])
        return syntax.build(
            Parsed(args, opts, requester_email, lambda token: _user(token, resolve_user), settings)
        )
    if command.startswith("workspace "):
        raise errors.InvalidInput(
            "Use `/kf workspace new|delete|list|show|pin|transfer|adopt|scan`.", usage=USAGE["workspace new"]
        )
    raise errors.InvalidInput(f"Unknown command {naming.show_value(words[0].lower())}. Try `/kf help`.")


# -- the Slack form ----------------------------------------------------------------------------------
_FORM_NODES = re.compile(r"([0-9]{1,3}):([0-9]{1,3})")


def _form_int(values: Mapping[str, str], key: str) -> int | None:
    raw = values.get(key)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,4}", raw):
        raise errors.InvalidInput(f"Give a whole number, not {naming.show_value(raw)}.", field=key)
    return int(raw)


def workspace_from_form(values: Mapping[str, str], requester_email: str) -> kinds.WorkspaceCreate:
    """The new-workspace form's fields (block id -> text; absent: left empty) as a
    ``WorkspaceCreate``. ``InvalidInput.field`` names the bad field, for Slack's field errors."""
    nodes_min = nodes_max = None
    if "nodes" in values:
        match = _FORM_NODES.fullmatch(values["nodes"])
        if match is None:
            raise errors.InvalidInput("Give MIN:MAX, e.g. `0:2`.", field="nodes")
        nodes_min, nodes_max = int(match.group(1)), int(match.group(2))
        if nodes_min > nodes_max:
            raise errors.InvalidInput("MIN is larger than MAX.", field="nodes")
    owner = naming.normalize_email(values["owner"]) if "owner" in values else requester_email
    return kinds.WorkspaceCreate(
        name=values.get("name", ""),
        owner=owner,
        gpu=_form_int(values, "gpu") or 0,
        cpu=values.get("cpu"),
        memory=values.get("memory"),
        storage=values.get("storage"),
        instance_type=values.get("instance_type"),
        nodes_min=nodes_min,
        nodes_max=nodes_max,
    )
