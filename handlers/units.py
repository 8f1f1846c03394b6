"""Durations (``--for 3d``) and Kubernetes quantities (``--memory 16Gi``) typed in chat.

Why a parser of our own instead of accepting whatever Kubernetes accepts: the values go into
Profile quotas and timers that admins approve by reading them, so each has one canonical spelling
(``16Gi``, ``500m``, ``3d``), a sane range, and a refusal message that says what *is* allowed. A
few Kubernetes forms are refused on purpose: exponents (``1e3``), the ``n``/``u`` suffixes and
signs are unusual enough in a chat command that they are more likely a typo than intended.

A plain number of bytes below 1Mi is refused too: ``--memory 16`` almost always means ``16Gi``,
and a 16-byte quota would only fail later, after approval.
"""

from __future__ import annotations

import decimal
import re
from datetime import timedelta
from decimal import Decimal

from handlers import errors, naming

MAX_DURATION = timedelta(days=366)
"""No timer runs longer than this, whatever a caller's ``maximum`` says."""
MAX_MEMORY = Decimal(64 * 1024**4)
"""64Ti in bytes."""
MAX_STORAGE = Decimal(1024**5)
"""1Pi in bytes."""
MIN_BYTES = Decimal(1024**2)
"""1Mi: smaller memory or storage quotas are a forgotten unit, not a wish."""
MAX_CPU = Decimal(4096)
"""Cores."""
MAX_GPU = 512
"""A sensible argument for ``normalize_count(..., maximum=MAX_GPU)``."""

_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
"""Seconds per unit, largest first (the order the parser expects them in)."""
_DURATION = re.compile(r"(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_DURATION_HELP = (
    "Use whole numbers with m (minutes), h (hours), d (days) or w (weeks), e.g. 30m, 12h, 3d, 1h30m"
)
_MAX_TEXT = 32

_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_MULTIPLIERS = {
    **{suffix: Decimal(1024**power) for suffix, power in _BINARY_SUFFIXES.items()},
    "m": Decimal("0.001"),
    "": Decimal(1),
    **{suffix: Decimal(1000**power) for power, suffix in enumerate("kMGTPE", start=1)},
}
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")
_EXPONENT = re.compile(r"[0-9]*\.?[0-9]+[eE][+-]?[0-9]+")
_QUANTITY_HELP = (
    "use a number with an optional unit: Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), "
    "k, M, G, T, P, E (powers of 1000) or m (thousandths), e.g. 16Gi or 500m"
)
# Spellings people bring from elsewhere (df, cloud consoles), mapped to what Kubernetes writes.
_SUFFIX_HINTS = {
    "kb": "k or Ki",
    "mb": "M or Mi",
    "gb": "G or Gi",
    "tb": "T or Ti",
    "pb": "P or Pi",
    "kib": "Ki",
    "mib": "Mi",
    "gib": "Gi",
    "tib": "Ti",
    "pib": "Pi",
    "ki": "Ki",
    "mi": "Mi",
    "gi": "Gi",
    "ti": "Ti",
    "pi": "Pi",
    "g": "G or Gi",
    "t": "T or Ti",
}
# Enough digits that no input of _MAX_TEXT characters times 1024**6 is ever rounded.
_EXACT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])


def _check_chars(text: str, what: str, field: str) -> None:
    """Refuse what no valid value contains, before any parsing, with a precise message."""
    for char in text:
        if not " " < char <= "~":
            hint = " Write it without spaces." if char == " " else ""
            raise errors.InvalidInput(
                f"{_subject(what, naming.show_value(text))} contains {naming.describe_char(char)}.{hint}",
                field=field,
            )


# --------------------------------------------------------------------------- durations


