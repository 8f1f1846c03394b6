#!/usr/bin/env python3
"""Render the bot's Block Kit JSON as an HTML page that approximates Slack's look, and screenshot
it with headless Chromium: the pictures in the README.

    python scripts/render_blocks.py --sample approval-card --png docs/images/approval-card.png
    python scripts/render_blocks.py home.json --png docs/images/app-home.png --width 900

The input is what the bot sends to Slack: a list of blocks (a message), ``{"blocks": [...]}`` (a
``chat.postMessage`` body), a view (``{"type": "home"|"modal", ...}``) or a ``views.publish``
body (``{"view": {...}}``). ``--sample`` builds one through the bot's own code instead: a request
filed through the real core on a throw-away SQLite database with the dry-run provisioner, then
``bot.blocks.card`` as the Slack notifier calls it.

The HTML is an approximation (fonts, sizes and colours close to Slack's, not Slack's own CSS).
Block or element types it does not know are drawn as a red box and listed on stderr; the exit
status is 1 then, so a picture never silently leaves something out. Needs Debian's ``chromium``
for ``--png`` (``apt-get install -y chromium``); ``--html`` alone needs nothing.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from bot import app as composition
from bot import blocks, home
from bot.notify import NullNotifier
from bot.settings import Settings
from handlers import parse, services
from handlers.model import Actor, Request
from provisioning import NodeUsage, SystemClock

JSON = Any

EMOJI = {
    "white_check_mark": "✅",
    "heavy_check_mark": "✔️",
    "x": "❌",
    "warning": "⚠️",
    "hourglass": "⌛",
    "hourglass_flowing_sand": "⏳",
    "lock": "🔒",
    "key": "🔑",
    "rocket": "🚀",
    "moneybag": "💰",
    "zzz": "💤",
    "no_entry": "⛔",
}

CSS = """
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: #1d1c1d; font: 15px/1.46668 Lato, "Helvetica Neue",
  Helvetica, "DejaVu Sans", Arial, sans-serif, "Noto Color Emoji"; }
.page { padding: 16px 20px; }
.msg { display: flex; gap: 8px; }
.avatar { width: 36px; height: 36px; border-radius: 6px; background: #1f3b63; color: #fff;
  font-weight: 900; font-size: 14px; display: flex; align-items: center; justify-content: center;
  flex: none; }
.msg-body { flex: 1; min-width: 0; }
.sender { font-weight: 900; }
.badge { font-size: 10px; font-weight: 700; color: #616061; background: rgba(29,28,29,.13);
  border-radius: 2px; padding: 1px 3px; margin: 0 4px; vertical-align: 1px; }
