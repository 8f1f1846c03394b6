"""The cost-control variables reach their settings, and the digest schedule cannot be misread."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.settings import Settings, SettingsError


def test_cost_defaults() -> None:
    s = Settings.from_env({})
    cost, probe = s.core.cost, s.provisioning.cost
    assert cost.idle_after == timedelta(hours=2) and cost.idle_gpu_util == pytest.approx(0.05)
    assert cost.auto_stop_after is None and cost.digest_schedule == "0 9 * * mon-fri"
    assert cost.timezone == "UTC" and cost.cost_channel == "" and dict(cost.workspace_channels) == {}
    assert probe.prometheus_url is None and not probe.cost_explorer
    assert probe.cluster_domain == "cluster.local"


def test_every_cost_variable_reaches_its_layer() -> None:
    s = Settings.from_env(
        {
            "KFBOT_IDLE_AFTER": "90m",
            "KFBOT_IDLE_GPU_UTIL": "12.5",
            "KFBOT_SCAN_INTERVAL": "5m",
            "KFBOT_COST_CHANNEL": "C0COSTS01",
            "KFBOT_WORKSPACE_CHANNELS": "team-a=C0TEAMA01,team-b=G0TEAMB01",
            "KFBOT_AUTO_STOP_AFTER": "4h",
            "KFBOT_COST_DIGEST": "30 8 * * mon,wed",
            "KFBOT_TIMEZONE": "Europe/Berlin",
            "KFBOT_PROMETHEUS_URL": "http://prometheus.monitoring:9090/",
            "KFBOT_CLUSTER_DOMAIN": "corp.local",
            "KFBOT_BOT_PRINCIPAL": "cluster.local/ns/bots/sa/kfbot",
            "KFBOT_COST_EXPLORER": "on",
        }
    )
    cost, probe = s.core.cost, s.provisioning.cost
    assert cost.idle_after == timedelta(minutes=90) and cost.idle_gpu_util == pytest.approx(0.125)
    assert cost.scan_interval == timedelta(minutes=5) and cost.cost_channel == "C0COSTS01"
    assert dict(cost.workspace_channels) == {"team-a": "C0TEAMA01", "team-b": "G0TEAMB01"}
    assert cost.auto_stop_after == timedelta(hours=4) and cost.digest_schedule == "30 8 * * mon,wed"
    assert cost.timezone == "Europe/Berlin"
    assert probe.prometheus_url == "http://prometheus.monitoring:9090" and probe.cost_explorer
    assert probe.cluster_domain == "corp.local" and probe.bot_principal == "cluster.local/ns/bots/sa/kfbot"


@pytest.mark.parametrize("value", ["off", ""])
def test_auto_stop_is_off_unless_given_a_duration(value: str) -> None:
    assert Settings.from_env({"KFBOT_AUTO_STOP_AFTER": value}).core.cost.auto_stop_after is None


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        # cron's 1-5 is Monday-Friday; APScheduler would read it as Tuesday-Saturday.
        ("KFBOT_COST_DIGEST", "0 9 * * 1-5", "name the days"),
        ("KFBOT_COST_DIGEST", "0 9 * *", "five crontab fields"),
        ("KFBOT_COST_DIGEST", "0 25 * * mon", "KFBOT_COST_DIGEST"),
        ("KFBOT_TIMEZONE", "Mars/Olympus", "IANA time zone"),
        ("KFBOT_TIMEZONE", "../../etc/passwd", "IANA time zone"),
        ("KFBOT_IDLE_GPU_UTIL", "150", "between"),
        ("KFBOT_IDLE_AFTER", "soon", "KFBOT_IDLE_AFTER"),
        ("KFBOT_AUTO_STOP_AFTER", "never", "KFBOT_AUTO_STOP_AFTER"),
        ("KFBOT_PROMETHEUS_URL", "prometheus:9090", "http(s) URL"),
        ("KFBOT_COST_EXPLORER", "yes", "on, off"),
    ],
)
def test_bad_cost_values_stop_start_up_naming_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert name in caught.value.user_message and says in caught.value.user_message


def test_the_digest_can_be_switched_off() -> None:
    assert Settings.from_env({"KFBOT_COST_DIGEST": "off"}).core.cost.digest_schedule == ""


def test_the_drift_report_takes_the_digest_schedule_syntax_and_its_own_channel() -> None:
    s = Settings.from_env({"KFBOT_DRIFT_REPORT": "0 7 * * fri", "KFBOT_DRIFT_CHANNEL": "C0DRIFT01"})
    assert (s.slack.drift_report, s.slack.drift_channel) == ("0 7 * * fri", "C0DRIFT01")
    assert Settings.from_env({"KFBOT_DRIFT_REPORT": "off"}).slack.drift_report == ""
    assert Settings.from_env({}).slack.drift_report == "0 9 * * mon"
    for bad in ("0 9 * * 1", "0 9 * *", "0 25 * * mon"):
        with pytest.raises(SettingsError, match="KFBOT_DRIFT_REPORT"):
            Settings.from_env({"KFBOT_DRIFT_REPORT": bad})
