"""Slack's own pace: chat.postMessage is throttled per channel (about one a second, short bursts
allowed) with 429 and Retry-After. The fake Slack enforces a per-channel token bucket over HTTP;
the bot's ``ChannelPacer`` (what ``SlackNotifier`` posts through) must deliver a burst of 200
cards complete, each once, in the order each poster sent them, without holding up another channel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.notify import ChannelPacer
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import ADMIN_CHANNEL, REQUEST_ID, add_users, card_for, cards, settings_for, slash

pytestmark = pytest.mark.slow
CARDS = "C0CARDS01"
OTHER = "C0OTHER01"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.limit_channel_rate(per_second=100, burst=20)
        yield fake


def client(fake: FakeSlack) -> WebClient:
    # As bot.app.make_client: the SDK's own handler retries a 429 twice, then raises.
    return WebClient(
        token=BOT_TOKEN,
        base_url=fake.base_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )


def test_the_fake_throttles_a_channel_with_429_and_retry_after(fake: FakeSlack) -> None:
    # A bucket that refills one token in 1000 s: the burst of 20 goes through and the 21st is
    # refused however slowly the posts go (at 100 a second, a loaded machine posting no faster
    # than that never emptied the bucket).
    fake.limit_channel_rate(per_second=0.001, burst=20)
    web = WebClient(token=BOT_TOKEN, base_url=fake.base_url)
    with pytest.raises(SlackApiError) as refused:
        for i in range(100):
            web.chat_postMessage(channel=CARDS, text=str(i))
    assert refused.value.response.status_code == 429
    assert refused.value.response["error"] == "ratelimited"
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert len(fake.messages_in(CARDS)) == 20  # the burst went through, then the bucket was empty
    web.chat_postMessage(channel=OTHER, text="another channel has its own bucket")
    assert len(fake.messages_in(OTHER)) == 1


def test_a_burst_of_200_cards_from_10_threads_arrives_complete_and_in_order(fake: FakeSlack) -> None:
    pacer, web = ChannelPacer(), client(fake)
    errors: list[BaseException] = []

    def poster(thread: int) -> None:
        try:
            for i in range(20):
                pacer.call(CARDS, lambda i=i: web.chat_postMessage(channel=CARDS, text=f"{thread}:{i}"))
        except BaseException as exc:
            errors.append(exc)

    # The channel refuses everything until all ten threads have met a 429 (at 100 a second, a
    # loaded machine posting no faster than that was never throttled): Slack's pace is met for
    # certain, then the bucket's.
    fake.hold_channel(CARDS)
    threads = [threading.Thread(target=poster, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    fake.wait_for(lambda: fake.throttled > 0, 60, "the cards channel to refuse a post")
    fake.hold_channel(CARDS, held=False)
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    texts = [str(m["text"]) for m in fake.messages_in(CARDS)]
    assert len(texts) == 200 and len(set(texts)) == 200  # none lost, none twice
    for n in range(10):
        assert [t for t in texts if t.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(20)]
    assert fake.throttled > 0  # Slack's pace was really met, and honoured


def test_a_throttled_channel_does_not_hold_up_another(fake: FakeSlack) -> None:
    pacer, web = ChannelPacer(), client(fake)
    # The cards channel accepts nothing until the other channel's message is out: the first is
    # throttled for as long as the test needs (at 100 a second it raced the other post).
    fake.hold_channel(CARDS)
    busy = threading.Thread(
        target=lambda: [pacer.call(CARDS, lambda i=i: web.chat_postMessage(channel=CARDS, text=str(i)))
                        for i in range(60)]
    )  # fmt: skip
    busy.start()
    fake.wait_for(lambda: fake.throttled > 0, 60, "the cards channel to be throttled")
    pacer.call(OTHER, lambda: web.chat_postMessage(channel=OTHER, text="meanwhile"))
    still_posting = busy.is_alive() and fake.messages_in(CARDS) == []
    fake.hold_channel(CARDS, held=False)
    busy.join(timeout=120)
    assert still_posting  # the other channel's message went out while the first one waited
    assert len(fake.messages_in(OTHER)) == 1
    assert [m["text"] for m in fake.messages_in(CARDS)] == [str(i) for i in range(60)]


def test_the_requesters_answer_does_not_wait_behind_a_throttled_card(
    fake: FakeSlack, tmp_path: Path
) -> None:
    """The admin channel is out of tokens: the card of a new request waits for Slack's pace,
    but the person who typed the command is answered at once, and the card still arrives (paced,
    not lost)."""
    add_users(fake)
    fake.hold_channel(ADMIN_CHANNEL)  # the channel accepts nothing until the answer is in
    with running_bot(settings_for(fake, tmp_path)) as bot:
        reply = slash(bot, fake, "workspace new team-a")
        request_id = REQUEST_ID.search(reply).group(0)  # type: ignore[union-attr]
        assert "recorded" in reply
        # Answered while the card is still waiting for the channel.
        assert not [c for c in cards(fake) if request_id in c["text"]]
        fake.wait_for(lambda: fake.throttled > 0, 15, "the card to be refused by the held channel")
        assert not [c for c in cards(fake) if request_id in c["text"]]
        fake.hold_channel(ADMIN_CHANNEL, held=False)
        assert card_for(fake, request_id)
