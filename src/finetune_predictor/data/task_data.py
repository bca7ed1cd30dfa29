"""The task's data as a library: read every record, split a fixed test set from nested training subsets,
and describe the split. The data_engineering nodes and the sensitivity sweep both call these functions:
a sweep's test set is a ``mini_test100`` run's, and its subsets are drawn by the same rule (from the pool
less the sweep's validation set, when it has one).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePath
from typing import Any

import pandas as pd

from finetune_predictor.data.records import (
    ReadResult,
    SourceSpec,
    canonical,
    content_sha256,
    read_records,
)
from finetune_predictor.data.splits import (
    InsufficientDataError,
    assert_disjoint,
    deduplicate,
    nested_balanced_subset,
    remove_test_overlap,
    select_test_groups,
    select_test_set,
)
from finetune_predictor.data.synthetic_events import SOURCE as EVENTS_SOURCE
from finetune_predictor.data.synthetic_events import iter_events
from finetune_predictor.data.synthetic_news import DEFAULT_DIFFICULTY, iter_articles
from finetune_predictor.settings_schema import SettingsError
from finetune_predictor.tasks import OPEN_TASKS, build_task, declared_labels, task_type, test_split

logger = logging.getLogger(__name__)

ORIGIN = "origin"  # "pool" (training candidates) or "test_file" (the user's fixed test file)
BUNDLED_SOURCE = "bundled-synthetic-news"
REJECT_COLUMNS = ["file", "location", "reason", "raw"]
_SPLIT_WORDS = re.compile(r"(^|[_\-.])(train|training|test|testing|valid|validation|val|dev|eval|alpaca|split)"
                          r"(?=$|[_\-.])")


def dataset_family(data: dict[str, Any]) -> str:
    """The family a run's data belongs to, for grouped splits: ``data.family`` when set; else the training
    file's stem without split words (``liar_train_alpaca.jsonl`` -> ``liar``), or its folder when the stem is
    nothing but a split word (``liar/train.tsv`` -> ``liar``); the generator's name for the bundled task
    with its difficulty. ``data/01_raw/a.jsonl`` and ``data/01_raw/b.jsonl`` are two families."""
    if data.get("family"):
        return str(data["family"])
    if not data.get("path"):
        if task_type(data) == "structured":
            return EVENTS_SOURCE
        # Each difficulty is its own corpus, so its own family.
        return f"{BUNDLED_SOURCE}-{(data.get('synthetic') or {}).get('difficulty', DEFAULT_DIFFICULTY)}"
    path = PurePath(str(data["path"]))
    stem = path.name.split(".")[0].lower()
    # A file named only by its split (LIAR's raw train.tsv) says nothing of its family: its folder does.
    return _SPLIT_WORDS.sub("", stem).strip("_-.") or path.parent.name.lower() or stem


def _read(data: dict[str, Any], path: str, labels: list[str] | None) -> ReadResult:
    return read_records(SourceSpec.from_params(data, path), labels, str(data.get("on_invalid", "error")))


def bundled_source(data: dict[str, Any]) -> str:
    """The name of the bundled generated corpus for ``data.task``."""
    return EVENTS_SOURCE if task_type(data) == "structured" else BUNDLED_SOURCE


def bundled_records(data: dict[str, Any]) -> pd.DataFrame:
    """The project's own generated corpus for the task: news articles (fake vs legitimate) for
    classification, event records for ``structured``. QA has no bundled corpus."""
    name = task_type(data)
    synthetic = data.get("synthetic") or {}
    count, seed = int(synthetic.get("num_records", 24000)), int(synthetic.get("seed", 7))
    if name == "structured":
        frame = pd.DataFrame(iter_events(count, seed))
    elif name in ("binary_classification", "multiclass_classification"):
        frame = pd.DataFrame(iter_articles(count, seed, str(synthetic.get("difficulty", DEFAULT_DIFFICULTY))))
    else:
        raise SettingsError([("data.path", f"data.task={name} has no bundled data: set data.path (for QA, SQuAD "
                                           "JSON with data.format=squad)")])
    frame["source"] = frame["group"] = bundled_source(data)
    frame["references"] = ""
    return canonical(frame)


def load_task_records(data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """All records of the task in the canonical table (with the column ``origin``), the rejected ones, and
    what reading them found. ``data.path`` null means the bundled generated task; rejects
    (``data.on_invalid: quarantine``) are returned, never dropped silently."""
    labels = declared_labels(data)
    results: dict[str, ReadResult] = {}
    if data.get("path"):
        results["train_file"] = _read(data, data["path"], labels)
        pool = results["train_file"].records.copy()
    else:
        pool = bundled_records(data)
    pool[ORIGIN] = "pool"
    frames = [pool]
    if data.get("test_path"):
        results["test_file"] = _read(data, data["test_path"], labels)
        test = results["test_file"].records.copy()
        test[ORIGIN] = "test_file"
        frames.append(test)
    rejects = [reject for result in results.values() for reject in result.rejects]
    summary = {name: result.summary() for name, result in results.items()}
    for name, result in results.items():
        _log_read(data, name, result)
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rejects, columns=REJECT_COLUMNS), summary


def _log_read(data: dict[str, Any], name: str, result: ReadResult) -> None:
    """What reading one file set aside, on the console (not only in the rejects file)."""
    setting = "data.path" if name == "train_file" else "data.test_path"
    if result.rejects:
        reasons = ", ".join(f"{kind}: {count}" for kind, count in result.summary()["rejected_by_reason"].items())
        logger.warning("%s=%s: %d record(s) quarantined (%s; the first at %s) and left out; each is listed with its "
                       "reason in the rejected records file", setting, data.get(setting.removeprefix("data.")),
                       len(result.rejects), reasons, result.rejects[0]["location"])
    if result.unmapped_labels:
        logger.info("%s: %d record(s) with raw labels outside data.label_map left out: %s", setting,
                    sum(result.unmapped_labels.values()), dict(result.unmapped_labels))


def test_set_and_pool(records: pd.DataFrame, data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The fixed test set and the training candidates: deduplicated, from training-origin records only
    (a test file's records never become candidates), and with no text shared with the test set."""
    task = build_task(data, records["output"])
    labels = task.candidates()
    seed = int(data.get("seed", 42))
    policy = str(data.get("duplicates", "drop"))
    pool, pool_dups = deduplicate(records[records[ORIGIN] == "pool"], policy)
    duplicates = {"pool": pool_dups}
    try:
        if (records[ORIGIN] == "test_file").any():
            test_file, duplicates["test_file"] = deduplicate(records[records[ORIGIN] == "test_file"], policy)
            test = select_test_set(test_file, labels, data.get("test_per_class"), seed)
        elif test_split(task, data) == "group":  # QA: whole articles go to the test side
            test, pool = select_test_groups(pool, data.get("test_per_class"), seed)
        else:
            test = select_test_set(pool, labels, data.get("test_per_class"), seed)
            pool = pool[~pool["id"].isin(set(test["id"]))]
    except InsufficientDataError as error:
        raise error.because(_duplicates_cause(duplicates.get("test_file", pool_dups), policy)) from None
    candidates = len(pool)
    pool, overlap_removed = remove_test_overlap(pool, test, str(data.get("test_overlap", "drop")))
    checks = {"duplicates": duplicates, "train_test_overlap_removed": overlap_removed}
    _log_split_removals(checks, policy, candidates)
    return canonical(test), canonical(pool), checks