.time { color: #616061; font-size: 12px; }
.block { margin: 4px 0; }
.header { font-size: 18px; font-weight: 900; line-height: 1.33; margin: 8px 0 4px; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 16px; margin-top: 4px; }
.section { display: flex; gap: 12px; align-items: flex-start; }
.section-main { flex: 1; min-width: 0; overflow-wrap: anywhere; }
.context { display: flex; flex-wrap: wrap; gap: 4px 8px; align-items: center; color: #616061;
  font-size: 12px; line-height: 1.5; }
.context img { width: 16px; height: 16px; border-radius: 3px; }
.actions { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0 4px; }
.btn { display: inline-block; height: 28px; line-height: 26px; padding: 0 12px; border-radius: 4px;
  border: 1px solid rgba(29,28,29,.3); background: #fff; color: #1d1c1d; font-size: 13px;
  font-weight: 700; white-space: nowrap; }
.btn.primary { background: #007a5a; border-color: #007a5a; color: #fff; }
.btn.danger { background: #e01e5a; border-color: #e01e5a; color: #fff; }
.select { display: inline-block; min-width: 160px; height: 28px; line-height: 26px; padding: 0 28px 0 10px;
  border: 1px solid rgba(29,28,29,.3); border-radius: 4px; font-size: 13px; position: relative; }
.select::after { content: "⌄"; position: absolute; right: 10px; top: -3px; }
.divider { border: 0; border-top: 1px solid #ddd; margin: 12px 0; }
code { font: 12px/1.5 Monaco, Menlo, "DejaVu Sans Mono", monospace; color: #e01e5a;
  background: rgba(29,28,29,.04); border: 1px solid rgba(29,28,29,.13); border-radius: 3px;
  padding: 2px 3px 1px; }
pre { font: 12px/1.5 Monaco, Menlo, "DejaVu Sans Mono", monospace; background: rgba(29,28,29,.04);
  border: 1px solid rgba(29,28,29,.13); border-radius: 4px; padding: 8px; margin: 4px 0;
  white-space: pre-wrap; overflow-wrap: anywhere; }
.mention { color: #1264a3; background: rgba(29,155,209,.1); border-radius: 3px; padding: 0 2px; }
a { color: #1264a3; text-decoration: none; }
.label { font-weight: 700; margin-bottom: 4px; }
.optional { color: #616061; font-weight: 400; }
.input { border: 1px solid rgba(29,28,29,.3); border-radius: 4px; padding: 8px 10px; color: #868686;
  min-height: 38px; }
.input.multiline { min-height: 80px; }
.hint { color: #616061; font-size: 13px; margin-top: 4px; }
.image img { max-width: 100%; border-radius: 4px; }
.accessory-image { width: 88px; height: 88px; border-radius: 4px; object-fit: cover; }
.unknown { border: 2px dashed #e01e5a; color: #e01e5a; padding: 4px 8px; font-size: 13px; }
.modal { width: 520px; margin: 0 auto; border-radius: 8px; box-shadow: 0 0 0 1px rgba(29,28,29,.13),
  0 18px 48px rgba(0,0,0,.35); background: #fff; }
.modal-title { display: flex; justify-content: space-between; align-items: center; padding: 18px 24px;
  font-size: 22px; font-weight: 900; border-bottom: 1px solid #ddd; }
.modal-title .close { font-weight: 400; color: #616061; }
.modal-body { padding: 12px 24px; }
.modal-foot { display: flex; justify-content: flex-end; gap: 8px; padding: 20px 24px;
  border-top: 1px solid #ddd; }
.modal-foot .btn { height: 36px; line-height: 34px; padding: 0 16px; font-size: 15px; }
.home-bar { display: flex; align-items: center; gap: 10px; padding: 12px 20px;
  border-bottom: 1px solid #ddd; }
.home-bar .name { font-size: 18px; font-weight: 900; }
.tabs { display: flex; gap: 20px; padding: 0 20px; border-bottom: 1px solid #ddd; font-size: 14px;
  color: #616061; }
.tabs span { padding: 10px 0; }
.tabs .on { color: #1d1c1d; font-weight: 700; border-bottom: 2px solid #1164a3; }
.surface { position: relative; }
.overlay { position: absolute; inset: 0; background: rgba(0,0,0,.45); display: flex; align-items: center;
  justify-content: center; }
.overlay .modal { width: 440px; }
.caption { color: #868686; font-size: 12px; padding-top: 0; }
"""


@dataclass
class Renderer:
    """Block Kit to HTML. ``unknown`` collects every block and element type it could not draw
    (``"block:video"``, ``"element:workflow_button"``) and where it was."""

    users: Mapping[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    # -- text ------------------------------------------------------------------------------------

    def text(self, obj: JSON) -> str:
        if not isinstance(obj, Mapping):
            return ""
        if obj.get("type") == "plain_text":
            raw = str(obj.get("text", ""))
            if obj.get("emoji", True):
                raw = _emoji(raw)
            return html.escape(raw).replace("\n", "<br>")
        if obj.get("type") == "mrkdwn":
            return self.mrkdwn(str(obj.get("text", "")))
        self._unknown("text", obj)
        return ""

    def mrkdwn(self, text: str) -> str:
        """Slack's ``mrkdwn``: code fences, inline code, ``<…>`` links and mentions, bold,
        italic and strike; Slack's three entities (``&lt; &gt; &amp;``) shown as characters."""
        out: list[str] = []
        for i, part in enumerate(re.split(r"```", text)):
            if i % 2:
                out.append(f"<pre>{html.escape(_unslack(part.strip(chr(10))))}</pre>")
            else:
                out.append(self._inline(part))
        return "".join(out)

    def _inline(self, text: str) -> str:
        # Code spans and <...> controls become placeholders first, so that bold or italic may
        # span them (`*new workspace `a` for b*`) without reaching inside them.
        text = text.replace("\x00", "")
        held: list[str] = []

        def hold(rendered: str) -> str:
            held.append(rendered)
            return f"\x00{len(held) - 1}\x00"

        text = re.sub(
            r"`([^`\n]+)`", lambda m: hold(f"<code>{html.escape(_unslack(m.group(1)))}</code>"), text
        )
        text = re.sub(r"<([^<>]*)>", lambda m: hold(self._control(m.group(1))), text)
        text = html.escape(_emoji(_unslack(text)), quote=False)
        for mark, tag in (("*", "b"), ("_", "i"), ("~", "s")):
            m = re.escape(mark)
            text = re.sub(
                rf"(?<![\w{m}]){m}(?![\s{m}])([^{m}\n]+?)(?<!\s){m}(?![\w{m}])", rf"<{tag}>\1</{tag}>", text
            )
        text = re.sub(r"\x00(\d+)\x00", lambda m: held[int(m.group(1))], text)
        return text.replace("\n", "<br>")

    def _control(self, inner: str) -> str:
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            uid = target[1:]
            return f'<span class="mention">@{html.escape(self.users.get(uid, label or uid))}</span>'
        if target.startswith("#"):
            return f'<span class="mention">#{html.escape(label or target[1:])}</span>'
        if target.startswith("!date^"):  # Slack shows the date in the reader's time zone: plain text
            return html.escape(_unslack(label))
        if target.startswith("!"):
            word = target[1:].split("^", 1)[0]
            return f'<span class="mention">@{html.escape(label or word)}</span>'
        shown = label or target.removeprefix("mailto:")
        return f'<a href="{html.escape(_unslack(target))}">{html.escape(_unslack(shown))}</a>'

    # -- elements --------------------------------------------------------------------------------

    def element(self, el: JSON) -> str:
        kind = el.get("type") if isinstance(el, Mapping) else None
        if kind == "button":
            style = el.get("style")
            cls = f"btn {style}" if style in ("primary", "danger") else "btn"
            return f'<span class="{cls}">{self.text(el.get("text"))}</span>'
        if kind in ("mrkdwn", "plain_text"):
            return f"<span>{self.text(el)}</span>"
        if kind == "image":
            alt = html.escape(str(el.get("alt_text", "")))
            return f'<img src="{html.escape(str(el.get("image_url", "")))}" alt="{alt}" title="{alt}">'
        if kind == "overflow":
            return '<span class="btn">⋯</span>'
        if kind in (
            "static_select",
            "external_select",
            "users_select",
            "conversations_select",
            "channels_select",
            "multi_static_select",
            "multi_users_select",
            "datepicker",
            "timepicker",
        ):
            initial = (
                el.get("initial_option", {}).get("text")
                if isinstance(el.get("initial_option"), Mapping)
                else None
            )
            shown = self.text(initial) if initial else self.text(el.get("placeholder")) or "Select"
            return f'<span class="select">{shown}</span>'
        if kind in ("plain_text_input", "email_text_input", "number_input", "url_text_input"):
            multi = " multiline" if el.get("multiline") else ""
            value = el.get("initial_value")
            shown = html.escape(str(value)) if value else self.text(el.get("placeholder"))
            return f'<div class="input{multi}">{shown}</div>'
        if kind in ("checkboxes", "radio_buttons"):
            mark = "☐" if kind == "checkboxes" else "○"
            return "<br>".join(f"{mark} {self.text(o.get('text'))}" for o in el.get("options", []))
        self._unknown("element", el)
        return self._box("element", el)

    # -- blocks ----------------------------------------------------------------------------------

    def blocks(self, blocks: Sequence[JSON]) -> str:
        return "\n".join(self.block(b) for b in blocks)

    def block(self, b: JSON) -> str:
        kind = b.get("type") if isinstance(b, Mapping) else None
        if kind == "header":
            return f'<div class="block header">{self.text(b.get("text"))}</div>'
        if kind == "section":
            main = f"<div>{self.text(b['text'])}</div>" if b.get("text") else ""
            if b.get("fields"):
                main += (
                    '<div class="fields">'
                    + "".join(f"<div>{self.text(f)}</div>" for f in b["fields"])
                    + "</div>"
                )
            side = ""
            acc = b.get("accessory")
            if isinstance(acc, Mapping):
                side = (
                    f'<img class="accessory-image" src="{html.escape(str(acc.get("image_url", "")))}" alt="">'
                    if acc.get("type") == "image"
                    else self.element(acc)
                )
            return f'<div class="block section"><div class="section-main">{main}</div>{side}</div>'
        if kind == "context":
            return (
                '<div class="block context">'
                + "".join(self.element(e) for e in b.get("elements", []))
                + "</div>"
            )
        if kind == "actions":
            return (
                '<div class="block actions">'
                + "".join(self.element(e) for e in b.get("elements", []))
                + "</div>"
            )
        if kind == "divider":
            return '<hr class="divider">'
        if kind == "input":
            optional = ' <span class="optional">(optional)</span>' if b.get("optional") else ""
            hint = f'<div class="hint">{self.text(b["hint"])}</div>' if b.get("hint") else ""
            return (
                f'<div class="block"><div class="label">{self.text(b.get("label"))}{optional}</div>'
                f"{self.element(b.get('element'))}{hint}</div>"
            )
        if kind == "image":
            alt = html.escape(str(b.get("alt_text", "")))
            title = f"<div>{self.text(b['title'])}</div>" if b.get("title") else ""
            src = html.escape(str(b.get("image_url", "")))
            return f'<div class="block image">{title}<img src="{src}" alt="{alt}"></div>'
        if kind == "rich_text":
            return f'<div class="block">{self._rich(b.get("elements", []))}</div>'
        self._unknown("block", b)
        return self._box("block", b)

    def _rich(self, elements: Sequence[JSON]) -> str:
        out = []
        for el in elements:
            kind = el.get("type")
            if kind == "rich_text_section":
                out.append(f"<div>{self._rich_inline(el.get('elements', []))}</div>")
            elif kind == "rich_text_preformatted":
                out.append(f"<pre>{self._rich_inline(el.get('elements', []), code=True)}</pre>")
            elif kind == "rich_text_quote":
                out.append(f"<blockquote>{self._rich_inline(el.get('elements', []))}</blockquote>")
            elif kind == "rich_text_list":
                tag = "ol" if el.get("style") == "ordered" else "ul"
                items = "".join(
                    f"<li>{self._rich_inline(i.get('elements', []))}</li>" for i in el.get("elements", [])
                )
                out.append(f"<{tag}>{items}</{tag}>")
            else:
                self._unknown("element", el)
                out.append(self._box("element", el))
        return "".join(out)

    def _rich_inline(self, elements: Sequence[JSON], *, code: bool = False) -> str:
        out = []
        for el in elements:
            kind = el.get("type")
            if kind == "text":
                s = html.escape(str(el.get("text", ""))).replace("\n", "<br>")
                style = el.get("style") or {}
                for key, tag in (("bold", "b"), ("italic", "i"), ("strike", "s"), ("code", "code")):
                    if style.get(key) and not code:
                        s = f"<{tag}>{s}</{tag}>"
                out.append(s)
            elif kind == "link":
                url = html.escape(str(el.get("url", "")))
                out.append(f'<a href="{url}">{html.escape(str(el.get("text") or el.get("url", "")))}</a>')
            elif kind == "user":
                uid = str(el.get("user_id", ""))
                out.append(f'<span class="mention">@{html.escape(self.users.get(uid, uid))}</span>')
            elif kind == "emoji":
                out.append(EMOJI.get(str(el.get("name")), f":{html.escape(str(el.get('name')))}:"))
            else:
                self._unknown("element", el)
                out.append(self._box("element", el))
        return "".join(out)

    def _unknown(self, what: str, obj: JSON) -> None:
        kind = obj.get("type") if isinstance(obj, Mapping) else type(obj).__name__
        self.unknown.append(f"{what}:{kind}")

    @staticmethod
    def _box(what: str, obj: JSON) -> str:
        kind = obj.get("type") if isinstance(obj, Mapping) else type(obj).__name__
        return f'<div class="unknown">unknown {what} type {html.escape(str(kind))}</div>'

    # -- the surfaces ----------------------------------------------------------------------------

    def confirm(self, confirm: JSON) -> str:
        """A button's confirm object, drawn as Slack shows it after the click."""
        ok = "danger" if confirm.get("style") == "danger" else "primary"
        return (
            '<div class="overlay"><div class="modal">'
            f'<div class="modal-title">{self.text(confirm.get("title"))}<span class="close">✕</span></div>'
            f'<div class="modal-body">{self.text(confirm.get("text"))}</div>'
            f'<div class="modal-foot"><span class="btn">{self.text(confirm.get("deny"))}</span>'
            f'<span class="btn {ok}">{self.text(confirm.get("confirm"))}</span></div></div></div>'
        )

    def page(
        self,
        payload: JSON,
        *,
        app: str = "kf-chatops",
        time: str = "10:42 AM",
        open_confirm: str | None = None,
        caption: str = "",
    ) -> str:
        """A whole HTML page for ``payload`` (see the module doc for the shapes it accepts).
        ``open_confirm``: draw the confirm dialog of the button with this action id over it."""
        if isinstance(payload, Mapping) and isinstance(payload.get("view"), Mapping):
            payload = payload["view"]
        if isinstance(payload, Mapping) and payload.get("type") in ("home", "modal"):
            body = self._view(payload, app)
            blocks = payload.get("blocks", [])
        else:
            blocks = payload.get("blocks", []) if isinstance(payload, Mapping) else payload
            if not isinstance(blocks, list):
                raise ValueError("expected a list of blocks, a message with blocks or a view")
            initial = _initials(app)
            body = (
                f'<div class="page"><div class="msg"><div class="avatar">{html.escape(initial)}</div>'
                f'<div class="msg-body"><span class="sender">{html.escape(app)}</span>'
                f'<span class="badge">APP</span><span class="time">{html.escape(time)}</span>'
                f"{self.blocks(blocks)}</div></div></div>"
            )
        if open_confirm is not None:
            found = _find_confirm(blocks, open_confirm)
            if found is None:
                raise ValueError(f"no button with action_id {open_confirm!r} and a confirm dialog")
            body += self.confirm(found)
        note = f'<div class="caption page">{html.escape(caption)}</div>' if caption else ""
        return (
            '<!doctype html><html><head><meta charset="utf-8"><title>Block Kit</title>'
            f'<style>{CSS}</style></head><body><div class="surface">{body}</div>{note}</body></html>'
        )

    def _view(self, view: JSON, app: str) -> str:
        if view.get("type") == "home":
            return (
                f'<div class="home-bar"><div class="avatar">{html.escape(_initials(app))}</div>'
                f'<span class="name">{html.escape(app)}</span></div>'
                '<div class="tabs"><span class="on">Home</span><span>Messages</span><span>About</span></div>'
                f'<div class="page">{self.blocks(view.get("blocks", []))}</div>'
            )
        submit = f'<span class="btn primary">{self.text(view["submit"])}</span>' if view.get("submit") else ""
        close = self.text(view.get("close")) or "Close"
        return (
            '<div class="page"><div class="modal">'
            f'<div class="modal-title">{self.text(view.get("title"))}<span class="close">✕</span></div>'
            f'<div class="modal-body">{self.blocks(view.get("blocks", []))}</div>'
            f'<div class="modal-foot"><span class="btn">{close}</span>{submit}</div></div></div>'
        )


def _initials(app: str) -> str:
    return "".join(w[0] for w in re.split(r"[-_ ]", app) if w)[:2].upper()


def _unslack(text: str) -> str:
    """Slack escapes exactly these three; everything else in a text is literal."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _emoji(text: str) -> str:
    return re.sub(r":([a-z0-9_+-]+):", lambda m: EMOJI.get(m.group(1), m.group(0)), text)


def _find_confirm(blocks: Sequence[JSON], action_id: str) -> JSON | None:
    for b in blocks:
        candidates = list(b.get("elements", [])) + ([b["accessory"]] if b.get("accessory") else [])
        for el in candidates:
            if isinstance(el, Mapping) and el.get("action_id") == action_id and el.get("confirm"):
                return el["confirm"]
    return None


# -- samples built by the bot's own code ------------------------------------------------------------

SAMPLE_USERS = {"U0ALICE": "alice", "U0BOB": "bob", "U0DAVE": "dave"}


def sample_request(
    command: str,
    *,
    email: str = "alice@example.com",
    user_id: str = "U0ALICE",
    before: Sequence[str] = (),
) -> tuple[Request, Settings]:
    """File ``command`` (the text after ``/kf``) through the real core, as a Slack user, on a
    throw-away SQLite database with the dry-run provisioner; the request as recorded.
    ``before``: commands filed first, approved by an admin and applied (a workspace to delete)."""
    with tempfile.TemporaryDirectory(prefix="kfbot-render-") as folder:
        settings = Settings.from_env(
            {
                "KFBOT_DATABASE_URL": f"sqlite:///{folder}/render.db",
                "KFBOT_AUDIT_KEY": "render-blocks-sample-key-0123456789",
                "KFBOT_PROVISIONER": "dry-run",
            }
        )
        backend = composition.build_backend(settings)
        try:
            backend.migrate()
            core = composition.build_core(settings, backend, NullNotifier(), SystemClock())
            actor = Actor(user_id=user_id, email=email)
            admin = Actor(user_id="U0BOB", email="bob@example.com", is_admin=True)
            for n, text in enumerate((*before, command)):
                kind = parse.parse_command(
                    text, requester_email=email, resolve_user=lambda uid: uid, settings=core.settings
                )
                if isinstance(kind, parse.Control):
                    raise ValueError(f"{text!r} is not a request")
                request = services.submit(core, actor, kind, idempotency_key=None).request
                if n < len(before):
                    services.decide(
                        core, admin, request.id, approve=True, decision_key=f"sample:{request.id}"
                    )
                    backend.run_until_idle(NullNotifier())
            return request, settings
        finally:
            backend.close()


def sample_card(
    command: str = "workspace new team-vision --gpu 4 --instance-type g5.12xlarge --nodes 0:2",
) -> JSON:
    """The approval card the Slack notifier posts for ``command`` in dry-run mode."""
    request, settings = sample_request(command)
    _text, blks = blocks.card(request, dry_run=True, confirm_above=settings.slack.confirm_above)
    return blks


def sample_home() -> JSON:
    """The Home tab an admin who also owns a workspace sees, in dry-run mode: their workspace (a
    GPU one, with a token, a grant given and GPU time this month), their own pending quota raise
    (which another admin must decide: no buttons for them) and someone else's request to approve."""
    with tempfile.TemporaryDirectory(prefix="kfbot-render-") as folder:
        settings = Settings.from_env(
            {
                "KFBOT_DATABASE_URL": f"sqlite:///{folder}/render.db",
                "KFBOT_AUDIT_KEY": "render-blocks-sample-key-0123456789",
                "KFBOT_PROVISIONER": "dry-run",
                "KFBOT_DASHBOARD_URL": "https://kubeflow.example.com/",
            }
        )
        backend = composition.build_backend(settings)
        try:
            backend.migrate()
            core = composition.build_core(settings, backend, NullNotifier(), SystemClock())
            alice = Actor(user_id="U0ALICE", email="alice@example.com", is_admin=True)
            bob = Actor(user_id="U0BOB", email="bob@example.com", is_admin=True)
            dave = Actor(user_id="U0DAVE", email="dave@example.com")

            def file(actor: Actor, text: str) -> Request:
                kind = parse.parse_command(
                    text, requester_email=actor.email, resolve_user=lambda uid: uid, settings=core.settings
                )
                assert not isinstance(kind, parse.Control), text
                request = services.submit(core, actor, kind, idempotency_key=None).request
                if request.state.value == "pending" and text.startswith("workspace new team-vision"):
                    services.decide(core, bob, request.id, approve=True, decision_key=f"sample:{request.id}")
                backend.run_until_idle(NullNotifier())
                return request

            file(alice, "workspace new team-vision --gpu 4 --instance-type g5.12xlarge --nodes 0:2")
            file(alice, "token team-vision --ttl 8h --read-only")
            file(alice, "share team-vision carol@example.com --role view --for 7d")
            file(alice, "quota team-vision --gpu 8")
            file(dave, "workspace new team-nlp --gpu 1")
            now = datetime.now(UTC)
            for hours in (30, 0):  # GPU node time the scans recorded this month (the usage ledger)
                node = NodeUsage(
                    "ip-10-0-1-7",
                    "team-vision-g5-12xlarge",
                    "team-vision",
                    "g5.12xlarge",
                    idle=False,
                    hourly_usd=5.672,
                )
                backend.usage.record(now - timedelta(hours=hours, minutes=1 if hours else 0), [node])
            view = home.gather(
                core,
                composition.home_sources(backend),
                alice,
                dry_run=True,
                dashboard_url=settings.slack.dashboard_url,
            )
            return home.render_home(view, confirm_above=settings.slack.confirm_above)
        finally:
            backend.close()


SAMPLES: Mapping[str, Callable[[], JSON]] = {"approval-card": sample_card, "app-home": sample_home}


# -- the screenshot ---------------------------------------------------------------------------------


def screenshot(page: str, png: Path, *, width: int, height: int = 2400) -> None:
    """``page`` as ``png`` through headless Chromium, cropped to what was drawn."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("render_blocks: no chromium; install Debian's package: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="kfbot-render-") as folder:
        source = Path(folder) / "page.html"
        source.write_text(page, encoding="utf-8")
        shot = Path(folder) / "shot.png"
        subprocess.run(  # noqa: S603 - our own arguments, no shell
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--force-device-scale-factor=2",
                f"--user-data-dir={folder}/profile",
                f"--window-size={width},{height}",
                f"--screenshot={shot}",
                source.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        _crop(shot, png)


def _crop(shot: Path, png: Path, margin: int = 24) -> None:
    """Cut the white below (and right of) the content; Chromium shoots the whole window."""
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, (255, 255, 255))).getbbox()
        if box is not None:
            rgb = rgb.crop((0, 0, min(rgb.width, box[2] + margin), min(rgb.height, box[3] + margin)))
        png.parent.mkdir(parents=True, exist_ok=True)
        # 256 colours are plenty for text on white and make the file a third of the size.
        rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("json", nargs="?", type=Path, help="Block Kit JSON: blocks, a message or a view")
    source.add_argument("--sample", choices=sorted(SAMPLES), help="build it with the bot's own code")
    parser.add_argument("--png", type=Path, help="write a screenshot here (needs chromium)")
    parser.add_argument("--html", type=Path, help="write the HTML page here")
    parser.add_argument("--json-out", type=Path, help="write the blocks that were rendered here")
    parser.add_argument("--width", type=int, default=760, help="window width in CSS pixels")
    parser.add_argument("--open-confirm", metavar="ACTION_ID", help="draw this button's confirm dialog")
    parser.add_argument("--caption", default="", help="a line under the picture")
    parser.add_argument("--users", type=Path, help='JSON {"U123": "alice"} for mentions')
    args = parser.parse_args(argv)
    payload = SAMPLES[args.sample]() if args.sample else json.loads(args.json.read_text(encoding="utf-8"))
    users = dict(SAMPLE_USERS)
    if args.users:
        users.update(json.loads(args.users.read_text(encoding="utf-8")))
    renderer = Renderer(users=users)
    page = renderer.page(payload, open_confirm=args.open_confirm, caption=args.caption)
    if args.json_out:
        args.json_out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.html:
        args.html.write_text(page, encoding="utf-8")
    if args.png:
        screenshot(page, args.png, width=args.width)
    for what in sorted(set(renderer.unknown)):
        print(f"render_blocks: not drawn: {what}", file=sys.stderr)
    return 1 if renderer.unknown else 0


if __name__ == "__main__":
    sys.exit(main())
