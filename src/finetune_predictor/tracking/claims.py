"""Who runs a run: process tags, child runs, stale and interrupted runs, and claims on a sweep configuration.

Every run carries the host and process that opened it, so a later start tells a live run from a dead one:
RUNNING runs of a dead process are marked FAILED (a killed run, or a killed sweep's child and parent); runs of a
live one (a second sweep on the same store) are left alone. Two sweeps on one store share their configurations:
one process at a time runs each (:func:`configuration_claim`, :func:`refuse_if_claimed_first`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from finetune_predictor.redaction import redact
from finetune_predictor.tracking.record import CONFIG_KEY_TAG, SKIPPED_BY_FORECAST_TAG, SWEEP_TAG
from finetune_predictor.tracking.server import server_unreachable
from finetune_predictor.tracking.store import _client

logger = logging.getLogger(__name__)

HOST_TAG, PID_TAG = "run_host", "run_pid"


# --- who runs a run: its process, and the child runs it opens -------------------------------------------------


def process_tags() -> dict[str, str]:
    """Where a run is being run (host and process id), so a later start can tell a live run from a dead one."""
    import os
    import socket

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _process_alive(pid: int, started_ms: int | None) -> bool:
    """Whether process ``pid`` exists and is the one that started the run (not a later process given the
    same id: it would have been created after the run started)."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.AccessDenied:  # it exists (another user's, or another PID namespace's): never mark it dead
        return True
    except (psutil.NoSuchProcess, ValueError):
        return False
    return started_ms is None or created <= started_ms / 1000 + 1


@contextmanager
def child_run(experiment_id: str, parent_run_id: str | None, name: str,
              tags: Mapping[str, str]) -> Iterator[str]:
    """A run nested under ``parent_run_id``; MLflow ends it FINISHED, or FAILED when the body raises
    (the error is also kept as the tag ``run_failure``). An interrupt (SIGINT/SIGTERM) ends it KILLED
    through :func:`end_runs_killed` before it gets here; that is not overwritten."""
    import mlflow

    run = None
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, parent_run_id=parent_run_id,
                              tags={**process_tags(), **tags}) as run:
            try:
                yield run.info.run_id
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                if not server_unreachable(error):  # a lost server would only make the tag wait for it again
                    _client().set_tag(run.info.run_id, "run_failure",
                                      redact(f"{type(error).__name__}: {error}")[:5000])
                raise
    except Exception as error:
        if run is not None and server_unreachable(error):
            abandon_run(run.info.run_id)
        raise


# Runs this process opened and then lost with the tracking server (left RUNNING there). This process is alive (a
# re-run in the same process, a Ray worker kept for its next task), but it runs them no more: they are not its
# live claims, and a later start marks them FAILED like a dead process's.
_ABANDONED_RUNS: set[str] = set()


def abandon_run(run_id: str | None) -> None:
    """Record that this process gave up on ``run_id`` (the tracking server stopped answering while it ran)."""
    if run_id:
        _ABANDONED_RUNS.add(run_id)


# --- runs a killed process left RUNNING -----------------------------------------------------------------------


def mark_stale_runs_failed(experiment_id: str, current_run_id: str | None = None) -> list[str]:
    """RUNNING runs of this experiment whose process is gone (same host, its process no longer running) were
    killed without closing (SIGKILL, out of memory, power loss): mark them FAILED with the reason. Runs of
    other hosts, and runs logged before runs carried their process, are left as they are (they may be alive)."""
    import socket

    client, host = _client(), socket.gethostname()
    marked = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id == current_run_id or tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if _process_alive(int(tags[PID_TAG]), run.info.start_time):
            continue
        client.set_tag(run.info.run_id, "run_failure",
                       f"interrupted: process {tags[PID_TAG]} on {host} ended without closing the run "
                       "(found RUNNING when a later run started)")
        client.set_terminated(run.info.run_id, status="FAILED")
        marked.append(run.info.run_id)
    if marked:
        logger.warning("%d run(s) left RUNNING by a killed process were marked FAILED: %s", len(marked),
                       ", ".join(marked))
    return marked


def end_runs_killed(run_ids: Sequence[str | None], reason: str) -> None:
    """End every run this process has open (the active nested runs first, then ``run_ids``) as KILLED, each
    with the tag ``run_failure``: an interrupted run is then not left RUNNING."""
    import mlflow

    client = _client()
    while (run := mlflow.active_run()) is not None:
        client.set_tag(run.info.run_id, "run_failure", reason)
        mlflow.end_run("KILLED")
    for run_id in filter(None, run_ids):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "run_failure", reason)
            client.set_terminated(run_id, status="KILLED")


def store_setup_lock(timeout_s: float = 600) -> Any:
    """A lock (a file in the model cache folder, one per machine) held while a run opens its tracking store:
    MLflow creates and migrates a new SQLite store's tables on first use and is not safe when two processes do
    it at once; held for that moment only, so runs started together open the store one after the other."""
    from filelock import FileLock

    from finetune_predictor.modeling.models import default_cache_dir

    folder = default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / "mlflow-store-setup.lock"), timeout=timeout_s)


# --- a sweep configuration's runs, and who may run it ---------------------------------------------------------


def runs_with_key(experiment_id: str, key: str) -> list[Any]:
    return _client().search_runs([experiment_id], filter_string=f"tags.{CONFIG_KEY_TAG} = '{key}'")


