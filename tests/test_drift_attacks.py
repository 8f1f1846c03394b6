"""The drift report against names people typed into the cluster (findings M2, L1, L2 of the
second attack round): a contributor added in the dashboard, a hand-made Profile's owner, a tag
on a bucket are whatever someone typed (``o'brien@example.com``, ``Jane Doe``, a Slack user id,
``<!channel>``, a bidi override). The report must show each as inert text, never raise, never
mention someone Slack did not resolve; and a button must act only on the values its line showed.

Pure properties over ``handlers.drift`` and the Slack rendering (``bot.drift.drift_blocks``), then
the live world of ``tests/test_drift_e2e.py`` (fake apiserver, moto, fake Slack) for the report
posted and clicked."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import render
from bot.drift import drift_blocks
from handlers import drift, errors, naming
from handlers.model import Actor, RequestState
from handlers.settings import CoreSettings
from tests.fakes.aws_fixtures import AwsEnv
from tests.test_drift_e2e import add_contributor_by_hand, desk, items, world  # noqa: F401 (fixture)
from tests.test_sharing_quota_tokens_e2e import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_CHANNEL,
    ALICE,
    NS,
    PROFILES,
    Live,
    LiveFactory,
    core_settings,
    make_live,
    restore_logging,
)

ADMIN2 = Actor("U0ADMIN02", "admin2@example.com", is_admin=True)
BOB = "bob@example.com"
BOB_ID = "UBOB00001"
FRAGMENTS = (
    "o'brien@example.com", "Jane Doe", "UADMIN002", "W0ADMIN02", "<!channel>", "<!here>", "@here",
    "<@UADMIN002>", "<https://evil.example|click>", "*bold*", "_it_", "~s~", "`", "```", "&amp;",
    "\u202e", "\u2066", "\x1e@UADMIN002\x1e", "\x1e", "\n", ":", "#", "~", " ", "é", BOB,
    "shell:root", "kfbot",
)
NAMES = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4).map("".join)
SETTINGS = CoreSettings()


def _find_user(email: str) -> str | None:
    return BOB_ID if email == BOB else None


def _inventory(
    contributors: dict[str, str], grants: dict[str, str], owner: str, name: str, tag: str
) -> drift.DriftInventory:
    ws = drift.WorkspaceSeen(
        "team-a", "team-a", "alice@example.com", grants, {"cpu": "4"}, contributors,
        {"cpu": "8", name: tag},
        (drift.RecordedNodegroup("Nodegroup/ng", name, drift.Scaling(0, 2), drift.Scaling(0, 3)),),
    )
    return drift.DriftInventory(
        datetime(2026, 12, 5, tzinfo=UTC), (ws,),
        (drift.Orphan("bucket", name, tag, tag), drift.Orphan("dex", owner, tag)),
        ((name, owner), *([(tag, "")] if tag != name else [])),  # namespaces are unique
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=st.dictionaries(NAMES, st.sampled_from(["edit", "view", "<!channel>", "ed`it"]), max_size=3),
    grants=st.dictionaries(NAMES, st.sampled_from(["edit", "view"]), max_size=2),
    owner=NAMES, name=NAMES, tag=NAMES,
)
def test_hostile_names_never_raise_never_mention_never_markup(
    users: dict[str, str], grants: dict[str, str], owner: str, name: str, tag: str
) -> None:
    found = drift.find(_inventory(users, grants, owner, name, tag))
    assert len({i.key for i in found}) == len(found)
    # Who a line is about: a contributor whose access differs from the record, and the owner of
    # the unknown Profile and the orphan login (a contributor as recorded has no line).
    differing = {u for u in {*users, *grants} if users.get(u) != grants.get(u)}
    people = {*differing, owner} - {"alice@example.com"}
    fallback, blks = drift_blocks(found, ("a note",), _find_user)
    shown = [fallback, *(json.dumps(b.to_dict()) for b in blks)]
    for out in shown:
        # The only mention is the one email Slack resolved; nothing read from the cluster is a
        # broadcast, a link, a control mark or a bidi override.
        assert out.replace(f"<@{BOB_ID}>", "").count("<@") == 0, out
        assert "<!" not in out.replace("<!date^", "") and "<http" not in out, out
        assert not any(c in out for c in "\x1e\u202e\u2066"), out
    assert (f"<@{BOB_ID}>" in fallback) == (BOB in people)
    for item in found:
        # Placeholders name exact emails only; everything else is a quoted value.
        ids = naming.PERSON.split(item.text)[1::2]
        assert all(naming.normalize_email(i) == i for i in ids), item.text
        render.SHELL.message(item.text)
        assert drift.check_value(item.value) == (item.key, item.seen)
        for action in item.actions:
            assert drift.resolve(found, action, item.value, ADMIN, SETTINGS) is item


def _scaling(live: drift.Scaling) -> list[drift.DriftItem]:
    ws = drift.WorkspaceSeen(
        "team-g", "team-g", "alice@example.com", {}, {}, {}, {},
        (drift.RecordedNodegroup("Nodegroup/ng", "ng", drift.Scaling(0, 2), live),),
    )
    return drift.find(drift.DriftInventory(datetime(2026, 12, 5, tzinfo=UTC), (ws,)))


@settings(max_examples=25, deadline=None)
@given(shown=st.integers(3, 9), now=st.integers(3, 12))
def test_a_button_acts_only_on_the_values_its_line_showed(shown: int, now: int) -> None:
    """The weekly report showed "scales 0-3"; the maximum moved since: the old button refuses."""
    (posted,) = _scaling(drift.Scaling(0, shown))
    (current,) = _scaling(drift.Scaling(0, now))
    assert posted.key == current.key
    for action in posted.actions:
        if shown == now:
            assert drift.resolve([current], action, posted.value, ADMIN, SETTINGS) is current
        else:
            with pytest.raises(errors.NotFound, match="changed since"):
                drift.resolve([current], action, posted.value, ADMIN, SETTINGS)
    with pytest.raises(errors.InvalidInput):
        drift.resolve([current], drift.ADOPT, current.key, ADMIN, SETTINGS)  # a bare key


def _profile(live: Live, name: str, owner: str) -> None:
    live.api.create({"apiVersion": PROFILES, "kind": "Profile", "metadata": {"name": name},
                     "spec": {"owner": {"kind": "User", "name": owner}}})


def _hand_contributor(live: Live, user: str) -> None:
    # What KFAM writes for any name the dashboard accepts; its binding name folds the rest away.
    add_contributor_by_hand(live, user)


def test_hand_made_names_in_the_posted_report_and_their_buttons(world: Live) -> None:  # noqa: F811
    for user in ("o'brien@example.com", "UADMIN002", "<!channel> \u202eJane"):
        _hand_contributor(world, user)
    _profile(world, "shadow", "UADMIN002")
    _profile(world, "team-x", "Jane Doe")
    d = desk(world)
    assert d.publish() == "posted"  # the weekly report, for everyone, does not crash
    (report,) = [m for m in world.slack.messages_in(ADMIN_CHANNEL) if "Drift" in str(m.get("text"))]
    posted = json.dumps(report, ensure_ascii=False)
    assert "<@UADMIN002>" not in posted and "<!channel>" not in posted and "\u202e" not in posted
    assert "o'brien@example.com" in posted and "Jane Doe" in posted and "UADMIN002" in posted
    assert "Jane Doe" in world.text_for(ADMIN, "drift")
    assert "o'brien@example.com" in world.text_for(ALICE, "drift")  # the owner's /kf drift too

    # Each line's buttons: a clear refusal for a name the bot cannot act on, nothing filed.
    before = world.request_count()
    odd = [i for i in items(world).values() if i.what is drift.What.CONTRIBUTOR_ADDED]
    assert len(odd) == 3
    for item in odd:
        with pytest.raises(errors.InvalidInput):
            d.click(drift.ADOPT, item.value, ADMIN2, f"k-adopt-{item.key}")
        with pytest.raises(errors.InvalidInput):
            d.click(drift.RESTORE, item.value, ALICE, f"k-restore-{item.key}")
    assert world.request_count() == before


def test_adopt_refuses_a_quota_edited_again_after_the_report(world: Live, aws: AwsEnv) -> None:  # noqa: F811
    world.patch_profile_by_hand({"cpu": "99"})
    quota = f"quota:{NS}"
    shown = items(world)[quota].value
    world.patch_profile_by_hand({"cpu": "150"})  # raised again after the report was posted
    d = desk(world)
    before = world.request_count()
    with pytest.raises(errors.NotFound, match="changed since"):
        d.click(drift.ADOPT, shown, ADMIN2, "k-stale-adopt")
    with pytest.raises(errors.NotFound, match="changed since"):
        d.click(drift.RESTORE, shown, ALICE, "k-stale-restore")
    assert world.request_count() == before
    # The report as it is now adopts what it shows.
    adopted = d.click(drift.ADOPT, items(world)[quota].value, ADMIN2, "k-adopt")
    world.run()
    assert world.request(adopted.request.id).state is RequestState.SUCCEEDED
    assert quota not in items(world) and world.hard()["cpu"] == "150"
