"""Durations and Kubernetes quantities typed in chat: canonical forms, ranges, hostile input."""

from __future__ import annotations

import string
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import errors, units
from tests.fakes.messages import PROPERTY, assert_safe_message, rejection, slack_text

# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("12h", timedelta(hours=12)),
        ("3d", timedelta(days=3)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m", timedelta(weeks=1, days=2, hours=3, minutes=4)),
        ("366d", timedelta(days=366)),
        ("90s", timedelta(seconds=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert units.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Give a duration"),
        ("0m", "is zero"),
        ("0h0m", "is zero"),
        ("-1d", "negative"),
        ("1.5h", "not a whole number"),
        ("1,5h", "not a whole number"),
        ("3", "has no unit"),
        ("3D", "Units are lowercase"),
        ("1H30M", "Units are lowercase"),
        ("1m1h", "largest unit first"),
        ("1h1h", "largest unit first"),
        ("1y", "can't read"),
        ("1mo", "can't read"),
        ("+1d", "can't read"),
        ("d", "can't read"),
        ("h1", "can't read"),
        ("367d", "too long; allowed: 1m to 366d"),
        ("53w", "too long"),
        ("99999999999999999999w", "too long"),
        ("9" * 40 + "d", "too long"),
        ("30s", "too short; allowed: 1m to 366d"),
        ("1h 30m", "a space"),
        ("3d\n", "line break"),
        ("\u0663d", "U+0663 ARABIC-INDIC DIGIT THREE"),
        ("\uff13d", "U+FF13"),
        ("<!here>", "&lt;"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    error = rejection(units.parse_duration, text)
    assert fragment in slack_text(error.user_message)  # as Slack shows it
    assert error.field == "duration"


def test_duration_bounds_name_the_range() -> None:
    lo, hi = timedelta(hours=1), timedelta(days=30)
    assert units.parse_duration("2d", minimum=lo, maximum=hi) == timedelta(days=2)
    short = rejection(units.parse_duration, "30m", minimum=lo, maximum=hi)
    assert "too short; allowed: 1h to 30d" in short.user_message
    long = rejection(units.parse_duration, "31d", minimum=lo, maximum=hi, what="--for")
    assert long.user_message.startswith("--for `31d` is too long; allowed: 1h to 30d")
    assert long.field == "for"


def test_maximum_never_exceeds_the_cap() -> None:
    assert "366d" in rejection(units.parse_duration, "400d", maximum=timedelta(days=1000)).user_message


@pytest.mark.parametrize(
    ("duration", "fragment"),
    [
        (timedelta(minutes=5), "too short"),
        (timedelta(days=2), "too long"),
        (timedelta(0), "longer than zero"),
    ],
)
def test_check_range(duration: timedelta, fragment: str) -> None:
    error = rejection(
        units.check_range, duration, minimum=timedelta(minutes=10), maximum=timedelta(days=1), what="--ttl"
    )
    assert fragment in error.user_message and "allowed: 10m to 1d" in error.user_message
    assert error.field == "ttl"
    assert units.check_range(timedelta(hours=2), maximum=timedelta(days=1)) == timedelta(hours=2)


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(days=3), "3d"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(weeks=2), "2w"),
        (timedelta(days=10), "10d"),
        (timedelta(days=7, hours=1), "7d1h"),
        (timedelta(0), "0m"),
        (timedelta(seconds=75), "1m15s"),
        (timedelta(seconds=1, microseconds=5), "1s"),
    ],
)
def test_format_duration(duration: timedelta, text: str) -> None:
    assert units.format_duration(duration) == text


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError, match="zero or more"):
        units.format_duration(timedelta(seconds=-1))


