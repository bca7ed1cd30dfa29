"""Project conventions: dataset names follow {pipeline}.{layer}.*, every parameter is used, each concept has
one home (one model loader, nodes imported only by their own pipeline, one parameter group per file), no
long functions, and docs/architecture.md names every pipeline."""

from __future__ import annotations

import ast
import re

import yaml

from finetune_predictor.pipeline_registry import register_pipelines
from tests.conftest import PROJECT_ROOT

PIPELINES = {"preflight", "data_engineering", "sft_training", "evaluation", "sensitivity", "meta_features",
             "predictor", "predict", "forecast", "rank_datasets", "candidate_study", "archive_runs", "release"}
LAYERS = {"raw", "int", "prm", "feature", "model_input", "model", "model_output", "reporting", "tracking"}


SOURCE = PROJECT_ROOT / "src" / "finetune_predictor"


def _catalog() -> dict:
    """Catalog entries; keys starting with ``_`` are YAML anchors, not datasets."""
    entries = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    return {name: entry for name, entry in entries.items() if not name.startswith("_")}


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
    memory_only = {"preflight.int.passed"}
    for pipeline in register_pipelines().values():
        for dataset in pipeline.datasets():
            if dataset.startswith("params:") or dataset == "parameters" or dataset in memory_only:
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
    assert order.index("preflight.enforce_verdict") < order.index("data_engineering.load_task_records") < order.index(
        "sft_training.train_adapter")


# Settings whose keys are data, not names the code reads (a family -> its source corpus).
DATA_KEYED_SETTINGS = {"predictor.source_corpora"}


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in DATA_KEYED_SETTINGS:
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
    nothing reads, and the run would use the base value the user meant to change. A whole group may be set
    (``sensitivity.meta_features: null`` turns the group off)."""
    leaves = set(_leaf_keys(_parameters()))
    base = leaves | {leaf.rsplit(".", depth)[0] for leaf in leaves for depth in range(1, leaf.count(".") + 1)}
    environments = [path for path in (PROJECT_ROOT / "conf").iterdir()
                    if path.is_dir() and path.name not in {"base", "local"}]
    assert environments, "expected at least the predictor_study environment"
    for environment in environments:
        for path in sorted(environment.glob("parameters_*.yml")):
            overrides = _leaf_keys(yaml.safe_load(path.read_text()) or {})
            unknown = [key for key in overrides if key not in base]
            assert not unknown, f"{path.relative_to(PROJECT_ROOT)} sets keys absent from conf/base: {unknown}"


def _python_files() -> list:
    return sorted([*SOURCE.rglob("*.py"), *(PROJECT_ROOT / "benchmarks").rglob("*.py")])


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
    return modules


def test_nodes_are_imported_only_by_their_own_pipeline():
    """Logic shared between pipelines lives in library modules; a nodes.py is its pipeline's alone."""
    for path in _python_files():
        own = path.parent.name if path.parent.parent.name == "pipelines" else None
        for module in _imported_modules(path):
            match = re.fullmatch(r"finetune_predictor\.pipelines\.(\w+)\.nodes", module)
            assert not match or match[1] == own, f"{path.relative_to(PROJECT_ROOT)} imports {module}"


def test_causal_lm_weights_are_loaded_in_one_module():
    """One model session decides device, precision and quantization: no other module loads weights."""
    loaders = {path.relative_to(PROJECT_ROOT).as_posix() for path in _python_files()
               if re.search(r"ForCausalLM\.from_pretrained", path.read_text())}
    assert loaders == {"src/finetune_predictor/modeling/model_session.py"}


def test_each_parameter_file_holds_the_one_group_it_is_named_after():
    for path in sorted((PROJECT_ROOT / "conf/base").glob("parameters_*.yml")):
        groups = list(yaml.safe_load(path.read_text()) or {})
        assert groups == [path.stem.removeprefix("parameters_")], f"{path.name} holds {groups}"


def test_no_function_is_longer_than_sixty_lines():
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} has {length} lines"


MAX_MODULE_LINES = 400


