"""``scripts/render_blocks.py`` draws every block and element type the bot emits (the README's
pictures come from it; Chromium is not needed here, only its HTML).

The payloads come from the real builders: a request filed through the real core on the dry-run
provisioner, its card in each state, the DMs, every modal and the idle-GPU report. A type the
renderer does not know would be drawn as a red box and listed in ``Renderer.unknown``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import blocks
from bot.cost import report_blocks
from handlers.cost import report
from handlers.cost.idle import IdleItem
from handlers.model import RequestState
from handlers.ports import RevealedSecret

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "render_blocks.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_blocks", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


rb = _load()


def _idle_item(key: str, kind: str, workspace: str | None) -> IdleItem:
    return IdleItem(
        key=key,
        kind=kind,
        workspace=workspace,
        what=key.split(":", 1)[1],
        since=T0,
        gpus=1,
        hourly_usd=1.006,
        spent_usd=3.018,
        established=True,
        signals=(key,),
        namespace="ws-a",
        name="nb",
        reason="kernels and terminals idle",
    )


def _payloads() -> Iterator[tuple[str, Any]]:
    """(name, payload) for everything the bot builds with blocks, through its own builders."""
    request, settings = rb.sample_request(
        "workspace new team-vision --gpu 4 --instance-type g5.12xlarge --nodes 0:2"
    )
    confirm = settings.slack.confirm_above
    yield "card pending, dry run", blocks.card(request, dry_run=True, confirm_above=confirm)[1]
    yield "card superseded", blocks.card(request, superseded=True)[1]
    for state in RequestState:
        shown = dataclasses.replace(request, state=state, error="step 3 failed: AccessDenied")
        yield f"card {state.value}", blocks.card(shown, confirm_above=confirm)[1]
    delete, _ = rb.sample_request(
        "workspace delete team-a --confirm team-a --purge-data", before=["workspace new team-a"]
    )
    yield "card delete", blocks.card(delete, confirm_above=confirm)[1]
    yield (
        "dm with a button",
        {"blocks": blocks.dm("Done.", action=("Set my password", blocks.SET_PASSWORD, ""))[1]},
    )
    yield "dm", blocks.dm("Rejected.")[1]
    yield "plan modal", blocks.plan_modal(request)
    secret = RevealedSecret(
        "token", "eyJhbGciOi.payload.sig", "fp1234", T0 + timedelta(hours=1), {"kubeconfig": "apiVersion: v1"}
    )
    yield "secret modal", blocks.secret_modal(secret, request_id=request.id)
    yield "working modal", blocks.working_modal("Your token")
    yield "notice modal", blocks.notice_modal("Done", "It is *done*.")
    yield "reject modal", blocks.reject_modal(request, blocks.RejectContext(request.id, 1, "C1", "1.2"))
    yield "workspace form", blocks.workspace_modal()
    rep = report.build(
        [
            _idle_item("notebook:ws-a/nb", "notebook", "team-a"),
            _idle_item("nodegroup:ng-x", "nodes", None),
        ],
        {"team-a": "alice@example.com"},
        ["GPU utilisation unavailable"],
        T0 + timedelta(hours=3),
    )
    yield "idle report", [b.to_dict() for b in report_blocks(rep, lambda e: "U0ALICE")[1]]


PAYLOADS = list(_payloads())


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def _walk(obj: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(obj, Mapping):
        yield obj
        for value in obj.values():
            yield from _walk(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value)


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[name for name, _ in PAYLOADS])
def test_every_block_the_bot_builds_is_drawn(name: str, payload: Any) -> None:
    renderer = rb.Renderer(users=rb.SAMPLE_USERS)
    page = renderer.page(payload)
    assert renderer.unknown == [], name
    assert "unknown" not in page.split("</style>", 1)[1]
    parsed = _parse(page)
    drawn = " ".join(parsed.text)
    buttons = [o for o in _walk(payload) if o.get("type") == "button"]
    shown = [t for t, attrs in parsed.tags if t == "span" and (attrs.get("class") or "").startswith("btn")]
    # Every button once (a modal's close/submit are drawn as buttons too).
    view = payload if isinstance(payload, Mapping) and payload.get("type") == "modal" else None
    extra = 0 if view is None else 1 + (1 if view.get("submit") else 0)
    assert len(shown) == len(buttons) + extra
    for obj in _walk(payload):
        if obj.get("type") == "header" or obj.get("type") == "button":
            assert obj["text"]["text"] in drawn
    for button in buttons:
        style = button.get("style")
        if style:
            assert any(style in (attrs.get("class") or "").split() for t, attrs in parsed.tags if t == "span")


def test_the_sample_card_is_the_dry_run_card_with_its_cost_dialog() -> None:
    card = rb.sample_card()
    page = rb.Renderer(users=rb.SAMPLE_USERS).page(card, open_confirm=blocks.APPROVE)
    drawn = " ".join(_parse(page).text)
    assert "(dry run)" in drawn and "Approve this cost?" in drawn and "@alice" in drawn


def test_an_unknown_type_is_reported_and_drawn_as_such() -> None:
    renderer = rb.Renderer()
    page = renderer.page(
        [
            {"type": "video", "title": {"type": "plain_text", "text": "x"}},
            {
                "type": "actions",
                "elements": [{"type": "workflow_button", "text": {"type": "plain_text", "text": "y"}}],
            },
        ]
    )
    assert renderer.unknown == ["block:video", "element:workflow_button"]
    assert "unknown block type video" in page and "unknown element type workflow_button" in page


def test_views_and_publish_bodies_are_accepted(tmp_path: Path) -> None:
    home = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*Your workspaces*"}}],
    }
    for payload in (home, {"user_id": "U1", "view": home}):
        source = tmp_path / "home.json"
        source.write_text(json.dumps(payload))
        out = tmp_path / "home.html"
        assert rb.main([str(source), "--html", str(out)]) == 0
        page = out.read_text()
        assert "<b>Your workspaces</b>" in page and 'class="tabs"' in page
    source.write_text(json.dumps([{"type": "carousel"}]))
    assert rb.main([str(source), "--html", str(out)]) == 1


_ALLOWED_TAGS = {"b", "i", "s", "code", "pre", "br", "span", "a"}


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("<>&*_~`|@!#:/ abc\n\"'=x"), max_size=40))
def test_mrkdwn_never_lets_text_become_markup(text: str) -> None:
    """Whatever the text, only the tags mrkdwn maps to appear, with no attribute but class and
    href: a ``<`` in a text never opens a tag of its own."""
    out = rb.Renderer().mrkdwn(text)
    parsed = _parse(f"<div>{out}</div>")
    assert {t for t, _ in parsed.tags} <= _ALLOWED_TAGS | {"div"}
    for tag, attrs in parsed.tags:
        assert set(attrs) <= {"class", "href"}, (tag, attrs)