@settings(PROPERTY, max_examples=200)
@given(st.integers(min_value=1, max_value=366 * 86400))
def test_format_then_parse_round_trips(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    assert units.parse_duration(units.format_duration(duration), minimum=timedelta(seconds=1)) == duration


@settings(PROPERTY, max_examples=200)
@given(
    # At most 40w + 60d + 60h + 60m, which stays under the 366d cap.
    st.tuples(
        *(st.one_of(st.none(), st.integers(min_value=0, max_value=top)) for top in (40, 60, 60, 60))
    ).filter(lambda parts: any(p for p in parts))
)
def test_parse_then_format_round_trips(parts: tuple[int | None, ...]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in zip(parts, "wdhm", strict=True) if n is not None)
    duration = units.parse_duration(text)
    assert units.parse_duration(units.format_duration(duration)) == duration


@settings(PROPERTY, max_examples=200)
@given(st.text(alphabet=string.printable + "\u0663\uff13\u200b", max_size=40))
def test_any_text_is_a_duration_or_a_clean_refusal(text: str) -> None:
    try:
        duration = units.parse_duration(text)
    except errors.InvalidInput as error:
        assert_safe_message(error.user_message)
        return
    assert timedelta(minutes=1) <= duration <= units.MAX_DURATION


# --------------------------------------------------------------------------- quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        ("1.5", Decimal("1.5")),
        ("0", Decimal(0)),
        ("500m", Decimal("0.5")),
        ("1Ki", Decimal(1024)),
        ("1Mi", Decimal(1024**2)),
        ("16Gi", Decimal(16 * 1024**3)),
        ("1Ti", Decimal(1024**4)),
        ("1Pi", Decimal(1024**5)),
        ("1Ei", Decimal(2**60)),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("1G", Decimal(10**9)),
        ("1T", Decimal(10**12)),
        ("1P", Decimal(10**15)),
        ("1E", Decimal(10**18)),
        ("0.001", Decimal("0.001")),
        ("1.25Gi", Decimal(1342177280)),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert units.parse_quantity(text, "memory") == value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Give a value"),
        ("-1", "negative"),
        ("-1Gi", "negative"),
        ("+1", "without a '+'"),
        ("1e3", "exponent"),
        ("1E3", "exponent"),
        ("1.5e-3", "exponent"),
        ("16GB", "write G or Gi"),
        ("16gi", "write Gi"),
        ("16Gb", "write G or Gi"),
        ("16GiB", "write Gi"),
        ("1 Gi", "a space"),
        ("\uff11\uff16Gi", "U+FF11"),
        ("1..5", "can't read"),
        (".5", "can't read"),
        ("1.", "can't read"),
        ("Gi", "can't read"),
        ("1Gi\n", "line break"),
        ("1u", "can't read"),
        ("1n", "can't read"),
        ("9" * 40, "too long"),
        ("<!channel>", "&lt;"),
    ],
)
def test_parse_quantity_rejects(text: str, fragment: str) -> None:
    error = rejection(units.parse_quantity, text, "memory")
    assert fragment in slack_text(error.user_message)  # as Slack shows it
    assert error.field == "memory"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("16Gi", "16Gi"),
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("1.5Gi", "1536Mi"),
        ("16000M", "16G"),
        ("16G", "16G"),
        ("64Ti", "64Ti"),
        ("1Mi", "1Mi"),
        ("17179869184", "17179869184"),
        ("2000000", "2M"),
        ("0.5Ti", "512Gi"),
    ],
)
def test_normalize_memory(text: str, canonical: str) -> None:
    assert units.normalize_memory(text) == canonical


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "more than zero"),
        ("0Gi", "more than zero"),
        ("16", "Did you mean `16Gi`?"),
        ("1Ki", "minimum is 1Mi"),
        ("65Ti", "limit of 64Ti"),
        ("1Ei", "limit of 64Ti"),
        ("500m", "'m' means thousandths"),
        ("0.5", "whole number of bytes"),
        ("-1Gi", "negative"),
        ("16 Gi", "without spaces"),
    ],
)
def test_normalize_memory_rejects(text: str, fragment: str) -> None:
    error = rejection(units.normalize_memory, text)
    assert fragment in error.user_message
    assert error.field == "memory"


@pytest.mark.parametrize(("text", "canonical"), [("100Gi", "100Gi"), ("1Pi", "1Pi"), ("1024Ti", "1Pi")])
def test_normalize_storage(text: str, canonical: str) -> None:
    assert units.normalize_storage(text) == canonical


