"""Logging set-up: text or JSON lines, with the run id on every line of a run.

Log records never carry patient names or IDs: the code logs partner names,
run ids, counts and error classes only.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from imaging_sync.config import LoggingConfig
from imaging_sync.errors import AuditUnavailableError

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_partner: contextvars.ContextVar[str | None] = contextvars.ContextVar("partner", default=None)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextmanager
def run_context(run_id: uuid.UUID, partner: str) -> Iterator[None]:
    tokens = (_run_id.set(str(run_id)), _partner.set(partner))
    try:
        yield
    finally:
        _run_id.reset(tokens[0])
        _partner.reset(tokens[1])


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id.get()
        record.partner = getattr(record, "partner", None) or _partner.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        run_id = getattr(record, "run_id", None)
        return f"{line} [run={run_id}]" if run_id else line


# Libraries whose INFO lines are noise on an operator's console ("Context impl SQLiteImpl.",
# every S3 request): WARNING and above only, unless verbose.
QUIET_LIBRARIES = ("alembic", "botocore", "boto3", "s3transfer", "urllib3", "waitress", "werkzeug", "moto")


def configure_logging(config: LoggingConfig, *, verbose: bool = False) -> None:
    """Our log lines at ``config.level`` on stderr; ``verbose``: INFO at least, libraries' lines included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(logging.getLevelName(config.level), logging.INFO) if verbose else config.level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def describe_failure(error: BaseException) -> str:
    """A failure as a log line may show it: the error's class and, for a database error, its SQLSTATE.

    Never its message: a database error's text and context quote the
    statement's values (a patient ID from a JSONB insert's context, once).
    An :class:`AuditUnavailableError` is already in this form.
    """
    if isinstance(error, AuditUnavailableError):
        return str(error)
    described = type(error).__name__
    cause = getattr(error, "orig", None)
    if cause is not None:
        described += f" from {type(cause).__name__}"
        state = getattr(cause, "sqlstate", None) or getattr(cause, "sqlite_errorname", None)
        if state:
            described += f" ({state})"
    return described