def _duplicates_cause(stats: dict[str, int], policy: str) -> str:
    removed = stats.get("duplicates_removed", 0)
    return (f"{removed} duplicate record(s) were dropped first: {stats['exact_duplicates']} exact, "
            f"{stats['near_duplicates']} near, data.duplicates={policy}") if removed else ""


def _log_split_removals(checks: dict[str, Any], policy: str, candidates: int) -> None:
    for side, stats in checks["duplicates"].items():
        if stats.get("duplicates_removed"):
            logger.info("%s: %d duplicate record(s) dropped (%d exact, %d near; data.duplicates=%s)",
                        "training source" if side == "pool" else "test file", stats["duplicates_removed"],
                        stats["exact_duplicates"], stats["near_duplicates"], policy)
    if checks["train_test_overlap_removed"]:
        logger.warning("%d of %d training candidate(s) removed: their text is in the test set (data.test_overlap="
                       "drop)", checks["train_test_overlap_removed"], candidates)


def _shortage_cause(records: pd.DataFrame, pool_size: int, test: pd.DataFrame, checks: dict[str, Any],
                    data: dict[str, Any]) -> str:
    """What took the training source's records away before the training subset was drawn."""
    source = int((records[ORIGIN] == "pool").sum())
    parts = [f"the training source has {source} record(s)"]
    dups = checks["duplicates"]["pool"].get("duplicates_removed", 0)
    if dups:
        parts.append(f"{dups} dropped as duplicates (data.duplicates={data.get('duplicates', 'drop')})")
    if not (records[ORIGIN] == "test_file").any():
        parts.append(f"{len(test)} set aside for the test set (data.test_per_class={data.get('test_per_class')})")
    overlap = checks["train_test_overlap_removed"]
    if overlap:
        same = ""
        if data.get("test_path") and Path(str(data["test_path"])).resolve() == Path(str(data["path"])).resolve():
            same = " - data.test_path is the training file itself"
        elif overlap >= 0.9 * (overlap + pool_size):
            same = " - is data.test_path a copy of the training file?"
        parts.append(f"{overlap} removed because their text is in the test set (data.test_overlap=drop){same}")
    parts.append(f"{pool_size} remain as training candidates")
    return "; ".join(parts)


