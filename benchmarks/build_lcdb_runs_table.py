"""A public runs table for checking the predictor: the Learning Curve Database (LCDB, Mohr et al. 2022,
MIT licence, the `lcdb` package on PyPI), turned into the predictor's external-table convention.

Each row is one run: a scikit-learn learner trained on an OpenML dataset with one data split (the outer
seed). The target is its test accuracy at ``--target-size`` training examples; the features are what a
user has before paying for that size: the accuracies at the small anchors (64, 128, 256 examples:
"forecast the large sizes from the small ones"), the training accuracy and time at 256, and cheap
dataset statistics (instances, features, classes, class entropy, majority share, naive-Bayes error).
Runs that differ only in their split share a ``replicate_key``; ``dataset_family`` is the dataset,
``model`` the learner. The data stays outside the repository; this script only reshapes it.

    pip download --no-deps lcdb==0.1.0 && tar xzf lcdb-0.1.0.tar.gz
    python benchmarks/build_lcdb_runs_table.py --lcdb-dir lcdb-0.1.0/lcdb --out /tmp/lcdb_runs.csv
    kedro run --pipeline=predictor \
        --params "predictor.table_path=/tmp/lcdb_runs.csv,predictor.target_column=accuracy_at_target"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ANCHORS = (64, 128, 256)
DATASET_COLUMNS = {"NumberOfInstances": "mf_log10_instances", "NumberOfFeatures": "mf_features",
                   "NumberOfClasses": "mf_classes", "ClassEntropy": "mf_class_entropy",
                   "NaiveBayesErrRate": "mf_naive_bayes_error"}


def build(lcdb_dir: Path, target_size: int, datasets: int, learners: int, seed: int) -> pd.DataFrame:
    curves = pd.read_csv(lcdb_dir / "database-accuracy.csv")
    curves = curves[(curves["inner_seed"] == 0) & curves["size_train"].isin([*ANCHORS, target_size])]
    wide = curves.pivot_table(index=["openmlid", "learner", "outer_seed"], columns="size_train",
                              values=["score_test", "score_train", "traintime"]).dropna()
    wide.columns = [f"{name}_{size}" for name, size in wide.columns]
    wide = wide.reset_index()
    meta = pd.read_csv(lcdb_dir / "datasets.csv").set_index("openmlid")
    top_learners = wide["learner"].value_counts().index[:learners]
    wide = wide[wide["learner"].isin(top_learners) & wide["openmlid"].isin(meta.index)]
    complete = wide.groupby("openmlid")["learner"].nunique()
    eligible = complete[complete >= learners].index
    chosen = np.random.default_rng(seed).choice(sorted(eligible), size=min(datasets, len(eligible)), replace=False)
    wide = wide[wide["openmlid"].isin(chosen)]
    table = pd.DataFrame({
        "run_id": [f"{d}-{learner.split('.')[-1]}-{s}" for d, learner, s in
                   zip(wide["openmlid"], wide["learner"], wide["outer_seed"], strict=True)],
        "dataset_family": [f"{name}-{openml_id}" for name, openml_id in
                           zip(meta.loc[wide["openmlid"], "Name"], wide["openmlid"], strict=True)],
        "model": [learner.split(".")[-1] for learner in wide["learner"]],
        "accuracy_at_target": wide[f"score_test_{target_size}"].to_numpy(),
        **{f"mf_accuracy_at_{size}": wide[f"score_test_{size}"].to_numpy() for size in ANCHORS},
        "mf_train_accuracy_at_256": wide["score_train_256"].to_numpy(),
        "mf_log10_train_seconds_256": np.log10(wide["traintime_256"].clip(lower=1e-4)).to_numpy(),
    })
    table["mf_gain_128_to_256"] = table["mf_accuracy_at_256"] - table["mf_accuracy_at_128"]
    for column, name in DATASET_COLUMNS.items():
        values = meta.loc[wide["openmlid"], column].to_numpy(dtype=float)
        table[name] = np.log10(values) if name == "mf_log10_instances" else values
    table["replicate_key"] = table["dataset_family"] + "|" + table["model"]
    return table.reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lcdb-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target-size", type=int, default=1024)
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--learners", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = build(args.lcdb_dir, args.target_size, args.datasets, args.learners, args.seed)
    table.to_csv(args.out, index=False)
    print(f"{len(table)} runs, {table['dataset_family'].nunique()} datasets, {table['model'].nunique()} learners, "
          f"{table['replicate_key'].nunique()} configurations -> {args.out}")


if __name__ == "__main__":
    main()
