"""The label-learnability meta-feature alone on the candidate study's exact training sets, against the truth measured
on 2026-12-01 (README, "A candidate study": fine-tuned accuracy on the 200-example test set, seed 42). No LLM
is loaded: the training sets are rebuilt by the sweep's own code (conf/candidate_study) and the feature is the
classical classifier's grouped cross-validated balanced accuracy on each of them.

    .venv/bin/python benchmarks/label_learnability_on_candidates.py .
"""
from __future__ import annotations

import sys
from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from scipy.stats import spearmanr

from finetune_predictor.data import task_data
from finetune_predictor.pipelines.sensitivity.grid import expand_grid
from finetune_predictor.pipelines.sensitivity.runner import SweepData
from finetune_predictor.tasks.base import classification_features

TRUTH = {"easy_source": 68.0, "clean": 66.0, "dup50": 64.5, "noisy10": 60.0, "noisy30": 58.0,
         "hard_source": 51.0, "imbalanced80": 50.0}


def main(root: Path) -> None:
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env="candidate_study") as session:
        params = session.load_context().params
    sensitivity = params["sensitivity"]
    data = {**params["data"], "test_per_class": sensitivity["test_per_class"]}  # as the sweep reads it
    configs = [c for c in expand_grid(sensitivity, "m") if c.seed == 42]
    records, _rejects, read_summary = task_data.load_task_records(data)
    sweep_data = SweepData(*task_data.nested_subsets(records, read_summary, data,
                                                     sorted({c.train_per_class for c in configs}),
                                                     int(sensitivity["validation_per_class"])))
    task = sweep_data.task(data)
    sweep_data.add_sources(configs, data, task)
    rows = {}
    for config in configs:
        train = sweep_data.training_set(config, task).to_dict("records")
        rows[config.variant.name] = classification_features([task.target(r) for r in train], train)
    names = list(TRUTH)
    for feature in ("mf_label_cv_balanced_accuracy", "mf_label_balance"):
        print(feature, {name: round(rows[name][feature], 3) for name in names})
        rho = spearmanr([TRUTH[name] for name in names], [rows[name][feature] for name in names]).statistic
        best = max(names, key=lambda name: rows[name][feature])
        print(f"  Spearman vs truth {rho:.2f}; top-1 pick {best}, regret {max(TRUTH.values()) - TRUTH[best]:.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
