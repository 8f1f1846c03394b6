"""Taints and tolerations: how the bot keeps one workspace's GPU pods off another's nodes.

A PodDefault cannot set a nodeSelector (``kubeflow.org/v1alpha1`` has no such field), so a
workspace's pods are kept to its own nodes by taints: each bot-made GPU nodegroup carries
``kf-chatops/dedicated=<namespace>:NoSchedule`` besides ``nvidia.com/gpu``, and the workspace's
PodDefault tolerates exactly those. A GPU pod must land on a GPU node (only those offer
``nvidia.com/gpu``), and among the bot's GPU nodes it tolerates only its own workspace's.

``tolerates`` is Kubernetes' own rule (``ToleratesTaint`` in k8s.io/api core/v1 and the
scheduler's TaintToleration filter), so tests can ask the question the scheduler asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from handlers.plan import JSON

EKS_EFFECTS: Mapping[str, str] = {
    "NO_SCHEDULE": "NoSchedule",
    "NO_EXECUTE": "NoExecute",
    "PREFER_NO_SCHEDULE": "PreferNoSchedule",
}
"""EKS's spelling of a taint effect -> the Kubernetes one the node carries."""

_SCHEDULING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
"""The effects the scheduler filters on; PreferNoSchedule only lowers a node's score."""


def node_taint(eks_taint: Mapping[str, JSON]) -> dict[str, str]:
    """A nodegroup taint as EKS takes it (``NO_SCHEDULE``) -> the taint its nodes carry."""
    effect = str(eks_taint.get("effect", ""))
    return {
        "key": str(eks_taint.get("key", "")),
        "value": str(eks_taint.get("value") or ""),
        "effect": EKS_EFFECTS.get(effect, effect),
    }


def toleration_for(taint: Mapping[str, str], *, any_value: bool = False) -> dict[str, str]:
    """The toleration of exactly this (Kubernetes-form) taint; ``any_value``: of its key, whatever
    the value (``Exists``)."""
    if any_value:
        return {"key": taint["key"], "operator": "Exists", "effect": taint["effect"]}
    return {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}


def tolerates_taint(toleration: Mapping[str, JSON], taint: Mapping[str, JSON]) -> bool:
    """Kubernetes' ``Toleration.ToleratesTaint``: an empty effect matches every effect, an empty
    key (only valid with ``Exists``) every key; operator ``Exists`` ignores the value, ``Equal``
    (or no operator) compares it; any other operator tolerates nothing."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def tolerates(tolerations: Sequence[Mapping[str, JSON]], taints: Sequence[Mapping[str, JSON]]) -> bool:
    """Whether a pod with ``tolerations`` passes the scheduler's taint filter on a node with
    ``taints`` (Kubernetes form): every NoSchedule and NoExecute taint is tolerated by some
    toleration."""
    return all(
        any(tolerates_taint(toleration, taint) for toleration in tolerations)
        for taint in taints
        if taint.get("effect") in _SCHEDULING_EFFECTS
    )
