"""Hostile input at the edge: every argument of every command, generated strings.

The slots come from the command grammar itself (``handlers.parse.USAGE``: every positional argument
and every flag value of every command) plus the shell's own commands (``as``, ``approve``,
``reject`` with its reason, ``show``, ``reveal``), so a command added to the grammar is attacked
without touching this file. For each slot hypothesis substitutes strings made of markup, wildcards,
spreadsheet formulas, control and bidirectional characters, look-alikes, 10 KB values and any
Unicode, and runs the line through the real shell (``bot.shell``: the parser, the use cases, the
SQLite store, the audit log and the dry-run provisioner, which renders every step of what is
applied). After each line:

* nothing but a ``KfError`` escaped;
* a refusal is a short sentence that echoes no raw control, bidirectional or Slack markup
  character, and nothing was recorded (no request, no audit event);
* an acceptance stored only inert values (every stored argument is a plain token: letters and
  digits joined by ``.``, ``_``, ``+``, ``:``, ``@`` or ``-``; a reject reason is the one free text)
  and every text Slack and the terminal would show holds them as inert text: no ``<``, ``&`` or
  ``>`` that Slack would parse, a reason only inside a code block, no control or bidirectional
  character on the terminal;
* no request got past ``pending`` without an approval (by an admin or by a named policy rule).

The totals (hostile inputs tried, refused, accepted inertly, wrongly accepted) are printed at the
end of the module.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import sqlite3
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import provisioning
from bot import app as composition
from bot import blocks, cli, notify, render
from bot import logging as log
from bot.settings import Settings
from bot.shell import Shell, shell_actor
from handlers import errors, kinds, naming, parse, services
from handlers.model import Request, RequestState
from handlers.plan import JSON
from tests import harness
from tests.fakes import figures
from tests.fakes.messages import assert_slack_inert
from tests.harness import build_stack

ALICE, ADMIN = "alice@example.com", "admin@example.com"
_ID = re.compile(r"\bR[A-Z0-9]{6}\b")
# A valid value for each placeholder of the grammar; a new placeholder fails the test until added.
VALID = {
    "NAME": "team-h",
    "NAMESPACE": "team-legacy",
    "WORKSPACE": "team-a",
    "USER": "bob@example.com",
    "REQUEST_ID": "RZZZZZZ",
    "TOKEN_ID": "RZZZZZZ",
    "COMMAND": "share",
    "EMAIL": "carol@example.com",
    "WORKSPACE/NOTEBOOK|NOTEBOOK": "team-a/train-1",
    "WORKSPACE|WORKSPACE/NOTEBOOK": "team-a/train-1",
    "DURATION": "1d",
    "N": "2",
    "MIN:MAX": "0:2",
    "T": "g5.xlarge",
}
SEEDS = [
    # Slack markup and mentions
    "*bold*", "_it_", "~s~", "`code`", "```block```", "> quote", "<!channel>", "<!here>", "@channel",
    "<@U0ADMIN01>", "<#C0GENERAL>", "<http://evil.example|click me>", "&amp;", "&lt;b&gt;", ":joy:",
    # wildcards, formulas, encodings
    "*", "?", "*@example.com", "a*@example.com", "*bold*@example.com", "x{y}@example.com", "a&b@example.com",
    "=cmd@example.com", "=HYPERLINK(\"http://x\")", "+cmd", "-cmd", "@SUM(1+1)", "%2540@example.com",
    "_it_@example.com", "~s~@example.com", "team-*", "team-a*", "{name}", "${IFS}", "$(id)", "../../etc",
    # control and bidirectional characters
    "\x00", "a\x00b", "\x1b[31mred", "\r", "\x7f", "\x9b2J", "line\nbreak", "tab\tbed", "\u202eevil",
    "a\u2066b\u2069", "\u200f", "\u061c", "bob\u202e@example.com", "\ufeff", "\u200b",
    # look-alikes and other Unicode
    "\u0430lice@example.com", "team-\u0430", "\uff54\uff45\uff41\uff4d", "jos\u00e9@example.com",
    "te\u0301am", "\U0001f600", "\ud800",
    # sizes
    "a" * 10_240, "x@" + "a" * 10_240 + ".com", "team-" + "a" * 64, "9" * 30,
]
BASES = ["", "team-a", "bob", "bob@example.com", "16Gi", "2", "R1234567", "edit"]
HOSTILE = st.one_of(
    st.sampled_from(SEEDS),
    st.builds(lambda base, seed, tail: base + seed + tail, st.sampled_from(BASES), st.sampled_from(SEEDS),
              st.sampled_from(["", "@example.com", "-x", " more words"])),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp", "Sm", "Po"]),
            min_size=1, max_size=12),
)
TOKEN = re.compile(r"(?:[A-Za-z0-9]+(?:[._+:@/-][A-Za-z0-9]+)*)?")
"""``/`` joins a hold target's namespace and notebook (``notebook:team-a-ns/train-1``)."""
SLACK_MARKUP = re.compile(r"<(?!@[UW][A-Z0-9]+>|!date\^\d+\^)")
OUR_MARKUP = re.compile(r"<@[UW][A-Z0-9]+>|<!date\^\d+\^[^|<>]*\|[^<>]*>")
FIGURES: Counter[str] = Counter()