def format_duration(duration: timedelta) -> str:
    """``duration`` the way ``parse_duration`` reads it: ``3d``, ``1h30m``, ``2w``.

    Whole weeks are written in weeks, anything else in days, hours and minutes (``10d``, not
    ``1w3d``); leftover seconds are kept as ``s`` so that nothing is silently rounded away
    (microseconds are dropped). Raises ``ValueError`` for negative durations.
    """
    if duration < timedelta(0):
        raise ValueError("format_duration needs a duration of zero or more")
    seconds = duration.days * 86400 + duration.seconds
    week = _DURATION_UNITS["w"]
    if seconds and seconds % week == 0:
        return f"{seconds // week}w"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _DURATION_UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0m"


def _subject(what: str, shown: str) -> str:
    # Callers name a value either by a noun ("duration") or by its flag ("--for").
    return f"{what} {shown}" if what.startswith("-") else f"The {what} {shown}"


def _field(what: str) -> str:
    return what.lstrip("-").replace("-", "_") or "value"


def check_range(
    duration: timedelta,
    *,
    minimum: timedelta | None = None,
    maximum: timedelta | None = None,
    what: str = "duration",
    field: str | None = None,
) -> timedelta:
    """``duration`` if it is within ``minimum`` (default 1m) .. ``maximum`` (capped at 366d).

    For durations that did not come from text (settings, stored requests); the message names the
    allowed range.
    """
    low = minimum if minimum is not None else timedelta(minutes=1)
    high = min(maximum, MAX_DURATION) if maximum is not None else MAX_DURATION
    allowed = f"allowed: {format_duration(low)} to {format_duration(high)}"
    subject = _subject(what, f"`{format_duration(abs(duration))}`")
    if duration <= timedelta(0):
        raise errors.InvalidInput(
            f"{subject} must be longer than zero; {allowed}.", field=field or _field(what)
        )
    if duration < low:
        raise errors.InvalidInput(f"{subject} is too short; {allowed}.", field=field or _field(what))
    if duration > high:
        raise errors.InvalidInput(f"{subject} is too long; {allowed}.", field=field or _field(what))
    return duration


def parse_duration(
    text: str,
    *,
    minimum: timedelta | None = None,
    maximum: timedelta | None = None,
    what: str = "duration",
    field: str | None = None,
) -> timedelta:
    """Read ``30m``, ``12h``, ``3d``, ``2w`` or combinations, largest unit first (``1h30m``).

    The result is greater than zero, at least ``minimum`` (default 1m), at most ``maximum`` and
    never more than ``MAX_DURATION``; ``errors.InvalidInput`` names the allowed range otherwise.
    ``s`` (seconds) is read too, so that every ``format_duration`` output reads back.
    ``what`` is a noun ("duration") or the flag ("--for") for messages; ``field`` defaults to it.
    """
    field = field or _field(what)
    low = minimum if minimum is not None else timedelta(minutes=1)
    high = min(maximum, MAX_DURATION) if maximum is not None else MAX_DURATION
    allowed = f"allowed: {format_duration(low)} to {format_duration(high)}"
    if not text:
        raise errors.InvalidInput(f"Give a duration for {what}, such as 30m, 12h, 3d or 2w.", field=field)
    subject = _subject(what, naming.show_value(text))
    if len(text) > _MAX_TEXT:
        raise errors.InvalidInput(f"{subject} is too long. {_DURATION_HELP}.", field=field)
    _check_chars(text, what, field)
    if text.startswith("-"):
        raise errors.InvalidInput(f"{subject} is negative; {allowed}.", field=field)
    if "." in text or "," in text:
        raise errors.InvalidInput(
            f"{subject} is not a whole number; write e.g. 1h30m instead of 1.5h.", field=field
        )
    if text.isdigit():
        if int(text) == 0:
            raise errors.InvalidInput(f"{subject} is zero; {allowed}.", field=field)
        raise errors.InvalidInput(f"{subject} has no unit; add m, h, d or w, e.g. {text}d.", field=field)
    match = _DURATION.fullmatch(text)
    if match is None:
        lowercase = " Units are lowercase." if text != text.lower() else ""
        raise errors.InvalidInput(
            f"I can't read {subject[0].lower()}{subject[1:]}.{lowercase} {_DURATION_HELP} "
            "(largest unit first, each unit once).",
            field=field,
        )
    # Count in whole seconds first: timedelta(weeks=10**18) would overflow before any check.
    seconds = sum(
        int(number) * _DURATION_UNITS[unit]
        for number, unit in zip(match.groups(), _DURATION_UNITS, strict=True)
        if number is not None
    )
    if seconds == 0:
        raise errors.InvalidInput(f"{subject} is zero; {allowed}.", field=field)
    if seconds > MAX_DURATION.total_seconds():
        raise errors.InvalidInput(f"{subject} is too long; {allowed}.", field=field)
    duration = timedelta(seconds=seconds)
    if duration < low:
        raise errors.InvalidInput(f"{subject} is too short; {allowed}.", field=field)
    if duration > high:
        raise errors.InvalidInput(f"{subject} is too long; {allowed}.", field=field)
    return duration


