"""``iam:SimulatePrincipalPolicy`` for moto, which does not implement it (its server answers 500).

Installed on moto's own ``IamResponse`` (the server runs in the test process), it evaluates the
principal's inline and attached policies with moto's own policy evaluator (the one behind its
``iam_enforced`` mode), and answers as IAM does: one ``EvaluationResults`` entry per action with
``allowed``, ``explicitDeny`` (a Deny matched) or ``implicitDeny`` (nothing allowed it); an unknown
principal is ``NoSuchEntity``. Resource ARNs, condition keys and permission boundaries are not
simulated: every action is evaluated against ``*``, as the doctor asks.
"""

from __future__ import annotations

from typing import Any

import pytest
from moto.core.responses import ActionResult
from moto.iam.access_control import IAMPolicy, PermissionResult
from moto.iam.exceptions import NotFoundException
from moto.iam.responses import IamResponse


def _simulate_principal_policy(self: IamResponse) -> ActionResult:
    arn = self._get_param("PolicySourceArn")
    actions = self._get_param("ActionNames", [])
    backend = self.backend
    principal: Any = None
    if ":role/" in arn:
        principal = backend.get_role_by_arn(arn)
    else:
        principal = next((u for u in backend.users.values() if u.arn == arn), None)
    if principal is None:
        raise NotFoundException(f"{arn} not found")
    policies = [IAMPolicy(doc) for doc in principal.policies.values()]
    policies += [IAMPolicy(p) for p in principal.managed_policies.values()]
    results = []
    for action in actions:
        outcomes = {p.is_action_permitted(action) for p in policies}
        if PermissionResult.DENIED in outcomes:
            decision = "explicitDeny"
        elif PermissionResult.PERMITTED in outcomes:
            decision = "allowed"
        else:
            decision = "implicitDeny"
        results.append({"EvalActionName": action, "EvalResourceName": "*", "EvalDecision": decision})
    return ActionResult({"EvaluationResults": results, "IsTruncated": False})


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IamResponse, "simulate_principal_policy", _simulate_principal_policy, raising=False)
