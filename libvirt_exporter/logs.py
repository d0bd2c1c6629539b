"""Log lines in the two formats Prometheus exporters use: logfmt (the default) and JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("logfmt", "json")


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "time": _timestamp(record),
        "level": record.levelname.lower(),
        "source": record.name,
        "msg": record.getMessage(),
    }
    fields.update(getattr(record, "fields", {}))
    if record.exc_info:
        fields["err"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n'):
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """`key=value` pairs, quoted where needed, as node_exporter writes them."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log pipelines that parse JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


class FieldsLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose calls take the line's fields as keywords: `log.warning("lost", uri=uri)`."""

    _OWN = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})

    def process(
        self, msg: object, kwargs: MutableMapping[str, Any]
    ) -> tuple[object, MutableMapping[str, Any]]:
        fields = {key: kwargs.pop(key) for key in list(kwargs) if key not in self._OWN}
        kwargs["extra"] = {"fields": fields}
        return msg, kwargs


def get_logger(name: str) -> FieldsLogger:
    return FieldsLogger(logging.getLogger(name), {})


def setup_logging(level: str, fmt: str) -> None:
    """Send every log line of the process to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
