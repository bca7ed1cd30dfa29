"""One save version per Kedro session.

A session's id is the save version of every versioned dataset it writes, and Kedro makes it from the clock at
millisecond resolution: two ``kedro run`` of one project started in the same millisecond wrote to the same
version folders, and the second's first save failed ("must not exist if versioning is enabled"). The project's
settings make Kedro take its ids from :func:`unique_timestamp`, which never gives out an id it gave out before on
this machine (a ledger in the model cache folder, read and written under a lock).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

LEDGER_NAME = "kedro-session-ids"


def _parse(stamp: str) -> datetime:
    from kedro.io.core import VERSION_FORMAT

    return datetime.strptime(stamp, VERSION_FORMAT)  # %f reads Kedro's three digits as milliseconds


def _format(moment: datetime) -> str:
    from kedro.io.core import VERSION_FORMAT

    text = moment.strftime(VERSION_FORMAT)
    return text[:-4] + text[-1:]  # Kedro's own cut: milliseconds, not microseconds


def unique_timestamp(ledger: Path | None = None) -> str:
    """Kedro's version timestamp, later than every one given out before: a clash (or a clock set back) takes the
    last one plus a millisecond. Where the ledger cannot be used (a read-only cache, a lock held too long), Kedro's
    own timestamp: the clash this prevents is rare, a session that cannot start is not."""
    from filelock import FileLock, Timeout
    from kedro.io.core import generate_timestamp

    from finetune_predictor.modeling.models import default_cache_dir

    stamp = generate_timestamp()
    path = ledger or default_cache_dir() / LEDGER_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock", timeout=10):
            last = path.read_text().strip() if path.is_file() else ""
            try:
                if last and _parse(stamp) <= _parse(last):
                    stamp = _format(_parse(last) + timedelta(milliseconds=1))
            except ValueError:
                pass  # a damaged ledger is rewritten, never trusted
            path.write_text(stamp)
    except (OSError, Timeout) as error:
        logger.debug("The session-id ledger %s could not be used (%s): Kedro's own timestamp", path, error)
    return stamp


def use_unique_session_ids() -> None:
    """Make every Kedro session of this process take its id from :func:`unique_timestamp` (``settings.py``)."""
    from kedro.framework.session import session

    if not callable(getattr(session, "generate_timestamp", None)):
        raise RuntimeError("kedro.framework.session.session no longer has generate_timestamp: check how this Kedro "
                           "version makes a session's id, and update finetune_predictor.session_ids")
    session.generate_timestamp = unique_timestamp
