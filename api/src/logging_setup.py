"""Loguru configuration, stdlib logging (uvicorn, SQLAlchemy) routed in.

`LOG_FORMAT=auto` (the default) writes readable console lines when stderr is a terminal and
JSON lines otherwise (containers, CI, files); `console` and `json` force one of them.

Every record carries `event_type`, `topic`, `task_id`, `user_id` and `correlation_id` keys
when code binds them; the request's correlation id is added from the request context.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from src.request_context import correlation_id

if TYPE_CHECKING:
    from loguru import Record

    from src.config import Settings

__all__ = ["configure_logging", "resolve_format"]


class _InterceptHandler(logging.Handler):
    """Sends stdlib records to loguru (the recipe from loguru's documentation)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def _add_correlation(record: Record) -> None:
    extra = record["extra"]
    if "correlation_id" not in extra:
        cid = correlation_id.get()
        if cid is not None:
            extra["correlation_id"] = cid


def _console_format(record: Record) -> str:
    """One readable line: time, level, logger, message, then the bound keys as key=value."""
    pairs = " ".join(f"{key}={value}" for key, value in record["extra"].items())
    # The pairs are data, not a template: escape loguru's braces and colour markup.
    pairs = pairs.replace("{", "{{").replace("}", "}}").replace("<", r"\<")
    return (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{name}</cyan> {message}"
        + (f" <dim>{pairs}</dim>" if pairs else "")
        + "\n{exception}"
    )


def _write_stderr(message: str) -> None:
    # Looks sys.stderr up on every write rather than binding the stream once: pytest (and
    # anything else that swaps sys.stderr) then captures the lines instead of the terminal
    # getting them.
    sys.stderr.write(message)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def resolve_format(log_format: str, stream: Any = None) -> str:
    """`json` or `console`: `auto` picks console for a terminal, JSON for anything else."""
    if log_format != "auto":
        return log_format
    return "console" if _is_terminal(stream if stream is not None else sys.stderr) else "json"


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """(Re)configures the process's logging. Logs go to stderr: stdout may carry MCP stdio."""
    logger.remove()
    target: Any = stream if stream is not None else _write_stderr
    log_format = resolve_format(settings.log_format, stream)
    logger.configure(patcher=_add_correlation)
    if log_format == "json":
        logger.add(target, level=settings.log_level, serialize=True, backtrace=False)
    else:
        colorize = _is_terminal(stream if stream is not None else sys.stderr)
        logger.add(target, level=settings.log_level, format=_console_format, colorize=colorize)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy", "alembic", "mcp"):
        std = logging.getLogger(name)
        std.handlers = [_InterceptHandler()]
        std.propagate = False
    logging.getLogger("sqlalchemy.engine").setLevel(
        logging.INFO if settings.log_sql else logging.WARNING
    )
    # httpx logs every request at INFO; the publisher logs outcomes itself.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
