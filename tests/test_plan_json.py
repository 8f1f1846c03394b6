"""Plans and step outcomes as stored JSON: what is written reads back, digest and all, and a stored
plan whose structure is not a plan's is refused where it is read, not carried on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.plan import JSON, Plan, Step, StepOutcome, canonical_json

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
VALUES: st.SearchStrategy[JSON] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
OBJECTS = st.dictionaries(st.text(max_size=6), VALUES, max_size=4)


def stored(value: JSON) -> Any:
    """What a JSON column gives back for ``value``."""
    return json.loads(canonical_json(value))


@settings(max_examples=80, deadline=None)
@given(params=OBJECTS, details=OBJECTS, summary=st.text(max_size=12), cost=OBJECTS)
def test_a_stored_plan_and_outcome_read_back_equal_with_the_same_digest(
    params: dict[str, JSON], details: dict[str, JSON], summary: str, cost: dict[str, JSON]
) -> None:
    plan = Plan.of([Step("kubeflow.profile", "Profile/a", params, summary)], ["a warning"], cost)
    again = Plan.from_json(stored(plan.to_json()))
    assert again == plan
    assert again.digest() == plan.digest()
    outcome = StepOutcome(created=True, details=details, kept=("S3 bucket `b`",))
    assert StepOutcome.from_json(stored(outcome.to_json())) == outcome


STEP = {"action": "kubeflow.profile", "key": "Profile/a", "params": {"name": "a"}, "summary": "s"}


@pytest.mark.parametrize(
    "damage",
    [{"action": 7}, {"key": None}, {"params": ["name", "a"]}, {"params": "name=a"}, {"summary": 1}],
    ids=repr,
)
def test_a_stored_step_of_the_wrong_shape_is_refused_when_read(damage: dict[str, JSON]) -> None:
    with pytest.raises(TypeError, match="expected a JSON"):
        Plan.from_json({"steps": [{**STEP, **damage}]})


@pytest.mark.parametrize(
    "damage", [{"steps": {"0": STEP}}, {"warnings": "one"}, {"cost": [1]}], ids=repr
)
def test_a_stored_plan_of_the_wrong_shape_is_refused_when_read(damage: dict[str, JSON]) -> None:
    with pytest.raises(TypeError, match="expected a JSON"):
        Plan.from_json({"steps": [STEP], **damage})
    assert Plan.from_json({"steps": [STEP]}).steps[0].params == {"name": "a"}  # the control
