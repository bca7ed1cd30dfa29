"""Project conventions: dataset names follow {pipeline}.{layer}.*, and every parameter is used."""

from __future__ import annotations

import re

import yaml

from finetune_predictor.pipeline_registry import register_pipelines
from tests.conftest import PROJECT_ROOT

PIPELINES = {"preflight", "data_engineering", "sft_training", "evaluation", "sensitivity", "meta_features",
             "predictor", "predict"}
LAYERS = {"raw", "int", "prm", "feature", "model_input", "model", "model_output", "reporting", "tracking"}


def _catalog() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())


def _parameters() -> dict:
    params = {}
    for path in sorted((PROJECT_ROOT / "conf/base").glob("parameters_*.yml")):
        params.update(yaml.safe_load(path.read_text()) or {})
    return params


def test_catalog_names_follow_pipeline_layer_convention():
    pattern = re.compile(r"^(?P<pipeline>[a-z_]+)\.(?P<layer>[a-z_]+)\.[a-z_{}]+$")
    for name in _catalog():
        match = pattern.match(name)
        assert match, f"catalog entry {name!r} is not {{pipeline}}.{{layer}}.{{name}}"
        assert match["pipeline"] in PIPELINES, name
        assert match["layer"] in LAYERS, name


def test_every_pipeline_dataset_is_in_the_catalog():
    names = set(_catalog())
    patterns = [re.compile("^" + re.escape(n).replace(r"\{plot_name\}", "[a-z_]+") + "$") for n in names if "{" in n]
    pipeline = register_pipelines()["mini_test100"]
    for dataset in pipeline.datasets():
        if dataset.startswith("params:"):
            continue
        assert dataset in names or any(p.match(dataset) for p in patterns), f"{dataset} missing from catalog"


def test_every_parameter_group_is_used_by_a_node():
    used = set()
    for pipeline in register_pipelines().values():
        used |= {d.split(":", 1)[1].split(".")[0] for d in pipeline.inputs() if d.startswith("params:")}
        for node in pipeline.nodes:
            used |= {d.split(":", 1)[1].split(".")[0] for d in node.inputs if d.startswith("params:")}
    assert set(_parameters()) == used


def test_mini_test100_composes_preflight_and_the_three_pipelines():
    pipelines = register_pipelines()
    composed = {node.name for node in pipelines["mini_test100"].nodes}
    parts = set().union(*({n.name for n in pipelines[name].nodes}
                          for name in ("preflight", "data_engineering", "sft_training", "evaluation")))
    assert composed == parts
    assert pipelines["__default__"].nodes == pipelines["mini_test100"].nodes
    order = [node.name for node in pipelines["mini_test100"].nodes]  # topological order
    assert order.index("enforce_verdict") < order.index("load_task_records") < order.index("train_adapter")


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys.extend(_leaf_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def test_every_parameter_key_is_read_by_the_code():
    """A key nobody reads is a setting the user believes in but that changes nothing."""
    source = "\n".join(path.read_text() for path in (PROJECT_ROOT / "src").rglob("*.py"))
    unread = [key for key in _leaf_keys(_parameters())
              if not re.search(rf"\b{re.escape(key.split('.')[-1])}\b", source)]
    assert not unread, f"parameters never read in src/: {unread}"


def test_environments_only_override_settings_that_exist():
    """A misspelt key in an environment (conf/<env>/parameters_*.yml) would silently add a setting that
    nothing reads, and the run would use the base value the user meant to change."""
    base = set(_leaf_keys(_parameters()))
    environments = [path for path in (PROJECT_ROOT / "conf").iterdir()
                    if path.is_dir() and path.name not in {"base", "local"}]
    assert environments, "expected at least the predictor_study environment"
    for environment in environments:
        for path in sorted(environment.glob("parameters_*.yml")):
            overrides = _leaf_keys(yaml.safe_load(path.read_text()) or {})
            unknown = [key for key in overrides if key not in base]
            assert not unknown, f"{path.relative_to(PROJECT_ROOT)} sets keys absent from conf/base: {unknown}"