def split_summary(train: pd.DataFrame, test: pd.DataFrame, records: pd.DataFrame, read_summary: dict[str, Any],
                  data: dict[str, Any], checks: dict[str, Any]) -> dict[str, Any]:
    """What a split is: sources, family, sizes, label counts, duplicates and overlap handled, content hashes."""
    return {
        "source": str(data.get("path") or bundled_source(data)),
        "family": dataset_family(data),
        "test_source": str(data.get("test_path") or "held-out split of the training source"),
        "read": read_summary,
        "records_available": int((records[ORIGIN] == "pool").sum()),
        **checks,
        "train_size": len(train),
        "train_per_class": int(data["train_per_class"]),
        "test_size": len(test),
        **_label_counts(train, test, data),
        "train_sha256": content_sha256(train),
        "test_sha256": content_sha256(test),
    }


def split_headline(summary: dict[str, Any], training_summary: dict[str, Any] | None = None) -> str:
    """One line for the console: train and test sizes (by label for classification), the source, and what
    was removed on the way: duplicates, training records repeating test-set text, quarantined records, records
    over ``data.max_record_chars``, labels outside ``data.label_map``, and (after training) prompts cut to
    ``model.max_length``."""
    def sized(side: str) -> str:
        counts = summary.get(f"{side}_label_counts")
        by_label = f" ({', '.join(f'{label} {n}' for label, n in counts.items())})" if counts else ""
        # A sweep's summary describes its largest nested subset.
        name = "largest training subset" if side == "train" and "subset_sha256" in summary else side
        return f"{name} {summary[f'{side}_size']}{by_label}"

    read = list((summary.get("read") or {}).values())
    rejected = sum(r.get("records_rejected", 0) for r in read)
    too_long = sum((r.get("rejected_by_reason") or {}).get("abnormally long record", 0) for r in read)
    removed = {
        "duplicate(s)": sum(d.get("duplicates_removed", 0) for d in (summary.get("duplicates") or {}).values()),
        "repeating test-set text": summary.get("train_test_overlap_removed", 0),
        "quarantined" + (f" ({too_long} over data.max_record_chars)" if too_long else ""): rejected,
        "outside data.label_map": sum(sum((r.get("labels_dropped_by_label_map") or {}).values()) for r in read),
    }
    what = ", ".join(f"{n} {name}" for name, n in removed.items() if n) or "nothing"
    line = (f"data: {sized('train')}, {sized('test')} from {summary.get('records_available', '?')} records of "
            f"{summary.get('source')}; removed: {what}")
    if training_summary is not None:
        cut = training_summary.get("records_truncated", 0)
        line += f"; truncated: {cut} training prompt(s) cut to model.max_length"
    return line


def _label_counts(train: pd.DataFrame, test: pd.DataFrame, data: dict[str, Any]) -> dict[str, Any]:
    """Label counts of a classification task; the groups (articles) on each side of an open task."""
    if task_type(data) in OPEN_TASKS:
        return {"train_groups": sorted(train["group"].unique().tolist()),
                "test_groups": sorted(test["group"].unique().tolist())}
    return {"train_label_counts": {k: int(v) for k, v in train["output"].value_counts().items()},
            "test_label_counts": {k: int(v) for k, v in test["output"].value_counts().items()}}


