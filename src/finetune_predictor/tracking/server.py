"""A tracking server over HTTP: bounded retries, a server that cannot be reached, and links into its UI.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` (:func:`tracking_uri_or`, a conf resolver); MLflow's HTTP
retries are bounded (:data:`HTTP_REQUEST_DEFAULTS`); a server that stops answering becomes one
:class:`TrackingServerUnavailableError` that names it and says how to resume.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from finetune_predictor.errors import UserFacingError
from finetune_predictor.redaction import redact

# MLflow's own defaults (7 retries, backoff factor 2, 120 s per attempt) wait about four minutes on every
# request once the server is gone (about 20 on a server that hangs), and a failed run's clean-up makes a few
# more. These wait about half a minute per request on a refused connection (0 + 4 + 8 + 16 s, plus up to 1 s
# of jitter each; about 3 minutes on a hung server, 5 attempts of 30 s): long enough to ride out a server
# restart, short enough to fail clearly. The time-out is per socket operation, not per upload. A value the
# user exported wins.
HTTP_REQUEST_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                         # MLflow prints a link to every run it ends on an HTTP store, with the server URI as
                         # typed, a password in it included; the project prints its own link, redacted.
                         "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def tracking_uri_or(default: str) -> str:
    """The tracking URI of conf/base/mlflow.yml (``${tracking_uri_or:...}``): ``MLFLOW_TRACKING_URI`` when it is
    set, else ``default``. A conf/<env>/mlflow.yml that names its own URI wins over both."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def use_http_request_defaults() -> None:
    """Set the project's MLflow HTTP retry and time-out defaults where the environment sets none (in the
    driver and in every Ray worker, which may run on a machine whose environment the driver never saw)."""
    for name, value in HTTP_REQUEST_DEFAULTS.items():
        os.environ.setdefault(name, value)


class TrackingServerUnavailableError(UserFacingError, RuntimeError):
    """The tracking server did not answer after MLflow's retries. Runs that FINISHED are on the server; the
    run in flight is left RUNNING there, and the next start of the same sweep marks it FAILED and retries it."""


def server_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from or while handling) is MLflow's REST client giving up on the
    server: refused or dropped connections, time-outs, or retried 5xx answers. MLflow wraps the ``requests`` error
    in an ``MlflowException`` without ``from``, so the chain is walked through ``__context__`` too."""
    import requests

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, requests.ConnectionError | requests.Timeout | requests.exceptions.RetryError):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def tracking_server_errors(doing: str) -> Iterator[None]:
    """Turn the REST client's giving up on the tracking server, while ``doing`` something, into one
    :class:`TrackingServerUnavailableError` naming the server, what was lost and how to resume."""
    import mlflow

    try:
        yield
    except TrackingServerUnavailableError:
        raise
    except Exception as error:
        if not server_unreachable(error):
            raise
        retries = {name.removeprefix("MLFLOW_HTTP_REQUEST_").lower(): os.environ.get(name, default)
                   for name, default in HTTP_REQUEST_DEFAULTS.items()}
        raise TrackingServerUnavailableError(
            f"The MLflow tracking server at {redact(mlflow.get_tracking_uri())} did not answer ({_reason(error)}) "
            f"while {doing}",
            where="MLFLOW_TRACKING_URI, else server.mlflow_tracking_uri in conf/<env>/mlflow.yml",
            fix="start the server (again, on the same backend store and artifact root) or correct its address, then "
                "re-run the same command: what FINISHED on the server is kept, and a sweep reuses its finished "
                "configurations and retries the one in flight "
                f"(retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries['max_retries']}, "
                f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR={retries['backoff_factor']}, "
                f"MLFLOW_HTTP_REQUEST_TIMEOUT={retries['timeout']} s)") from error


def _reason(error: BaseException) -> str:
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text) or re.search(r"(Read timed out|timed out|too many \d+ "
                                                                       r"error responses)", text)
    return match.group(1).strip() if match else type(error).__name__


def ui_url(experiment_id: str, run_id: str | None = None, host: str = "127.0.0.1", port: int | str = 5000,
           server: str | None = None) -> str:
    """A link into ``mlflow ui`` (or into the UI of the tracking server at ``server``) that opens the
    model-training view. MLflow 3.17's UI takes the view from its ``workflowType`` (a browser setting, "genai"
    until changed), not from the experiment's tag, unless the link names it."""
    path = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "/runs")
    return f"{server or f'http://{host}:{port}'}/#/{path}?workflowType=machine_learning"


def tracking_server_url(uri: str | None = None) -> str | None:
    """The tracking server's address when the store is one (``http(s)://``), without any ``user:password@``:
    its UI is where a run is read; None for a local store (``mlflow ui`` opens that)."""
    from urllib.parse import urlsplit

    import mlflow

    parts = urlsplit(uri if uri is not None else mlflow.get_tracking_uri())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