@dataclass(frozen=True)
class Slot:
    """One argument of one command: ``line`` with ``{}`` where the hostile value goes."""

    command: str
    argument: str
    line: str
    quoted: bool = True  # shlex-quoted so that the value arrives as one argument

    def render(self, value: str, request_id: str) -> str:
        shown = shlex.quote(value) if self.quoted else value
        return self.line.replace("{}", shown).replace("{RID}", request_id)

    def __str__(self) -> str:
        return f"{self.command}:{self.argument}"


def grammar_slots() -> list[Slot]:
    """A slot for every positional argument and every flag value of every command in the grammar."""
    slots: list[Slot] = []
    for command, usage in parse.USAGE.items():
        words = usage.split()[1:]
        if "|" in words:  # `NAME | --all`: alternatives; the first one has the arguments to attack
            words = words[: words.index("|")]
        fixed: list[str] = []
        arguments: list[tuple[str, int]] = []  # (name, index in fixed) for positionals
        flags: list[tuple[str, str]] = []
        required: list[str] = []
        i = 0
        while i < len(words):
            word = words[i].strip("[]")
            optional = words[i].startswith("[")
            if word.startswith("--"):
                if words[i].endswith("]"):  # `[--read-only]`: a switch, no value to attack
                    i += 1
                    continue
                placeholder = words[i + 1].strip("[]")
                if optional:
                    flags.append((word, placeholder))
                else:
                    required += [word, VALID.get(placeholder.split("|")[0], placeholder)]
                i += 2
                continue
            if word.isupper():
                arguments.append((word, len(fixed)))
                fixed.append(VALID[word])
            else:
                fixed.append(word)
            i += 1
        for name, index in arguments:
            parts = [*fixed]
            parts[index] = "{}"
            slots.append(Slot(command, name, "/kf " + " ".join(parts + required)))
        for flag, _placeholder in flags:
            slots.append(Slot(command, flag, "/kf " + " ".join([*fixed, *required, flag, "{}"])))
        if "--confirm" in required:
            slots.append(Slot(command, "--confirm", "/kf " + " ".join([*fixed, "--confirm", "{}"])))
    shell = [
        Slot("as", "EMAIL", "as {}"),
        Slot("approve", "ID", "approve {}", quoted=False),
        Slot("show", "ID", "show {}", quoted=False),
        Slot("reveal", "ID", "reveal {}", quoted=False),
        Slot("reject", "ID", "reject {} because", quoted=False),
        Slot("reject", "REASON", "reject {RID} {}", quoted=False),
    ]
    return slots + shell


SLOTS = grammar_slots()


