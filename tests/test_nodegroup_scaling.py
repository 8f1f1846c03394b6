"""``aws.nodegroup.scaling`` over moto (#11): it sets the sizes it names and keeps the others (a
desired size kept is clamped into new bounds), reports a change for compensation, restores the
scaling from before unless someone moved the bounds since, and never touches a nodegroup the bot
did not make."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.errors import PermanentError
from tests.fakes.aws_fixtures import AwsEnv
from tests.test_aws_actions import CLUSTER, describe, make_cluster, nodegroup_params


def scaling_params(**sizes: int | None) -> dict[str, Any]:
    return {
        "cluster": CLUSTER,
        "name": "ws-team-a-gpu",
        "min_size": None,
        "desired_size": None,
        "max_size": None,
        **sizes,
    }


def test_the_scaling_step_sets_what_it_names_keeps_the_rest_and_undo_restores(aws: AwsEnv) -> None:
    make_cluster(aws)
    registry = aws.actions().registry()
    registry["aws.nodegroup"].ensure({**nodegroup_params(), "_request": "R1"})
    action = registry["aws.nodegroup.scaling"]

    down = action.ensure(scaling_params(min_size=0, desired_size=0, max_size=2))
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["scalingConfig"] == {
        "minSize": 0,
        "maxSize": 2,
        "desiredSize": 0,
    }
    assert down.created and down.details["previous"] == {"minSize": 0, "maxSize": 2, "desiredSize": 1}
    assert action.ensure(scaling_params(min_size=0, desired_size=0, max_size=2)).created is False  # no change

    action.undo(scaling_params(min_size=0, desired_size=0, max_size=2), down)
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["scalingConfig"] == {
        "minSize": 0,
        "maxSize": 2,
        "desiredSize": 1,
    }

    # Bounds only: the desired size EKS has is kept, clamped into them.
    action.ensure(scaling_params(min_size=1, max_size=3))
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["scalingConfig"] == {
        "minSize": 1,
        "maxSize": 3,
        "desiredSize": 1,
    }

    # Someone changed the bounds after the bot: compensation says so and leaves them.
    again = action.ensure(scaling_params(min_size=0, desired_size=0, max_size=2))
    aws.client("eks").update_nodegroup_config(
        clusterName=CLUSTER,
        nodegroupName="ws-team-a-gpu",
        scalingConfig={"minSize": 0, "maxSize": 5, "desiredSize": 0},
    )
    with pytest.raises(PermanentError, match="changed by someone else"):
        action.undo(scaling_params(min_size=0, desired_size=0, max_size=2), again)
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["scalingConfig"]["maxSize"] == 5


def test_the_scaling_step_leaves_a_nodegroup_the_bot_did_not_make_alone(aws: AwsEnv) -> None:
    make_cluster(aws)
    aws.actions().registry()["aws.nodegroup"].ensure(nodegroup_params())  # no request mark
    action = aws.actions().registry()["aws.nodegroup.scaling"]
    with pytest.raises(PermanentError, match="not made by kf-chatops"):
        action.ensure(scaling_params(min_size=0, desired_size=0))
    with pytest.raises(PermanentError, match="does not exist"):
        action.ensure({**scaling_params(min_size=0), "name": "ghost"})
    with pytest.raises(PermanentError, match=r"desiredSize 5 is outside 0\.\.2"):
        action.ensure(scaling_params(min_size=0, desired_size=5, max_size=2))
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["scalingConfig"] == {
        "minSize": 0,
        "maxSize": 2,
        "desiredSize": 1,
    }