def _process_state(run: Any) -> bool | None:
    """Whether the process that opened ``run`` is alive; None when this host cannot tell (another host's run, or
    a run without process tags)."""
    import socket

    tags = run.data.tags
    if run.info.run_id in _ABANDONED_RUNS:
        return False
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    return _process_alive(int(tags[PID_TAG]), run.info.start_time)


def run_may_be_alive(run: Any) -> bool:
    """Whether a RUNNING run may still be running: its process is alive (a run of this host), or, for a run of
    another host (a Ray worker elsewhere), its parent run is RUNNING and its parent's process is not known dead.
    A run without process tags predates them (or was never a sweep's): it counts as interrupted."""
    if not run.data.tags.get(PID_TAG, "").isdigit():
        return False
    state = _process_state(run)
    if state is not None:
        return state
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return True
    parent = _client().get_run(parent_id)
    return parent.info.status == "RUNNING" and _process_state(parent) is not False


def mark_interrupted_runs_failed(experiment_id: str, key: str, current_parent_run_id: str | None = None) -> int:
    """A RUNNING run for this key at sweep start whose process is gone belongs to a sweep that was killed: mark
    it FAILED. One whose process is alive belongs to a sweep running beside this one: it is left alone (it was
    marked FAILED, and its parent with it, by a second sweep started on the same store).

    Its parent sweep run died with it (kedro-mlflow never got to end it), so that parent is marked FAILED
    too, unless it is the sweep now running or its process is alive.
    """
    client = _client()
    crashed = [run for run in runs_with_key(experiment_id, key)
               if run.info.status == "RUNNING" and not run_may_be_alive(run)]
    for run in crashed:
        client.set_tag(run.info.run_id, "run_failure", "interrupted: found RUNNING when the sweep restarted")
        client.set_terminated(run.info.run_id, status="FAILED")
        parent_id = run.data.tags.get("mlflow.parentRunId")
        parent = client.get_run(parent_id) if parent_id and parent_id != current_parent_run_id else None
        if parent is not None and parent.info.status == "RUNNING" and _process_state(parent) is not True:
            client.set_tag(parent_id, "run_failure",
                           f"interrupted: its child run {run.info.run_id} was found RUNNING at restart")
            client.set_terminated(parent_id, status="FAILED")
    return len(crashed)


CLAIMED = "is being run by another process"


class ConfigurationClaimedError(RuntimeError):
    """Another process runs (or has finished) this configuration: this process waits for its run instead."""


def _opened(run: Any) -> tuple[int, str]:
    return run.info.start_time or 0, run.info.run_id


def live_claim(experiment_id: str, key: str, run_id: str | None = None) -> Any | None:
    """The run that another live process opened first for configuration ``key`` (not ``run_id``), if any."""
    running = [run for run in runs_with_key(experiment_id, key) if run.info.status == "RUNNING"
               and run.info.run_id != run_id and run_may_be_alive(run)]
    return min(running, key=_opened) if running else None


@contextmanager
def configuration_claim(experiment_id: str, key: str, lock_dir: str | Path) -> Iterator[None]:
    """Held while this process runs configuration ``key``. Two sweeps on one store share its configurations:
    a lock file per key (``lock_dir``, the sweep's output folder, where the run's files go) keeps a second
    process on this machine out, and one that finds the configuration FINISHED, or RUNNING in another live
    process (another machine's), stays out too. Both raise :class:`ConfigurationClaimedError`."""
    from filelock import FileLock, Timeout

    folder = Path(lock_dir) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{key}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigurationClaimedError(f"configuration {key} {CLAIMED} on this machine") from None
    try:
        owner = finished_run(experiment_id, key) or live_claim(experiment_id, key)
        if owner is not None:
            raise ConfigurationClaimedError(f"configuration {key} {CLAIMED}: run {owner.info.run_id} "
                                            f"({owner.info.status})")
        yield
    finally:
        lock.release()


def refuse_if_claimed_first(experiment_id: str, key: str, run_id: str) -> None:
    """Inside the child run ``run_id`` just opened for ``key``: when a live run of another process opened for it
    earlier (two machines that passed :func:`configuration_claim` at once), this run ends KILLED, naming that
    one, and :class:`ConfigurationClaimedError` is raised. The earlier run keeps it: of two such runs, both
    see the other or the later one sees the earlier, so at least one runs the configuration; both only when the
    later to be stored is the earlier opened (milliseconds apart), and :func:`runs_table` then keeps one."""
    import mlflow

    owner = live_claim(experiment_id, key, run_id)
    mine = _client().get_run(run_id)
    if owner is None or _opened(owner) > _opened(mine):
        return
    reason = f"superseded: configuration {key} {CLAIMED} (run {owner.info.run_id}, opened first)"
    _client().set_tag(run_id, "run_failure", reason)
    mlflow.end_run("KILLED")
    raise ConfigurationClaimedError(reason)


def forecast_skipped_runs(experiment_id: str, sweep_name: str) -> list[Any]:
    """The child runs in which forecast-driven runs of the sweep ``sweep_name`` recorded what they skipped."""
    return _client().search_runs([experiment_id], filter_string=f"tags.{SKIPPED_BY_FORECAST_TAG} = 'true' and "
                                                                f"tags.{SWEEP_TAG} = '{sweep_name}'")


def finished_run(experiment_id: str, key: str) -> Any | None:
    runs = [run for run in runs_with_key(experiment_id, key) if run.info.status == "FINISHED"]
    return max(runs, key=lambda run: run.info.end_time or 0) if runs else None
