"""GPU instance facts for plans: what a nodegroup costs and which EKS AMI it needs.

The AWS Pricing API is slow, global-only (us-east-1 / ap-south-1 endpoints), needs its own IAM
permission and is absent from the test stack, yet an approver only needs a price estimate on the
approval card. So the bot carries a small table of publicly listed on-demand Linux prices (USD per
hour) as of 2026, including the June 2025 P4d/P5 reductions. They are list prices, not what an
account with Savings Plans or an EDP pays, and they drift: operators override them per instance
type in the settings (``price_overrides``), and an override always wins over the table.

GPU counts and CPU architectures come from the EC2 instance type documentation; they decide how
many nodes a GPU quota needs and whether the x86_64 or the ARM NVIDIA AMI is required (g5g is
Graviton). Everything here is a pure function over constants: no I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from handlers import errors, naming

Architecture = Literal["x86_64", "arm64"]

HOURS_PER_MONTH: Final = 730.0
"""AWS's own convention for monthly estimates (365 days * 24 h / 12)."""


@dataclass(frozen=True)
class GpuInstance:
    gpus: int
    gpu_model: str
    architecture: Architecture


_GPU_INSTANCES: Final[Mapping[str, GpuInstance]] = {
    **{
        f"g4dn.{size}": GpuInstance(1, "NVIDIA T4", "x86_64")
        for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
    },
    "g4dn.12xlarge": GpuInstance(4, "NVIDIA T4", "x86_64"),
    "g4dn.metal": GpuInstance(8, "NVIDIA T4", "x86_64"),
    **{
        f"g5.{size}": GpuInstance(1, "NVIDIA A10G", "x86_64")
        for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
    },
    "g5.12xlarge": GpuInstance(4, "NVIDIA A10G", "x86_64"),
    "g5.24xlarge": GpuInstance(4, "NVIDIA A10G", "x86_64"),
    "g5.48xlarge": GpuInstance(8, "NVIDIA A10G", "x86_64"),
    **{
        f"g5g.{size}": GpuInstance(1, "NVIDIA T4G", "arm64")
        for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge")
    },
    "g5g.16xlarge": GpuInstance(2, "NVIDIA T4G", "arm64"),
    "g5g.metal": GpuInstance(2, "NVIDIA T4G", "arm64"),
    **{
        f"g6.{size}": GpuInstance(1, "NVIDIA L4", "x86_64")
        for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
    },
    "g6.12xlarge": GpuInstance(4, "NVIDIA L4", "x86_64"),
    "g6.24xlarge": GpuInstance(4, "NVIDIA L4", "x86_64"),
    "g6.48xlarge": GpuInstance(8, "NVIDIA L4", "x86_64"),
    "p3.2xlarge": GpuInstance(1, "NVIDIA V100", "x86_64"),
    "p3.8xlarge": GpuInstance(4, "NVIDIA V100", "x86_64"),
    "p3.16xlarge": GpuInstance(8, "NVIDIA V100", "x86_64"),
    "p4d.24xlarge": GpuInstance(8, "NVIDIA A100", "x86_64"),
    "p5.48xlarge": GpuInstance(8, "NVIDIA H100", "x86_64"),
}

# Families without a GPU entry above still need the right AMI architecture (Graviton families).
_ARM_FAMILIES: Final = frozenset({"g5g"})

# Common general-purpose, compute and memory types for CPU nodegroups (us-east-1 and us-west-2
# list prices): an instance type must be priced to be asked for (``require_known_instance_type``).
_US_CPU: Final[Mapping[str, float]] = {
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "m5.2xlarge": 0.384,
    "m5.4xlarge": 0.768,
    "m6i.large": 0.096,
    "m6i.xlarge": 0.192,
    "m6i.2xlarge": 0.384,
    "m6i.4xlarge": 0.768,
    "c5.xlarge": 0.17,
    "c5.2xlarge": 0.34,
    "c6i.xlarge": 0.17,
    "c6i.2xlarge": 0.34,
    "r5.xlarge": 0.252,
    "r5.2xlarge": 0.504,
    "r6i.xlarge": 0.252,
    "r6i.2xlarge": 0.504,
}

_US: Final[Mapping[str, float]] = {
    **_US_CPU,
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.12xlarge": 4.6016,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p4d.24xlarge": 21.96,
    "p5.48xlarge": 55.04,
}