@dataclass
class Edge:
    shell: Shell
    out: io.StringIO
    db: Path
    workspaces: int = 0

    def counts(self) -> tuple[int, int]:
        with sqlite3.connect(self.db) as conn:
            return (int(conn.execute("select count(*) from requests").fetchone()[0]),
                    int(conn.execute("select count(*) from audit_events").fetchone()[0]))

    def requests(self) -> list[Request]:
        with self.shell.backend.uow() as uow:
            return list(uow.requests.list(limit=5000))

    def act_as(self, email: str, *, admin: bool = False) -> None:
        self.shell.actor = shell_actor(email, admin=admin, settings=self.shell.core.settings)

    def line(self, text: str) -> None:
        """One shell line that must work (set-up, not attacked)."""
        before = self.shell.failures
        self.shell.execute(text)
        assert self.shell.failures == before, self.out.getvalue()[-2000:]

    def pending_request(self, name: str | None = None) -> str:
        """A fresh request of alice's waiting for an admin (something to reject)."""
        self.workspaces += 1
        self.act_as(ALICE)
        mark = len(self.out.getvalue())
        self.line(f"/kf workspace new {name or f'rej-{self.workspaces}'}")
        found = _ID.search(self.out.getvalue()[mark:])
        assert found
        return found.group(0)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    db = tmp_path_factory.mktemp("hostile") / "kfbot.db"
    settings_ = Settings.from_env({"KFBOT_DATABASE_URL": f"sqlite:///{db}",
                                   "KFBOT_AUDIT_KEY": "hostile-test-audit-key-0123456789"})
    settings_, backend = cli._local_backend(settings_, create=True)
    out = io.StringIO()
    notifier = notify.ShellNotifier(out, calls=backend.render_step)
    core = composition.build_core(settings_, backend, notifier, provisioning.SystemClock())
    edge = Edge(Shell(core=core, backend=backend, notifier=notifier, out=out,
                      actor=shell_actor(ALICE, admin=False, settings=core.settings)), out, db)
    # alice owns team-a, so that share, quota and token reach their plans and policies.
    workspace = edge.pending_request("team-a")
    edge.act_as(ADMIN, admin=True)
    edge.line(f"approve {workspace}")
    assert f"`{workspace}` is done" in out.getvalue()
    FIGURES.clear()
    try:
        yield edge
    finally:
        backend.close()
        if FIGURES["tried"]:
            figures.report(
                "hostile command arguments",
                f"{FIGURES['tried']} tried over {len(SLOTS)} argument slots; "
                f"{FIGURES['refused']} refused with a message, {FIGURES['accepted']} accepted as "
                f"inert text, {FIGURES['wrongly accepted']} wrongly accepted, {FIGURES['crashed']} crashed",
            )


def _flat_strings(value: JSON) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _flat_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat_strings(item)


def _visible_only(text: str) -> list[str]:
    """Characters a reader would not see for what they are: controls other than a line break or
    a tab (ESC and CSI drive the terminal), bidirectional controls, lone surrogates."""
    return [c for c in text
            if c not in "\n\t" and (unicodedata.category(c) in ("Cc", "Cs") or c in naming.BIDI_CONTROLS)]


def assert_clear_refusal(message: str, value: str) -> None:
    assert message and len(message) <= 1500 and " " in message, message
    assert not message[0].isspace() and message.rstrip()[-1] in ".?!`)", message  # a sentence
    assert not _visible_only(message), (message, _visible_only(message))
    # The core's text is neutral; what must hold no markup is what Slack shows of it.
    slack = render.SLACK.message(message)
    assert not SLACK_MARKUP.search(slack), slack
    assert_slack_inert(slack)
    if len(value) > 200:
        assert value not in message, "a long value is echoed in full"


def slack_texts(request: Request) -> list[str]:
    fallback, card = blocks.card(request)
    texts = [fallback, json.dumps(card, ensure_ascii=False),
             render.request_line(request, render.SLACK), render.decision_dm(request, render.SLACK)]
    return texts


def assert_inert(request: Request, value: str, terminal: str) -> None:
    for text in _flat_strings(dict(request.args)):
        assert TOKEN.fullmatch(text), f"stored argument {text!r} is not a plain token"
    for text in slack_texts(request):
        bare = OUR_MARKUP.sub("", text)  # mentions and dates the bot writes itself
        assert not re.search(r"[<>]|&(?!amp;|lt;|gt;)", bare), f"Slack would parse markup in {text!r}"
    if request.state is RequestState.REJECTED:  # the reason: only inside a code block
        literal = render.slack_literal(request.reason or "")
        card = [e["text"] for b in blocks.card(request)[1] for e in b.get("elements", []) if "text" in e]
        assert any(literal in text for text in card), card
        assert literal in render.decision_dm(request, render.SLACK)
    assert not _visible_only(terminal), _visible_only(terminal)


