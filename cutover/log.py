"""Logging for operators: setup, per-move context, and redaction of secrets.

Every log record passes through `redact`, which masks passwords in DSNs
(`password=...`, `user:secret@host`) and every secret value cutover has
resolved in this process, so a secret reaches no log, no output, no ledger.
"""

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

MASK = "********"

_known_secrets: set[str] = set()

# An unquoted value ends at a space or at a quote: the one that closes the SQL literal
# around a connection string (CREATE SUBSCRIPTION ... CONNECTION '... password=x').
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)
# A scheme is short: unbounded, every letter of a long word began a scan to its end, and
# 20 kB of letters and digits (a key in an error's detail) took a second, 200 kB minutes.
_URI_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]{0,31}://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)


def register_secret(value: str) -> None:
    """Remember a resolved secret so that `redact` masks it wherever it appears."""
    if len(value) >= 3:  # masking very short strings would garble unrelated text
        _known_secrets.add(value)


def redact(text: str) -> str:
    """Mask DSN passwords and every registered secret in `text`."""
    text = _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    text = _URI_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Renders each record's message once, redacted, so no handler sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("move", "phase", "step"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def setup(*, verbose: bool, json_format: bool) -> None:
    """Configure the root logger: to stderr, redacted, text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("cutover").setLevel(logging.DEBUG if verbose else logging.WARNING)


def is_verbose() -> bool:
    """Whether `setup` was asked for every step's log (--verbose)."""
    return logging.getLogger("cutover").isEnabledFor(logging.DEBUG)


class MoveAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds the move, phase and step to every record, as fields and as a prefix."""

    def process(self, msg: str, kwargs: MutableMapping[str, Any]) -> tuple[str, Any]:
        context = dict(self.extra or {})
        kwargs.setdefault("extra", {}).update(context)
        prefix = ".".join(str(context[k]) for k in ("phase", "step") if context.get(k))
        return (f"{prefix}: {msg}" if prefix else msg), kwargs


def for_move(logger: logging.Logger, *, move: str, phase: str = "", step: str = "") -> MoveAdapter:
    """A logger adapter carrying the move's context."""
    return MoveAdapter(logger, {"move": move, "phase": phase, "step": step})