@pytest.mark.parametrize("text", ["2Pi", "1025Ti", "0", "1E"])
def test_normalize_storage_rejects(text: str) -> None:
    assert rejection(units.normalize_storage, text).field == "storage"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("4", "4"),
        ("500m", "500m"),
        ("0.5", "500m"),
        ("1000m", "1"),
        ("1.5", "1500m"),
        ("1m", "1m"),
        ("4096", "4096"),
        ("1k", "1000"),
        ("04", "4"),
    ],
)
def test_normalize_cpu(text: str, canonical: str) -> None:
    assert units.normalize_cpu(text) == canonical


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "more than zero"),
        ("0m", "more than zero"),
        ("4097", "limit of 4096"),
        ("5k", "limit of 4096"),
        ("0.0001", "finer than 1m"),
        ("-1", "negative"),
        ("1e2", "exponent"),
        ("4 ", "a space"),
        ("four", "can't read"),
    ],
)
def test_normalize_cpu_rejects(text: str, fragment: str) -> None:
    error = rejection(units.normalize_cpu, text)
    assert fragment in error.user_message
    assert error.field == "cpu"


@pytest.mark.parametrize(("text", "canonical"), [("0", "0"), ("2", "2"), ("512", "512"), ("007", "7")])
def test_normalize_count(text: str, canonical: str) -> None:
    assert units.normalize_count(text, "--gpu", units.MAX_GPU) == canonical


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "takes a whole number from 0 to 512"),
        ("-1", "negative"),
        ("1.5", "no units or decimals"),
        ("1k", "no units or decimals"),
        ("513", "out of range"),
        (" 1", "a space"),
        ("\u0663", "U+0663"),
        ("9" * 40, "too long"),
    ],
)
def test_normalize_count_rejects(text: str, fragment: str) -> None:
    error = rejection(units.normalize_count, text, "--gpu", units.MAX_GPU)
    assert fragment in error.user_message
    assert error.user_message.startswith("--gpu")
    assert error.field == "gpu"


def test_normalize_count_without_zero() -> None:
    error = rejection(units.normalize_count, "0", "PVCs", 100, allow_zero=False)
    assert "from 1 to 100" in error.user_message
    assert units.normalize_count("1", "PVCs", 100, allow_zero=False) == "1"


@pytest.mark.parametrize(
    ("a", "b", "result"),
    [("1Gi", "1G", 1), ("1000m", "1", 0), ("500m", "1", -1), ("1024Mi", "1Gi", 0), ("16Gi", "32Gi", -1)],
)
def test_compare_quantities(a: str, b: str, result: int) -> None:
    assert units.compare_quantities(a, b) == result
    assert units.compare_quantities(b, a) == -result


MEMORY = st.builds(
    lambda number, suffix: f"{number}{suffix}",
    st.integers(min_value=1, max_value=70000),
    st.sampled_from(["Mi", "Gi", "Ti", "M", "G", "T", ""]),
)


@settings(PROPERTY, max_examples=200)
@given(MEMORY)
def test_normalized_memory_keeps_the_value(text: str) -> None:
    try:
        canonical = units.normalize_memory(text)
    except errors.InvalidInput as error:
        assert_safe_message(error.user_message)
        value = units.parse_quantity(text, "memory")
        assert value < units.MIN_BYTES or value > units.MAX_MEMORY
        return
    assert units.parse_quantity(canonical, "memory") == units.parse_quantity(text, "memory")
    assert units.normalize_memory(canonical) == canonical


@settings(PROPERTY, max_examples=200)
@given(st.text(alphabet=string.printable + "\u0663\uff11\u200b", max_size=40))
def test_any_text_is_a_quantity_or_a_clean_refusal(text: str) -> None:
    for normalize in (units.normalize_memory, units.normalize_cpu, units.normalize_storage):
        try:
            normalize(text)
        except errors.InvalidInput as error:
            assert_safe_message(error.user_message)
