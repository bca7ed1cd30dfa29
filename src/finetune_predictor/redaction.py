"""Credentials never leave the process: what a run writes or prints passes through :func:`redact` first.

Two kinds of secret can reach a run's text without anyone meaning it to:

- **a password inside a URI** (``http://user:password@host``, ``postgresql://user:password@db/mlflow``):
  MLflow's own errors name the request URL in full (``API request to http://alice:pw@host/api/2.0/... failed``),
  and a tracking URI or a data path may be printed or logged as a setting;
- **the value of a credential in the environment** (``HF_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``,
  ``AWS_SECRET_ACCESS_KEY``, ...): a library error or a debug line can quote it.

:func:`redact` masks both (the user name of a URI is kept, so the link still says who it is for). It is applied
where text leaves the process: the MLflow params and tags the run record writes (``tracking.log_params``,
``tracking.set_tags``), the sweep's failure messages, every log record (:class:`RedactSecrets` on the log
handlers, :func:`install_filter`), and the error that ends a ``kedro run`` (:func:`redact_exception`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# Names of environment variables that hold credentials: HF_TOKEN, MLFLOW_TRACKING_PASSWORD, WANDB_API_KEY,
# AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING, ...
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|CONNECTION_STRING"
                         r"|AUTH", re.IGNORECASE)
# Shorter values are not masked: a value such as "true" or "1" would blank ordinary words of every line.
MIN_SECRET_LENGTH = 8
# scheme://user:password@ (the password part: anything up to the @ that ends the user info); also with one
# slash, as a URI comes out of a file path (pathlib turns https://host into https:/host).
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*:/{1,2}[^\s/@:]*):(?P<password>[^\s/@]+)@")


def secret_values(environ: Any = None) -> list[str]:
    """The values of the environment's credentials, longest first (a value that contains another is masked
    whole)."""
    environ = os.environ if environ is None else environ
    values = {value for name, value in environ.items()
              if SECRET_NAME.search(name) and len(value.strip()) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_uri(text: str) -> str:
    """``scheme://user:password@host`` becomes ``scheme://user:***@host`` wherever it occurs in ``text``."""
    return _URI_PASSWORD.sub(lambda match: f"{match['head']}:{MASK}@", text)


def redact(value: Any) -> Any:
    """``value`` with URI passwords and the environment's credential values masked: text, and the text inside
    dicts, lists and tuples (the same structure comes back); anything else is returned as it is."""
    if isinstance(value, Mapping):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    if not isinstance(value, str):
        return value
    text = redact_uri(value)
    for secret in secret_values():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """A handler filter: each record's message (arguments merged in) and exception text are redacted. It never
    drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: the handler reports it as it would have
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            redact_exception(record.exc_info[1])
        if record.exc_text:  # formatted (and cached on the record) by a handler that came first
            record.exc_text = redact(record.exc_text)
        return True


def install_filter() -> None:
    """Attach :class:`RedactSecrets` to every handler of the root logger (once): by ``kedro run``
    (``cli.py``) and, for sessions opened elsewhere (a notebook), by ``hooks.RedactSecretsHooks``. The
    project's ``conf/logging.yml`` cannot name it: Kedro refuses a filter class outside its allow-list."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


def redact_exception(error: BaseException) -> BaseException:
    """Redact, in place, the message of ``error`` and of every error it was raised from or while handling, so
    a traceback printed from it carries no credential. Returns ``error``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with contextlib.suppress(AttributeError, TypeError):  # an extension type that keeps its args
            current.args = tuple(redact(arg) for arg in current.args)
        message = getattr(current, "message", None)
        if isinstance(message, str):  # MlflowException prints .message, not args
            with contextlib.suppress(AttributeError):  # a read-only property: its args were redacted
                current.message = redact(message)
        current = current.__cause__ or current.__context__
    return error