# --------------------------------------------------------------------------- quantities


def _split_quantity(text: str, what: str, field: str) -> tuple[Decimal, str]:
    if not text:
        raise errors.InvalidInput(f"Give a value for {what}, e.g. 16Gi or 4.", field=field)
    subject = _subject(what, naming.show_value(text))
    if len(text) > _MAX_TEXT:
        raise errors.InvalidInput(f"{subject} is too long; {_QUANTITY_HELP}.", field=field)
    _check_chars(text, what, field)
    if text.startswith("-"):
        raise errors.InvalidInput(f"{subject} is negative.", field=field)
    if text.startswith("+"):
        raise errors.InvalidInput(f"Write {what} without a '+'.", field=field)
    if _EXPONENT.fullmatch(text):
        raise errors.InvalidInput(
            f"{subject} uses exponent notation, which is not supported; "
            "write the number out or use a unit (1000 or 1k, 16Gi).",
            field=field,
        )
    match = _QUANTITY.fullmatch(text)
    if match is None:
        number = re.match(r"[0-9.]*", text)
        suffix = text[number.end() :] if number else text
        hint = _SUFFIX_HINTS.get(suffix.lower())
        if hint is not None and number is not None and number.group():
            raise errors.InvalidInput(
                f"{subject} has the unit '{suffix}', which Kubernetes "
                f"does not use; write {hint} (e.g. {number.group()}{hint.split()[-1]}).",
                field=field,
            )
        raise errors.InvalidInput(
            f"I can't read {subject[0].lower()}{subject[1:]}; {_QUANTITY_HELP}.", field=field
        )
    return Decimal(match.group(1)), match.group(2) or ""


def parse_quantity(text: str, what: str, *, field: str | None = None) -> Decimal:
    """The value of a Kubernetes quantity in base units (bytes, cores, items) as an exact Decimal.

    Accepts ``123``, ``1.5``, ``500m``, binary ``Ki``..``Ei`` and decimal ``k``..``E`` suffixes;
    ``what`` names the value in messages ("memory") and is the default ``field``.
    """
    field = field or _field(what)
    number, suffix = _split_quantity(text, what, field)
    return _EXACT.multiply(number, _MULTIPLIERS[suffix])


def compare_quantities(a: str, b: str) -> int:
    """-1, 0 or 1 as quantity ``a`` is less than, equal to or greater than ``b`` (``1Gi`` > ``1G``)."""
    left, right = parse_quantity(a, "quantity"), parse_quantity(b, "quantity")
    return (left > right) - (left < right)


def _canonical(value: int, binary: bool) -> str:
    """Largest suffix of the same family that keeps an integer, as Kubernetes canonicalises."""
    base, suffixes = (
        (1024, ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))
        if binary
        else (
            1000,
            ("", "k", "M", "G", "T", "P", "E"),
        )
    )
    power = 0
    while power + 1 < len(suffixes) and value % base ** (power + 1) == 0:
        power += 1
    return f"{value // base**power}{suffixes[power]}"


