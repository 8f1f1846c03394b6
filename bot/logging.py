"""Logs: JSON lines (or text) with a correlation id per Slack request, and a filter for secrets.

Why the filter sits on the handler and not in the code that logs: secrets reach log records by
paths nobody wrote on purpose (slack_sdk logs request bodies at DEBUG, an exception message can
quote a payload). So every record is scrubbed on its way out: Slack tokens, bearer tokens, JWTs,
bcrypt hashes (also base64-encoded), a Secret's ``data``, ``password=``/``token=``/``secret=``
values, and any value registered with ``forget_later`` (a password or token shown in a modal a
moment ago) are replaced by ``[redacted]``. The correlation id lives in a ``ContextVar`` set by
``bound()``; Bolt runs listeners on worker threads, so each listener binds it itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

QUIET_LOGGERS = (
    "slack_sdk",
    "slack_bolt",
    "kubernetes",
    "kubernetes.client.rest",
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "apscheduler",
)
"""Loggers never below INFO: at DEBUG they log whole HTTP bodies."""
_correlation: ContextVar[str] = ContextVar("kfbot_correlation_id", default="")
REDACTED = "[redacted]"
_PATTERNS = [
    re.compile(r"xox[abeprs]-[A-Za-z0-9-]{6,}"),
    re.compile(r"xapp-[A-Za-z0-9-]{6,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWTs (ServiceAccount tokens)
    re.compile(r"\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}"),  # bcrypt hashes
    # bcrypt hashes base64-encoded (a Dex Password's ``hash``, a Secret's data): "$2a$"/"$2b$"/"$2y$"
    # encode as JDJh/JDJi/JDJ5 followed by "J" (the second "$")
    re.compile(r"JDJ[hi5]J[A-Za-z0-9+/]{16,}={0,2}"),
    # a Secret's data: every value is base64 of something that may be secret
    re.compile(
        r"(?i)((?<![A-Za-z0-9_])[\"']?(?:data|stringData|binaryData)[\"']?\s*:\s*)"
        r"(?:\{[^{}]*\}|[\"'][A-Za-z0-9+/=]{8,}[\"'])"
    ),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:password|passwd|token|secret|audit_key|signing_secret)[\"']?\s*[:=]\s*[\"']?)"
        r"[^\s\"',&}]{3,}"
    ),
]


def new_correlation_id() -> str:
    """Short, readable and typeable: shown to users as "ref XYZ"."""
    return secrets.token_hex(4).upper()


def correlation_id() -> str:
    return _correlation.get()


@contextlib.contextmanager
def bound(cid: str) -> Iterator[str]:
    """Log everything inside with correlation id ``cid``."""
    token = _correlation.set(cid)
    try:
        yield cid
    finally:
        _correlation.reset(token)


class _Registered:
    """Secret values to scrub, kept briefly (bounded) in memory only."""

    def __init__(self, size: int = 256) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if len(value) < 6:
            return
        with self._lock:
            self._values[value] = None
            while len(self._values) > self._size:
                self._values.popitem(last=False)

    def values(self) -> list[str]:
        with self._lock:
            return list(self._values)


_registered = _Registered()


def forget_later(value: str) -> None:
    """Never let ``value`` (a secret just made) appear in any log record."""
    _registered.add(value)


def scrub(text: str) -> str:
    for value in _registered.values():
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class SecretFilter(logging.Filter):
    """Renders the message, scrubs it and any traceback, and stamps the correlation id."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = scrub(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        if not getattr(record, "correlation_id", ""):
            record.correlation_id = _correlation.get()
        return True


BOLT_LOGGERS = ("slack_bolt", "kfbot.bolt")
"""Bolt's own loggers: its components' (``slack_bolt.*``) and the framework logger ``bot.app`` gives it."""


class BoltBodyFilter(logging.Filter):
    """Keeps request bodies out of Bolt's log lines. Bolt 1.x quotes them: a failed signature check
    logs the whole body at INFO (``RequestVerification``), a middleware that skips ``next()`` logs
    it at WARNING, and its DEBUG lines quote response bodies. Bolt's records below WARNING are
    dropped (nothing else is said there), and a warning or error loses everything from the first
    ``{`` (where Bolt starts a dict's repr); the reason before it stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(BOLT_LOGGERS):
            return True
        if record.levelno < logging.WARNING:
            return False
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        cut = message.find("{")
        record.msg, record.args = (message if cut < 0 else message[:cut] + "[body omitted]"), None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        cid = getattr(record, "correlation_id", "")
        if cid:
            entry["correlation_id"] = cid
        for key in ("request_id", "event", "slack_method", "slack_error"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = ""
        return super().format(record)


def configure(*, fmt: str, level: str, provisioner: str, stream: TextIO | None = None) -> logging.Handler:
    """Send all logs through one scrubbing handler (stderr by default); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(BoltBodyFilter())
    handler.addFilter(SecretFilter())
    handler.setFormatter(JsonFormatter({"provisioner": provisioner}) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_kfbot", False):
            root.removeHandler(old)
    handler._kfbot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log whole request and response bodies at DEBUG (Slack payloads, a Secret's
    # data, a Dex Password's hash): keep them at INFO at least, whatever KFBOT_LOG_LEVEL says.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
    return handler
