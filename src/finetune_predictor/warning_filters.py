"""Known-harmless library warnings, filtered once so that a run's output shows only what matters.

Installed from a ``kedro.init`` entry point (it runs before Kedro loads its plugins and parses the
command line) and again from ``settings.py`` for sessions created from Python. Each filter names the
exact message, so a new or different warning still shows.
"""

from __future__ import annotations

import logging
import re
import warnings

# (message regex, category)
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # `--pipeline` is the spelling the project's users know; kedro >= 1.4 prefers `--pipelines` and
    # both run the same code.
    (r"Option '--pipeline' is deprecated", Warning),
    # Dataset names follow {pipeline}.{layer}.{name} deliberately; pipelines are namespaced for kedro-viz with
    # prefix_datasets_with_namespace=False, so the dots are the convention, not a namespace.
    (r"One or more dataset names contain '\.' characters", UserWarning),
    # Raised by kedro and kedro-mlflow's own resolver registration, not by this project.
    (r"register_new_resolver\(\) is deprecated", UserWarning),
    # kedro-mlflow's pyfunc wrapper class is defined on import; this project logs no pyfunc model.
    (r".*Add type hints to the `predict` method", UserWarning),
    # transformers 5 renamed gradient_checkpointing; TRL still passes the old name.
    (r".*`(is_)?gradient_checkpointing` is deprecated", FutureWarning),
)


def install() -> None:
    """Ignore the warnings listed in ``HARMLESS_WARNINGS``."""
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    captured = logging.getLogger("py.warnings")
    if not any(isinstance(existing, HarmlessWarningLogFilter) for existing in captured.filters):
        captured.addFilter(HarmlessWarningLogFilter())


class HarmlessWarningLogFilter(logging.Filter):
    """Drops captured warnings (logger ``py.warnings``) that match ``HARMLESS_WARNINGS``.

    Some libraries re-enable their own warnings inside ``warnings.catch_warnings`` (mlflow shows its
    UserWarnings "once" regardless of filters), so the log record is the last place to drop them.
    Attached by ``install`` (Kedro's logging config refuses the ``()`` factory key).
    """

    _patterns = tuple(re.compile(message) for message, _ in HARMLESS_WARNINGS)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(pattern.search(text) for pattern in self._patterns)