def _normalize_bytes(text: str, what: str, field: str, maximum: Decimal, maximum_text: str) -> str:
    value = parse_quantity(text, what, field=field)
    subject = _subject(what, naming.show_value(text))
    if value <= 0:
        raise errors.InvalidInput(f"{subject} must be more than zero.", field=field)
    if value != value.to_integral_value():
        raise errors.InvalidInput(
            f"{subject} is not a whole number of bytes ('m' means thousandths); did you mean Mi?",
            field=field,
        )
    if value < MIN_BYTES:
        suggestion = f" Did you mean `{text}Gi`?" if text.isdigit() else ""
        raise errors.InvalidInput(
            f"{subject} is only {value} bytes; the minimum is 1Mi.{suggestion}", field=field
        )
    if value > maximum:
        raise errors.InvalidInput(f"{subject} is more than the limit of {maximum_text}.", field=field)
    _, suffix = _split_quantity(text, what, field)
    return _canonical(int(value), binary=suffix in _BINARY_SUFFIXES)


def normalize_memory(text: str, *, field: str = "memory") -> str:
    """Canonical memory quota: ``16Gi`` stays ``16Gi``, ``1024Mi`` → ``1Gi``, ``16000M`` → ``16G``.

    1Mi to 64Ti, whole bytes; the unit family (binary or decimal) of the input is kept.
    """
    return _normalize_bytes(text, "memory", field, MAX_MEMORY, "64Ti")


def normalize_storage(text: str, *, field: str = "storage") -> str:
    """Canonical storage quota (``requests.storage``), 1Mi to 1Pi; same rules as memory."""
    return _normalize_bytes(text, "storage", field, MAX_STORAGE, "1Pi")


def normalize_cpu(text: str, *, field: str = "cpu") -> str:
    """Canonical CPU quota: whole cores as ``4``, otherwise millicores as ``500m``; 1m to 4096."""
    value = parse_quantity(text, "CPU", field=field)
    shown = naming.show_value(text)
    if value <= 0:
        raise errors.InvalidInput(f"The CPU {shown} must be more than zero.", field=field)
    if value > MAX_CPU:
        raise errors.InvalidInput(f"The CPU {shown} is more than the limit of {MAX_CPU} cores.", field=field)
    millis = value * 1000
    if millis != millis.to_integral_value():
        raise errors.InvalidInput(
            f"The CPU {shown} is finer than 1m (a thousandth of a core), the smallest step.", field=field
        )
    whole_millis = int(millis)
    if whole_millis % 1000 == 0:
        return str(whole_millis // 1000)
    return f"{whole_millis}m"


def normalize_count(
    text: str, what: str, maximum: int, *, allow_zero: bool = True, field: str | None = None
) -> str:
    """A whole number from 0 (1 if not ``allow_zero``) to ``maximum``, as plain digits (``"2"``).

    For GPUs, PVCs and node counts; ``what`` is a noun ("GPUs") or the flag ("--gpu").
    """
    field = field or _field(what)
    minimum = 0 if allow_zero else 1
    rule = f"{what} takes a whole number from {minimum} to {maximum}"
    if not text:
        raise errors.InvalidInput(f"{rule}.", field=field)
    shown = naming.show_value(text)
    if len(text) > _MAX_TEXT:
        raise errors.InvalidInput(f"{rule}; {shown} is too long.", field=field)
    _check_chars(text, what, field)
    if text.startswith("-"):
        raise errors.InvalidInput(f"{rule}; {shown} is negative.", field=field)
    if not text.isdigit():
        raise errors.InvalidInput(f"{rule} (no units or decimals), not {shown}.", field=field)
    value = int(text)
    if not minimum <= value <= maximum:
        raise errors.InvalidInput(f"{rule}; {shown} is out of range.", field=field)
    return str(value)


def format_bytes(value: int) -> str:
    """A byte count for people: ``0 B``, ``512 B``, ``1.5 GiB`` (binary units, one decimal)."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