_PRICES: Final[Mapping[str, Mapping[str, float]]] = {
    "us-east-1": _US,
    "us-west-2": _US,
    "eu-west-1": {
        "g4dn.xlarge": 0.587,
        "g4dn.2xlarge": 0.838,
        "g4dn.4xlarge": 1.343,
        "g4dn.8xlarge": 2.427,
        "g4dn.12xlarge": 4.363,
        "g5.xlarge": 1.123,
        "g5.2xlarge": 1.353,
        "g5.4xlarge": 1.813,
        "g5.12xlarge": 6.332,
        "g5.48xlarge": 18.184,
        "g6.xlarge": 0.8986,
        "g6.2xlarge": 1.0915,
        "g6.12xlarge": 5.1379,
        "p3.2xlarge": 3.305,
        "p3.8xlarge": 13.22,
        "p4d.24xlarge": 23.72,
        "p5.48xlarge": 59.44,
    },
    "eu-central-1": {
        "g4dn.xlarge": 0.658,
        "g4dn.2xlarge": 0.94,
        "g4dn.4xlarge": 1.505,
        "g4dn.8xlarge": 2.72,
        "g4dn.12xlarge": 4.89,
        "g5.xlarge": 1.258,
        "g5.2xlarge": 1.515,
        "g5.4xlarge": 2.03,
        "g5.12xlarge": 7.09,
        "g5.48xlarge": 20.36,
        "g6.xlarge": 0.9818,
        "g6.2xlarge": 1.1927,
        "g6.12xlarge": 5.614,
        "p3.2xlarge": 3.823,
        "p3.8xlarge": 15.292,
        "p4d.24xlarge": 27.45,
        "p5.48xlarge": 68.8,
    },
    "ap-northeast-1": {
        "g4dn.xlarge": 0.71,
        "g4dn.2xlarge": 1.015,
        "g4dn.4xlarge": 1.625,
        "g4dn.8xlarge": 2.938,
        "g4dn.12xlarge": 5.281,
        "g5.xlarge": 1.459,
        "g5.2xlarge": 1.757,
        "g5.4xlarge": 2.354,
        "g5.12xlarge": 8.224,
        "g5.48xlarge": 23.618,
        "g6.xlarge": 1.0704,
        "g6.2xlarge": 1.3002,
        "g6.12xlarge": 6.1201,
        "p3.2xlarge": 4.194,
        "p3.8xlarge": 16.776,
        "p4d.24xlarge": 29.81,
        "p5.48xlarge": 71.55,
    },
}


def gpu_instance_info(instance_type: str) -> GpuInstance | None:
    """GPU count, model and architecture, or None for a type the table does not know."""
    return _GPU_INSTANCES.get(instance_type)


def gpus_per_instance(instance_type: str) -> int | None:
    info = _GPU_INSTANCES.get(instance_type)
    return None if info is None else info.gpus


def architecture(instance_type: str) -> Architecture:
    info = _GPU_INSTANCES.get(instance_type)
    if info is not None:
        return info.architecture
    return "arm64" if instance_type.split(".", 1)[0] in _ARM_FAMILIES else "x86_64"


def gpu_ami_type(instance_type: str) -> str:
    """The EKS ``amiType`` for a GPU node: AL2023 with the NVIDIA driver (AL2 reached end of support)."""
    return "AL2023_ARM_64_NVIDIA" if architecture(instance_type) == "arm64" else "AL2023_x86_64_NVIDIA"


def hourly_price(region: str, instance_type: str, overrides: Mapping[str, float]) -> float | None:
    """On-demand USD per hour: the operator's override, else the table, else None (unknown)."""
    if instance_type in overrides:
        return float(overrides[instance_type])
    return _PRICES.get(region, {}).get(instance_type)


def monthly(hourly: float) -> float:
    return hourly * HOURS_PER_MONTH


def known_instance_types(overrides: Mapping[str, float]) -> frozenset[str]:
    """Every instance type the bot can describe: the GPU table, the price table of any region and
    the operator's price overrides (how a CPU type or a new GPU type is admitted)."""
    priced = {t for table in _PRICES.values() for t in table}
    return frozenset({*_GPU_INSTANCES, *priced, *overrides})


def require_known_instance_type(
    instance_type: str, overrides: Mapping[str, float], *, field: str = "instance_type"
) -> str:
    """Refuse an instance type the bot knows nothing of (a typo such as ``g5.xlarg``, or
    ``foo.bar``): a nodegroup of it would have no cost line and no GPU count for the approver.
    The message names the closest known types (``difflib``)."""
    known = known_instance_types(overrides)
    if instance_type in known:
        return instance_type
    raise errors.InvalidInput(
        f"{naming.show_value(instance_type)} is not an instance type kf-chatops knows a price for. "
        f"Did you mean {closest(instance_type, known)}? An admin can add a type with KFBOT_PRICE_OVERRIDES.",
        field=field,
    )


def gpu_instance_types() -> frozenset[str]:
    return frozenset(_GPU_INSTANCES)


def closest(instance_type: str, candidates: frozenset[str]) -> str:
    """Up to three of ``candidates`` most like ``instance_type``, as `a`, `b`, `c` (``difflib``;
    when nothing is alike, the same family, else the usual GPU types)."""
    close = difflib.get_close_matches(instance_type, sorted(candidates), n=3, cutoff=0.5)
    if not close:
        family = instance_type.split(".", 1)[0]
        close = sorted(t for t in candidates if t.split(".", 1)[0] == family)[:3] or [
            "g4dn.xlarge",
            "g5.xlarge",
        ]
    return ", ".join(f"`{t}`" for t in close)


def is_gpu_family(instance_type: str) -> bool:
    """Whether ``instance_type`` belongs to a family with GPUs (``g4dn``, ``g5``, ``p4d``, …):
    the family of a type in the GPU table."""
    family = instance_type.split(".", 1)[0]
    return instance_type in _GPU_INSTANCES or family in {t.split(".", 1)[0] for t in _GPU_INSTANCES}
