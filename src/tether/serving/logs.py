"""Structured JSON logs: one object per line.

Every line about a prediction carries ``model``, ``version`` and ``digest``
(pass them with ``extra=version_fields(version)``), so a log search for a
digest finds everything that version did.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .._records import ModelVersion

log = logging.getLogger("tether.serving")

#: LogRecord attributes that are not user fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def version_fields(version: ModelVersion) -> dict[str, str]:
    return {"model": version.name, "version": version.semver, "digest": f"sha:{version.digest}"}


def configure(level: str = "info", stream: Any = None) -> None:
    """Send tether.serving and uvicorn logs to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("tether.serving", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
