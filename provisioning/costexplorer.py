"""Billed cost from AWS Cost Explorer (``KFBOT_COST_EXPLORER=on``): ``GetCostAndUsage`` over the
digest's period, EC2 compute only, grouped by the ``kf-chatops/workspace`` cost-allocation tag.

What the tag can carry: EKS copies a nodegroup's tags to the nodegroup and its Auto Scaling group,
not to the EC2 instances; only a launch template's tag specifications tag the instances (and so
their cost). Nodegroups the bot creates without such a launch template therefore bill as
*untagged*, and the tag must also be activated as a cost-allocation tag in the Billing console
before Cost Explorer groups by it (and only from then on). The digest says so next to the
numbers. Cost Explorer is global: its endpoint is in us-east-1 whatever the cluster's region.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from handlers.cost.digest import BilledCost, Period
from handlers.errors import PermanentError, TemporaryError
from provisioning.aws import _CLIENT_CONFIG, _translate

if TYPE_CHECKING:
    from mypy_boto3_ce import CostExplorerClient

WORKSPACE_TAG = "kf-chatops/workspace"
METRIC = "UnblendedCost"
EC2_COMPUTE = "Amazon Elastic Compute Cloud - Compute"
_MAX_PAGES = 20


def parse_results(pages: list[Mapping[str, Any]], period: Period) -> BilledCost:
    """Sum ``ResultsByTime[].Groups`` per tag value (``kf-chatops/workspace$team-a``; an empty
    value is the untagged cost). Refuses an answer whose amounts are not numbers or mix units."""
    by_workspace: dict[str, float] = {}
    untagged = 0.0
    units: set[str] = set()
    estimated = False
    for page in pages:
        for result in page.get("ResultsByTime", []):
            estimated = estimated or bool(result.get("Estimated"))
            for group in result.get("Groups", []):
                keys = group.get("Keys") or [""]
                value = str(keys[0]).split("$", 1)[1] if "$" in str(keys[0]) else ""
                metric = group.get("Metrics", {}).get(METRIC, {})
                try:
                    amount = float(metric.get("Amount", "0"))
                except (TypeError, ValueError) as exc:
                    raise PermanentError("Cost Explorer answered with an amount that is no number.") from exc
                units.add(str(metric.get("Unit", "USD")))
                if value:
                    by_workspace[value] = by_workspace.get(value, 0.0) + amount
                else:
                    untagged += amount
    if len(units) > 1:
        raise PermanentError(f"Cost Explorer answered in several units ({', '.join(sorted(units))}).")
    return BilledCost(period, by_workspace, untagged, units.pop() if units else "USD", estimated)


class CostExplorer:
    def __init__(self, endpoint_url: str | None = None, session: boto3.Session | None = None) -> None:
        self._endpoint_url = endpoint_url
        self._session = session
        self._client: CostExplorerClient | None = None

    def _ce(self) -> CostExplorerClient:
        if self._client is None:
            session = self._session or boto3.Session()
            self._client = session.client(
                "ce", region_name="us-east-1", endpoint_url=self._endpoint_url, config=_CLIENT_CONFIG
            )
        return self._client

    def billed(self, period: Period) -> BilledCost:
        """Billed EC2 compute cost per workspace tag over ``period`` (``TemporaryError`` or
        ``PermanentError`` when Cost Explorer cannot answer)."""
        pages: list[Mapping[str, Any]] = []
        token: str | None = None
        try:
            for _ in range(_MAX_PAGES):
                args: dict[str, Any] = {
                    "TimePeriod": {"Start": period.start.isoformat(), "End": period.end.isoformat()},
                    "Granularity": "DAILY",
                    "Metrics": [METRIC],
                    "GroupBy": [{"Type": "TAG", "Key": WORKSPACE_TAG}],
                    "Filter": {"Dimensions": {"Key": "SERVICE", "Values": [EC2_COMPUTE]}},
                }
                if token:
                    args["NextPageToken"] = token
                page = self._ce().get_cost_and_usage(**args)
                pages.append(page)
                token = page.get("NextPageToken")
                if not token:
                    break
        except ClientError as exc:
            raise _translate(exc, "reading billed cost from Cost Explorer") from exc
        except BotoCoreError as exc:
            raise TemporaryError(f"Cost Explorer could not be reached ({type(exc).__name__}).") from exc
        return parse_results(pages, period)


__all__ = ["EC2_COMPUTE", "WORKSPACE_TAG", "CostExplorer", "parse_results"]
