"""The one exception type for errors the user can fix: bad data, bad settings, a missing model, a failed preflight.

Such an error is not a bug, so a traceback of a few hundred lines helps nobody: ``kedro run`` (through the
project's ``cli.py``) prints one block (what went wrong, where: ``file:line`` or the setting, and how to
fix it) and exits with status 1. ``kedro run --verbose`` or ``FINETUNE_PREDICTOR_VERBOSE=1`` shows the
traceback as well; any other exception is a bug and keeps its full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

VERBOSE_ENV = "FINETUNE_PREDICTOR_VERBOSE"
EXIT_CODE = 1


class UserFacingError(Exception):
    """An error the user can fix. ``what`` is the problem, ``where`` the file:line or setting, ``fix`` the remedy.

    ``str(error)`` stays the one-line message the error had before it carried these parts (``message``
    when given), so code and tests that read messages see the same text. A subclass of a built-in error
    whose ``__init__`` does not reach this one (``class E(FileNotFoundError, UserFacingError)``) renders its
    message as ``what`` and may set ``where`` and ``fix`` as class attributes.
    """

    what: str | None = None
    where: str | None = None
    fix: str | None = None

    def __init__(self, what: str, where: str | None = None, fix: str | None = None,
                 message: str | None = None) -> None:
        super().__init__(message or what)
        self.what, self.where, self.fix = what, where, fix

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments (RecordError, SettingsError): rebuild from the state, so that
        # an error raised in a worker process (ParallelRunner, Ray) reaches the parent as itself.
        return _rebuild, (type(self), self.args, self.__dict__)

    def render(self) -> str:
        """The block printed instead of a traceback."""
        lines = ["", f"finetune-predictor: {self.what or str(self)}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.fix:
            lines.append(f"  fix:   {self.fix}")
        lines.append(f"  (run with --verbose or {VERBOSE_ENV}=1 for the traceback)")
        return "\n".join(lines)


def verbose_requested() -> bool:
    """Whether the user asked for tracebacks of expected errors too."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def find_user_error(error: BaseException | None) -> UserFacingError | None:
    """The user error behind ``error``: itself, or what it was raised ``from`` (a wrapper that says so).
    An error raised while handling a user error without ``from`` is a bug of its own and is not hidden."""
    while error is not None and not isinstance(error, UserFacingError):
        error = error.__cause__
    return error


def user_error_in_flight() -> UserFacingError | None:
    """The user error being handled right now (inside an ``except`` block), if any."""
    return find_user_error(sys.exc_info()[1])


class HideUserErrorEchoes(logging.Filter):
    """Drops the log records that repeat a user error while it propagates: Kedro's ``Node ... failed with
    error`` (the whole message again: a failed preflight showed its verdict table three times) and the
    runner's ``--from-nodes`` resume suggestion (re-running from ``enforce_verdict`` would fail the same
    way). Both are logged inside ``except`` blocks, so the exception in flight tells them apart from
    anything else; bugs, and every run with ``--verbose``, keep them."""

    _ECHOES = ("failed with error", "nodes that have not run", "No nodes ran")

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose_requested() or record.levelno < logging.WARNING or user_error_in_flight() is None:
            return True
        return not any(echo in str(record.msg) for echo in self._ECHOES)


def install_log_filter() -> None:
    """Attach :class:`HideUserErrorEchoes` to every handler of the root logger (once), and the redaction of
    credentials (:func:`finetune_predictor.redaction.install_filter`)."""
    from finetune_predictor.redaction import install_filter

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, HideUserErrorEchoes) for f in handler.filters):
            handler.addFilter(HideUserErrorEchoes())
    install_filter()


def _rebuild(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> UserFacingError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error
