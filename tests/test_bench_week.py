"""The week replay (``bench.week``) kept honest: small replays through the real decision code, and
the invariants the bench exists to show. Not timed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench import week

SEEDS = range(4)
HOUR = timedelta(hours=1)


def _run(seed: int, *, after: timedelta = HOUR, scan_first: bool = False) -> dict[str, week.Stats]:
    """Two days (Monday, Tuesday) of six workspaces: a night in between, people back in the morning."""
    results = week.run(seed=seed, days=2, workspaces=6, auto_stop_after=after, scan_first=scan_first)
    return {r.scenario: r.stats for r in results}


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_stop_removes_idle_gpu_time_and_never_what_a_scan_saw_busy(seed: int) -> None:
    stats = _run(seed)
    none, auto, dcgm = stats[week.NO_BOT], stats[week.AUTO], stats[week.AUTO_DCGM]
    assert none.stops == none.scale_downs == none.busy_stops == 0
    assert none.idle_gpu_minutes > 0
    assert auto.idle_gpu_minutes < none.idle_gpu_minutes
    assert dcgm.idle_gpu_minutes <= auto.idle_gpu_minutes
    # Activity the bot cannot read is never idle without utilisation data (signal 3).
    for scenario in (week.REPORTS, week.AUTO):
        assert stats[scenario].stopped_kinds.get("vscode", 0) == 0
    for s in stats.values():
        for stop in s.busy_log:
            # gpu.scale re-lists GPU pods right before it acts: never a busy stop.
            assert stop.kind == "notebook.stop", stop
            # A notebook is only ever stopped busy when it became busy after the last scan (the
            # timer or click acted on that scan's view): never something a scan saw busy.
            assert stop.last_scan is not None and stop.busy_since > stop.last_scan, stop


@pytest.mark.parametrize("after", [HOUR, 12 * HOUR], ids=["1h", "12h"])
@pytest.mark.parametrize("seed", SEEDS)
def test_when_the_scan_of_the_minute_comes_first_nothing_busy_is_stopped(seed: int, after: timedelta) -> None:
    """With a 12h grace period overnight items fall due in the morning, when their owners are back:
    the scans must cancel (or the timer refuse) every one of those."""
    stats = _run(seed, after=after, scan_first=True)
    assert {name: s.busy_stops for name, s in stats.items()} == dict.fromkeys(stats, 0)
    if after == HOUR:
        assert stats[week.AUTO].stops + stats[week.AUTO].scale_downs > 0


def test_the_replay_is_deterministic_per_seed() -> None:
    first, second = _run(3), _run(3)
    for name in first:
        a, b = first[name], second[name]
        assert (a.idle_gpu_minutes, a.idle_usd, a.stops, a.scale_downs, a.busy_log) == (
            b.idle_gpu_minutes,
            b.idle_usd,
            b.stops,
            b.scale_downs,
            b.busy_log,
        )


def test_the_table_prints_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert week.main(["--days", "1", "--workspaces", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("scenario "))
    rows = [line.split()[0] for line in out[head + 1 : head + 5]]
    assert rows == [s.split()[0] for s in week.SCENARIOS]
    with pytest.raises(SystemExit):
        week.main(["--click-share", "2"])
