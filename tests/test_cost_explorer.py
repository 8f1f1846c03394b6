"""Billed cost from Cost Explorer over moto (real boto3 over HTTP). moto does not track cost: it
answers ``GetCostAndUsage`` from a queue the test fills (``/moto-api/static/ce/...``), so these
tests prove the parsing and the presentation, not AWS's numbers."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from handlers import errors
from handlers.cost.digest import TAG_NOTE, Period, UsageDay, build_digest, render_text
from provisioning.costexplorer import WORKSPACE_TAG, CostExplorer, parse_results
from provisioning.settings import CostProbeSettings, ProvisioningSettings
from tests.fakes.aws_fixtures import AwsEnv
from tests.harness import build_stack

pytest_plugins = ["tests.fakes.aws_fixtures", "tests.fakes.db_fixtures"]

PERIOD = Period(date(2026, 3, 2), date(2026, 3, 9))


def group(value: str, amount: str, unit: str = "USD") -> dict[str, Any]:
    metric = {"Amount": amount, "Unit": unit}
    return {"Keys": [f"{WORKSPACE_TAG}${value}"], "Metrics": {"UnblendedCost": metric}}


def day_result(d: int, groups: list[dict[str, Any]], estimated: bool = False) -> dict[str, Any]:
    return {
        "TimePeriod": {"Start": f"2026-03-0{d}", "End": f"2026-03-0{d + 1}"},
        "Total": {},
        "Groups": groups,
        "Estimated": estimated,
    }


def queue(aws: AwsEnv, *results: dict[str, Any]) -> None:
    body = json.dumps({"results": list(results)}).encode()
    request = urllib.request.Request(
        aws.url + "/moto-api/static/ce/cost-and-usage-results",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request):
        pass


def test_billed_cost_per_workspace_tag_over_moto(aws: AwsEnv) -> None:
    queue(
        aws,
        {
            "ResultsByTime": [
                day_result(2, [group("team-a", "10.50"), group("", "99.25"), group("team-b", "1")]),
                day_result(3, [group("team-a", "4.5")], estimated=True),
            ],
            "DimensionValueAttributes": [],
        },
    )
    billed = CostExplorer(aws.url).billed(PERIOD)
    assert billed.by_workspace == {"team-a": 15.0, "team-b": 1.0}
    assert billed.untagged == 99.25 and billed.estimated and billed.unit == "USD"
    text = render_text(
        build_digest(
            PERIOD,
            [UsageDay(date(2026, 3, 2), "kf-team-a-gpu", "team-a", "g5.xlarge", 3600, 0, 1.0, 0.0)],
            billed=billed,
        )
    )
    assert "*Billed* (Cost Explorer" in text and "team-a: 15.00 USD" in text and TAG_NOTE in text
    # Observed and billed are told apart: the observed line is labelled as list price.
    assert "not the bill" in text


def test_the_backend_reads_it_only_when_switched_on(aws: AwsEnv, sqlite_url: str) -> None:
    stack = build_stack(sqlite_url)
    assert stack.backend.billed_cost(PERIOD) is None
    on = replace(
        stack.backend.settings,
        aws_endpoint_url=aws.url,
        cost=CostProbeSettings(cost_explorer=True),
    )
    assert isinstance(on, ProvisioningSettings)
    stack.backend.settings = on
    queue(aws, {"ResultsByTime": [day_result(2, [group("team-a", "2")])]})
    billed = stack.backend.billed_cost(PERIOD)
    assert billed is not None and billed.by_workspace == {"team-a": 2.0}


def test_an_empty_queue_reads_as_nothing_tagged(aws: AwsEnv) -> None:
    billed = CostExplorer(aws.url).billed(PERIOD)
    assert (billed.by_workspace, billed.untagged) == ({}, 0.0)
    text = render_text(build_digest(PERIOD, [], billed=billed))
    assert "No cost carries the tag yet" in text


@pytest.mark.parametrize(
    "pages",
    [
        [{"ResultsByTime": [day_result(2, [group("team-a", "ten")])]}],
        [{"ResultsByTime": [day_result(2, [group("team-a", "1", "USD"), group("team-b", "1", "EUR")])]}],
    ],
)
def test_answers_that_do_not_add_up_are_refused(pages: list[dict[str, Any]]) -> None:
    with pytest.raises(errors.PermanentError):
        parse_results(pages, PERIOD)


def test_hostile_tag_values_reach_the_channel_escaped() -> None:
    billed = parse_results([{"ResultsByTime": [day_result(2, [group("<!channel>", "1")])]}], PERIOD)
    text = render_text(build_digest(PERIOD, [], billed=billed))
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text


def test_unreachable_cost_explorer_is_a_temporary_error(aws: AwsEnv) -> None:
    with pytest.raises(errors.TemporaryError, match="could not be reached"):
        CostExplorer("http://127.0.0.1:9").billed(PERIOD)
