"""Structured JSON logs: one object per line with time, level, logger, message and, where known,
message id, actor and trace id (passed through `extra=`).

A line gets a `trace_id` when it is logged inside a span, or when it is about a customer message (`message_id`
in `extra`) whose trace this process has seen (or was told with `remember_trace`). Other lines (start-up,
shutdown, background work on no message) have none: an invented id would point at no trace."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import OrderedDict

import orjson

from saga.errors import error_text  # noqa: F401  (re-exported: the logs and spans use the same text)

_FIELDS = ("message_id", "actor", "trace_id", "span_id", "session_id", "step", "attempt", "event")
_KNOWN_TRACES = 10_000  # message ids remembered per process (bounded: an LRU)


class TraceIndex:
    """message id -> trace id of the messages this process logged about inside their trace (bounded LRU)."""

    def __init__(self, size: int = _KNOWN_TRACES) -> None:
        self.size = size
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, message_id: str, trace_id: str) -> None:
        """Note the trace of a message."""
        with self._lock:
            self._ids[message_id] = trace_id
            self._ids.move_to_end(message_id)
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)

    def get(self, message_id: str) -> str | None:
        """The trace of a message, when known."""
        with self._lock:
            return self._ids.get(message_id)


TRACES = TraceIndex()


def remember_trace(message_id: str, trace_id: str | None) -> None:
    """Tell the logs a message's trace id, for lines about it logged outside its span (e.g. recovery work
    that reads the trace id from the saga log)."""
    if message_id and trace_id:
        TRACES.remember(message_id, trace_id)


class TraceContextFilter(logging.Filter):
    """Puts the trace id on every record logged inside a span (with the span id), and on records about a
    message whose trace is known; remembers the trace of every message logged inside a span."""

    def __init__(self, index: TraceIndex | None = None) -> None:
        super().__init__()
        self.index = index or TRACES

    def filter(self, record: logging.LogRecord) -> bool:
        message_id = getattr(record, "message_id", None)
        if getattr(record, "trace_id", None) is None:
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.trace_id = format(ctx.trace_id, "032x")
                record.span_id = format(ctx.span_id, "016x")
            elif isinstance(message_id, str):
                known = self.index.get(message_id)
                if known:
                    record.trace_id = known
        if isinstance(message_id, str) and isinstance(getattr(record, "trace_id", None), str):
            self.index.remember(message_id, record.trace_id)
        return True


# An email address, also as a URL path segment escapes it (`%40`). Linear time: a match can only start where no
# local-part character precedes it (so a long run of them is scanned once, not once per position), and the
# domain's labels and dots are disjoint classes (one way to split them).
EMAIL = re.compile(r"(?<![A-Za-z0-9._+-])[A-Za-z0-9._+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
REDACTED_EMAIL = "<email>"


def redact(text: str) -> str:
    """`text` with every email address replaced by `<email>`."""
    return EMAIL.sub(REDACTED_EMAIL, text) if ("@" in text or "%40" in text) else text


class RedactingFilter(logging.Filter):
    """No email address in any log line: the record's message, formatted with its args, is redacted (and the
    args dropped); so is the text of its exception (`exc_text`, which formatters reuse)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: log what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_text:
            out["exc"] = record.exc_text
        elif record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send JSON logs of this process to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContextFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
    for noisy in ("httpx", "httpcore", "LiteLLM", "litellm", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("supportmesh").info("logging ready", extra={"actor": service})