def test_no_module_is_longer_than_four_hundred_lines():
    """A module a reader can hold in mind; a longer one is split by concern inside its sub-package."""
    long = {path.relative_to(PROJECT_ROOT).as_posix(): n for path in SOURCE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _module_name(path) -> str:
    parts = ["finetune_predictor", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports when it runs (function-local imports too; not the ones under
    ``if TYPE_CHECKING:``), with the packages whose ``__init__`` such an import executes, except its own."""
    name, found, stack = _module_name(path), set(), [ast.parse(path.read_text())]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            stack.append(child)
            targets = []
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("finetune_predictor"):
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules else child.module
                           for a in child.names]
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names if a.name.startswith("finetune_predictor")]
            for target in targets:
                parts = target.split(".")
                found |= {p for i in range(2, len(parts) + 1) if (p := ".".join(parts[:i])) in modules
                          and not (name == p or name.startswith(p + "."))}
    return found


def test_no_import_circle_between_modules():
    """Imports go one way (tasks and pipelines on top of data, modeling, tracking and prediction): a circle
    works only by the luck of import order, and splits what is one concept across its members."""
    import networkx

    paths = {_module_name(path): path for path in SOURCE.rglob("*.py")}
    graph = networkx.DiGraph([(name, target) for name, path in paths.items()
                              for target in _runtime_imports(path, set(paths))])
    circles = [sorted(c) for c in networkx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def test_architecture_doc_names_every_pipeline():
    doc = (PROJECT_ROOT / "docs/architecture.md").read_text()
    missing = [name for name in register_pipelines() if name != "__default__" and f"`{name}`" not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing}"


def _layer(entry: dict) -> str | None:
    """The kedro-viz layer an entry declares: on the entry, or on the inner dataset of an artifact wrapper
    (kedro-mlflow's wrapper keeps the inner dataset's metadata)."""
    for holder in (entry, entry.get("dataset") if isinstance(entry.get("dataset"), dict) else {}):
        layer = ((holder.get("metadata") or {}).get("kedro-viz") or {}).get("layer")
        if layer:
            return layer
    return None


# The preflight verdict gates the data: drawn in the reporting band, upstream of int, it would make the layers
# a cycle, and kedro-viz then draws none.
DRAWN_IN = {"preflight.reporting.verdict": "int"}


def test_every_catalog_entry_declares_the_kedro_viz_layer_of_its_name():
    """kedro-viz draws layers only from the catalog's metadata: a missing or different layer leaves the
    dataset outside its band (or in the wrong one)."""
    wrong = {name: _layer(entry) for name, entry in _catalog().items()
             if _layer(entry) != DRAWN_IN.get(name, name.split(".")[1])}
    assert not wrong, f"catalog entries whose kedro-viz layer is missing or differs from their name: {wrong}"


def test_each_pipeline_groups_its_nodes_in_its_namespace_without_renaming_datasets():
    """Namespaces collapse each pipeline into one group in kedro-viz; the datasets keep their catalog names
    (a Pipeline namespace would prefix them, which prefix_datasets_with_namespace=False turns off)."""
    pipelines = register_pipelines()
    names = set(pipelines) - {"__default__", "mini_test100"}
    for name in PIPELINES:
        own = {node.namespace for node in pipelines[name].nodes if node.name.split(".")[0] == name}
        assert own == {name}, f"{name}: nodes of its own in namespaces {own}"
    for pipeline in pipelines.values():
        for node in pipeline.nodes:
            assert node.namespace in names, f"{node.name} has no pipeline namespace"
            for dataset in [*node.inputs, *node.outputs]:
                parts = dataset.split(".")
                assert dataset.startswith("params:") or dataset == "parameters" or (
                    parts[0] in names and parts[1] in LAYERS), \
                    f"{node.name}: dataset {dataset} was renamed by its namespace"
    assert "data_engineering.prm.train_set" in pipelines["sft_training"].inputs()


def test_model_heavy_nodes_are_tagged_gpu_and_report_writers_reporting():
    nodes = {node.name: node.tags for pipeline in register_pipelines().values() for node in pipeline.nodes}
    for name in ("sft_training.train_adapter", "evaluation.predict_baseline", "evaluation.predict_finetuned",
                 "sensitivity.run_sensitivity_sweep", "meta_features.compute_candidate_features",
                 "rank_datasets.candidate_features"):
        assert "gpu" in nodes[name], name
    for name in ("evaluation.comparison_table", "evaluation.plot_training_loss", "sensitivity.write_reports",
                 "sensitivity.plot_accuracy_vs_size", "predictor.plot_shap_beeswarm"):
        assert "reporting" in nodes[name], name
    assert not any("gpu" in tags for name, tags in nodes.items() if name.startswith("preflight."))


def test_ui_commands_do_not_reinstall_when_pyproject_is_newer(tmp_path):
    """`make mlflow-ui` used to reinstall every package whenever pyproject.toml was newer than the venv's
    marker; UI commands now only need the venv to exist, and `make install` still reinstalls."""
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        import pytest

        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    marker = tmp_path / ".venv" / ".installed"
    marker.parent.mkdir()
    marker.touch()
    os.utime(marker, (1_000_000_000, 1_000_000_000))  # installed long before pyproject.toml was edited

    def planned(target: str) -> str:
        return subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    for target in ("mlflow-ui", "ui-check", "viz", "viz-build"):
        assert '".[dev]"' not in planned(target), target
    assert "mlflow ui" in planned("mlflow-ui") and "tests/test_ui.py" in planned("ui-check")
    assert '".[dev]"' in planned("install")
