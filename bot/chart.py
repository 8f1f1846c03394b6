"""The digest's chart, drawn in a short-lived subprocess: ``python -m bot.chart`` reads the chart
spec (``handlers.cost.digest.chart_spec``) as JSON on stdin and writes a PNG on stdout.

Why a subprocess: matplotlib adds ~45 MB to the process that imports it and never gives it back;
the digest is drawn once a day, so the serving process stays within its RSS budget by never
importing it (``tests/test_digest_chart.py`` checks). The child gets a minimal environment (no
Slack token, no database URL, no audit key): it needs none, and a crash dump of it holds none.

The PNG carries the plotted series in a ``tEXt`` chunk (``kfbot-series``), so what was drawn can
be checked without reading pixels.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Final

from handlers import errors
from handlers.plan import JSON

SERIES_KEY: Final = "kfbot-series"
MAX_SERIES: Final = 40
MAX_DAYS: Final = 92
TIMEOUT_SECONDS: Final = 60.0
_PASSED_ENV: Final = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV")


class ChartError(errors.KfError):
    """The chart could not be drawn; the digest is posted as text alone."""


def validate(spec: object) -> tuple[str, list[str], dict[str, list[float]]]:
    """The spec's title, days and series, or ``ValueError``: bounded sizes, finite values, one
    value per day."""
    if not isinstance(spec, Mapping):
        raise ValueError("the chart spec is a JSON object")
    title, days, series = spec.get("title"), spec.get("days"), spec.get("series")
    if not isinstance(title, str) or len(title) > 200:
        raise ValueError("title: a string of at most 200 characters")
    if not isinstance(days, list) or not 1 <= len(days) <= MAX_DAYS or (
        any(not isinstance(d, str) for d in days)
    ):
        raise ValueError(f"days: 1 to {MAX_DAYS} strings")
    if not isinstance(series, Mapping) or len(series) > MAX_SERIES:
        raise ValueError(f"series: an object of at most {MAX_SERIES} lines")
    clean: dict[str, list[float]] = {}
    for label, values in series.items():
        if not isinstance(label, str) or len(label) > 120:
            raise ValueError("series labels: strings of at most 120 characters")
        if not isinstance(values, list) or len(values) != len(days):
            raise ValueError(f"series {label!r}: one value per day")
        numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) != len(values) or not all(math.isfinite(v) and v >= 0 for v in numbers):
            raise ValueError(f"series {label!r}: finite amounts >= 0")
        clean[label] = numbers
    return title, list(days), clean


def draw(spec: object) -> bytes:
    """The PNG (run inside the subprocess only: this imports matplotlib)."""
    title, days, series = validate(spec)
    import io  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415  (the whole point: never imported by the serving process)

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    for label, values in sorted(series.items(), key=lambda kv: -sum(kv[1])):
        # A "$" pair in a name would be read as mathtext: names are drawn as they are.
        ax.bar(days, values, bottom=bottom, label=label.replace("$", r"\$"))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title(title.replace("$", r"\$"))
    ax.set_ylabel("USD (observed uptime x list price)")
    ax.tick_params(axis="x", labelrotation=45)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    out = io.BytesIO()
    # Latin-1 only in tEXt: json.dumps escapes everything else, so any label fits.
    fig.savefig(out, format="png", metadata={SERIES_KEY: json.dumps({"days": days, "series": series})})
    plt.close(fig)
    return out.getvalue()


def render(spec: Mapping[str, JSON], *, timeout: float = TIMEOUT_SECONDS) -> bytes:
    """Draw ``spec`` in a child Python process; ``ChartError`` when it fails or takes too long."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.update(MPLBACKEND="Agg", MPLCONFIGDIR=os.path.join(tempfile.gettempdir(), "kfbot-matplotlib"))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bot.chart"],
            input=json.dumps(spec).encode(),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChartError(f"The cost chart could not be drawn ({type(exc).__name__}).") from exc
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG\r\n\x1a\n"):
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ChartError(f"The cost chart could not be drawn: {last[0][:200]}")
    return done.stdout


def main() -> int:
    try:
        png = draw(json.load(sys.stdin))
    except ValueError as exc:
        print(f"invalid chart spec: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(png)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