def split_train_test(records: pd.DataFrame, read_summary: dict[str, Any],
                     data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A fixed balanced test set, then a balanced training subset disjoint from it.

    The test set depends only on the records and ``data.seed``, never on the training size; training
    subsets are nested (a larger one contains the smaller ones) and never share text with the test set.
    """
    test, pool, checks = test_set_and_pool(records, data)
    labels = build_task(data, records["output"]).candidates()
    try:
        train = nested_balanced_subset(pool, labels, int(data["train_per_class"]), int(data.get("seed", 42)))
    except InsufficientDataError as error:
        raise error.because(_shortage_cause(records, len(pool), test, checks, data)) from None
    train = canonical(train)
    assert_disjoint(train, test)
    return train, test, split_summary(train, test, records, read_summary, data, checks)


def nested_subsets(records: pd.DataFrame, read_summary: dict[str, Any], data: dict[str, Any], sizes: list[int],
                   validation_per_class: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                                           pd.DataFrame, dict[str, Any]]:
    """Every training size of a sweep from one test set, one validation set and one candidate pool.

    Returns the subsets as one table (column ``train_per_class`` says which subset a row belongs to;
    a record of a small subset is in every larger one), the test set, the validation set (carved from the
    training pool, disjoint from every subset and from the test set: configurations are selected on it,
    never on the test set they are reported on), the shuffled candidate pool that class-share variants
    draw from, and the summary of the largest split with every subset's hash.
    """
    test, pool, checks = test_set_and_pool(records, data)
    task = build_task(data, records["output"])
    labels = task.candidates()
    seed = int(data.get("seed", 42))
    validation = pool.head(0)
    if validation_per_class > 0 and test_split(task, data) == "group":
        # Split by article like the test set: a validation passage seen in training would flatter it.
        validation, pool = select_test_groups(pool, validation_per_class, seed + 1)
        validation = canonical(validation)
    elif validation_per_class > 0:
        validation = canonical(select_test_set(pool, labels, validation_per_class, seed + 1))
        pool = pool[~pool["id"].isin(set(validation["id"]))]
    parts, hashes = [], {}
    for size in sorted(sizes):
        try:
            train = canonical(nested_balanced_subset(pool, labels, size, seed))
        except InsufficientDataError as error:
            raise error.because(_shortage_cause(records, len(pool), test, checks, data)) from None
        assert_disjoint(train, test)
        hashes[str(size)] = content_sha256(train)
        parts.append(train.assign(train_per_class=size))
    subsets = pd.concat(parts, ignore_index=True)
    summary = split_summary(train, test, records, read_summary, {**data, "train_per_class": max(sizes)}, checks)
    summary["subset_sha256"] = hashes
    summary["validation_size"] = len(validation)
    summary["validation_sha256"] = content_sha256(validation) if len(validation) else None
    shuffled_pool = pool.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return subsets, test, validation.reset_index(drop=True), shuffled_pool, summary


def subset(subsets: pd.DataFrame, train_per_class: int) -> pd.DataFrame:
    """One training subset back out of :func:`nested_subsets`' table."""
    chosen = subsets[subsets["train_per_class"] == train_per_class]
    if chosen.empty:
        raise KeyError(f"no training subset with train_per_class={train_per_class}")
    return canonical(chosen).reset_index(drop=True)


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in key by key (nested settings such as ``synthetic`` included)."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(dict(base.get(key) or {}), value) if isinstance(value, dict) else value
    return merged


def source_subsets(data: dict[str, Any], overrides: dict[str, Any], held_out: list[pd.DataFrame],
                   labels: list[str] | None, sizes: list[int], setting: str = "source") -> pd.DataFrame:
    """Nested balanced training subsets (column ``train_per_class``) drawn from another source of the same
    task: ``data`` with ``overrides`` merged in (``{"synthetic": {"difficulty": "easy"}}``, ``{"path": ...}``),
    deduplicated, and with every held-out set's text (the sweep's test and validation sets) removed, so that
    a candidate training set from elsewhere is scored on the same test set without leaking into it."""
    from finetune_predictor.settings_schema import SettingsError, parameter_problems

    params = _merged(data, overrides)
    # A misspelt override (synthetic.dificulty) would silently draw the sweep's own source again.
    problems = parameter_problems({"data": params}, ["data"])
    if problems:
        raise SettingsError([(f"{setting}.{name.removeprefix('data.')}", f"{setting}: {message}")
                             for name, message in problems])
    params.pop("test_path", None)  # the sweep's test set stays the one fixed test set
    records, _, _ = load_task_records(params)
    pool, _ = deduplicate(records[records[ORIGIN] == "pool"], str(params.get("duplicates", "drop")))
    for frame in held_out:
        pool, _ = remove_test_overlap(pool, frame)
    unknown = sorted(set(pool["output"].astype(str)) - set(labels)) if labels else []
    if unknown:
        raise SettingsError([(setting, f"{setting}: the source {overrides} has labels {unknown} that the sweep's "
                                       f"task does not know ({labels}); map them with label_map in the source")])
    seed = int(params.get("seed", 42))
    parts = []
    for size in sorted(sizes):
        train = canonical(nested_balanced_subset(pool, labels, size, seed))
        for frame in held_out:
            assert_disjoint(train, frame)
        parts.append(train.assign(train_per_class=size))
    return pd.concat(parts, ignore_index=True)
