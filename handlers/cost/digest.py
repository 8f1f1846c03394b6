"""The scheduled cost digest: what GPU nodes cost per workspace over a period, how much of it sat
idle, how that compares with the period before, and who wasted most.

Pure: ``provisioning`` reads the observed node time (``UsageDay`` rows, one per day and
nodegroup), ``bot`` posts the text and the chart; this module only computes and words them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class UsageDay:
    """GPU node time one nodegroup's nodes were observed up on one UTC day (summed over nodes)."""

    day: date
    nodegroup: str
    workspace: str | None
    """None: an unattributed nodegroup (made by hand, not adopted)."""
    instance_type: str
    seconds: float
    idle_seconds: float
    usd: float
    idle_usd: float
    unpriced_seconds: float = 0.0
    """Node time of an instance type with no known price (counted in hours, not in dollars)."""
