"""The digest chart: drawn by a real ``python -m bot.chart`` subprocess, a valid PNG (decoded)
whose ``tEXt`` chunk carries the plotted series; the serving process never imports matplotlib;
hostile specs are refused; the fake Slack's upload flow takes it as slack_sdk sends it."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from datetime import date

import pytest
from PIL import Image
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import chart
from handlers.cost.digest import Period, UsageDay, build_digest, chart_spec
from tests.fakes.slack import FakeSlack

pytest_plugins = ["tests.fakes.slack_fixtures"]


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """Walk the PNG's chunks, checking each CRC (a truncated or corrupt file fails here)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + data) == crc
        out.append((kind, data))
        pos += 12 + length
    assert out[-1][0] == b"IEND"
    return out


@pytest.fixture(scope="module")
def drawn() -> tuple[dict[str, object], bytes]:
    period = Period(date(2026, 3, 2), date(2026, 3, 9))
    rows = [
        UsageDay(date(2026, 3, 2), "kf-a-gpu", "team-a", "g5.xlarge", 86400, 0, 24.16, 0),
        UsageDay(date(2026, 3, 4), "kf-a-gpu", "team-a", "g5.xlarge", 3600, 0, 1.0, 0),
        UsageDay(date(2026, 3, 3), "$\\frac$", None, "p4d.24xlarge", 7200, 7200, 43.0, 43.0),
    ]
    spec = chart_spec(build_digest(period, rows))
    return spec, chart.render(spec)


def test_the_subprocess_draws_a_valid_png_carrying_the_series(drawn: tuple[dict[str, object], bytes]) -> None:
    spec, png = drawn
    chunks = _chunks(png)
    texts = dict(data.split(b"\x00", 1) for kind, data in chunks if kind == b"tEXt")
    carried = json.loads(texts[chart.SERIES_KEY.encode()])
    assert carried["series"] == {
        "team-a": [24.16, 0, 1.0, 0, 0, 0, 0],
        "unattributed: $\\frac$": [0, 43.0, 0, 0, 0, 0, 0],
    }
    assert carried["days"] == spec["days"]
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel
    assert image.size == (1000, 450)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 10  # bars and text, not a blank canvas


def test_the_serving_process_never_imports_matplotlib() -> None:
    code = (
        "import sys, bot.app, bot.digest, bot.chart, bot.scheduler;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL', 'numpy')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "spec",
    [
        [],
        {"title": "t", "days": [], "series": {}},
        {"title": "t", "days": ["d"], "series": {"a": [float("nan")]}},
        {"title": "t", "days": ["d"], "series": {"a": [-1]}},
        {"title": "t", "days": ["d"], "series": {"a": [1, 2]}},
        {"title": "t", "days": ["d"], "series": {"a": [True]}},
        {"title": "t", "days": ["d"], "series": {f"s{i}": [1] for i in range(chart.MAX_SERIES + 1)}},
        {"title": "x" * 201, "days": ["d"], "series": {}},
    ],
)
def test_hostile_specs_are_refused_by_the_child(spec: object) -> None:
    with pytest.raises(chart.ChartError, match="invalid chart spec"):
        chart.render(spec)  # type: ignore[arg-type]


def test_the_child_gets_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFBOT_SLACK_BOT_TOKEN", "xoxb-" + "secret")
    monkeypatch.setenv("KFBOT_AUDIT_KEY", "secret")
    seen: dict[str, object] = {}
    real_run = subprocess.run

    def spy(*args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        seen.update(kwargs)
        return real_run(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "run", spy)
    chart.render({"title": "t", "days": ["2026-03-02"], "series": {"a": [1.0]}})
    env = seen["env"]
    assert isinstance(env, dict) and not any(k.startswith(("KFBOT_", "SLACK", "AWS")) for k in env)


def test_slack_sdk_upload_flow_against_the_fake(
    drawn: tuple[dict[str, object], bytes], fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    _, png = drawn
    posted = slack_client.chat_postMessage(channel="CCOST", text="digest")
    slack_client.files_upload_v2(channel="CCOST", thread_ts=posted["ts"], content=png, filename="c.png",
                                 title="GPU $", alt_txt="bars")
    methods = [c.method for c in fake_slack.calls]
    assert methods == [
        "chat.postMessage", "files.getUploadURLExternal", "upload", "files.completeUploadExternal"
    ]
    [(file_id, stored)] = fake_slack.files.items()
    assert stored["data"] == png and stored["length"] == len(png) and stored["thread_ts"] == posted["ts"]
    assert fake_slack.calls_to("files.completeUploadExternal")[0]["channel_id"] == "CCOST"
    [reply] = [m for m in fake_slack.messages_in("CCOST") if m.get("files")]
    assert reply["files"][0]["id"] == file_id


def test_the_fake_refuses_completing_a_file_never_uploaded(
    fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    got = slack_client.files_getUploadURLExternal(filename="c.png", length=10)

    with pytest.raises(SlackApiError, match="file_not_found"):
        slack_client.files_completeUploadExternal(files=[{"id": got["file_id"]}], channel_id="CCOST")
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        slack_client.api_call("files.getUploadURLExternal", params={"filename": "c.png"})