def check(edge: Edge, slot: Slot, value: str) -> None:
    FIGURES["tried"] += 1
    request_id = edge.pending_request() if str(slot) == "reject:REASON" else "RZZZZZZ"
    admin = slot.command in ("reject", "approve")
    edge.act_as(ADMIN if admin else ALICE, admin=admin)
    line = slot.render(value, request_id)
    before = edge.counts()
    known = {r.id: (r.state, r.version) for r in edge.requests()}
    mark = len(edge.out.getvalue())
    try:
        with log.bound("HOSTILE1"):
            edge.shell._dispatch(line, "HOSTILE1")
    except errors.KfError as exc:
        FIGURES["refused"] += 1
        edge.shell.backend.run_until_idle(edge.shell.notifier)
        assert_clear_refusal(exc.user_message, value)
        assert edge.counts() == before, f"{line!r} was refused but something was recorded"
        assert not _visible_only(render.error_text(exc, render.SHELL))
        return
    except Exception:
        FIGURES["crashed"] += 1
        raise
    edge.shell.backend.run_until_idle(edge.shell.notifier)
    terminal = edge.out.getvalue()[mark:]
    changed = [r for r in edge.requests() if known.get(r.id) != (r.state, r.version)]
    try:
        for request in changed:
            assert_inert(request, value, terminal)
            if request.state not in (RequestState.PENDING, RequestState.REJECTED, RequestState.CANCELLED,
                                     RequestState.EXPIRED):
                assert request.decided_by, f"{request.id} got past pending without an approval"
        assert not _visible_only(terminal), _visible_only(terminal)
    except AssertionError:
        FIGURES["wrongly accepted"] += 1
        raise
    FIGURES["accepted"] += 1


def test_the_grammar_yields_a_slot_for_every_argument() -> None:
    names = {str(slot) for slot in SLOTS}
    assert {"share:USER", "share:--role", "share:--for", "workspace new:--owner", "workspace new:NAME",
            "workspace delete:--confirm", "token:--audience", "token revoke:TOKEN_ID", "quota:--memory",
            "help:COMMAND", "reject:REASON", "as:EMAIL", "gpu stop:WORKSPACE/NOTEBOOK|NOTEBOOK", "gpu up:N",
            "gpu down:WORKSPACE", "gpu snooze:DURATION", "gpu snooze:WORKSPACE|WORKSPACE/NOTEBOOK",
            "workspace resize:--instance-type", "workspace resize:NAME", "login remove:EMAIL"} <= names
    assert len(SLOTS) >= 35


@pytest.mark.parametrize("slot", SLOTS, ids=str)
def test_hostile_arguments_are_refused_or_stored_and_shown_inertly(edge: Edge, slot: Slot) -> None:
    @settings(max_examples=10, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(HOSTILE)
    def attack(value: str) -> None:
        check(edge, slot, value)

    attack()


def test_every_attack_seed_on_the_share_and_owner_slots(edge: Edge) -> None:
    """The review's examples, deterministically, on the arguments that reach an AuthorizationPolicy."""
    for slot in [s for s in SLOTS if str(s) in ("share:USER", "workspace new:--owner", "reject:REASON")]:
        for value in SEEDS:
            check(edge, slot, value)


@pytest.mark.parametrize("reason", ["no\x00pe", "looks fine \u202eevil", "\ud800", "x" * 1001])
def test_a_reject_with_a_nul_or_bidi_reason_gets_a_message_on_every_database(
        db_url: str, reason: str) -> None:
    """A NUL made PostgreSQL fail the rejection with a raw driver error; now it is refused first."""
    stack = build_stack(db_url)
    request = services.submit(stack.core, harness.ALICE, kinds.WorkspaceCreate("team-r", harness.ALICE.email),
                              idempotency_key=None).request
    audit = list(stack.backend.audit_export("jsonl", None))

    with pytest.raises(errors.InvalidInput) as refused:
        services.decide(stack.core, harness.ADMIN, request.id, approve=False, reason=reason,
                        decision_key="test:reject")

    assert refused.value.field == "reason" and "reason" in refused.value.user_message
    assert_clear_refusal(refused.value.user_message, reason)
    assert stack.request(request.id).state is RequestState.PENDING
    assert list(stack.backend.audit_export("jsonl", None)) == audit
    rejected = services.decide(stack.core, harness.ADMIN, request.id, approve=False, reason="not now",
                               decision_key="test:reject")  # the refused attempt claimed no decision key
    assert rejected.state is RequestState.REJECTED
