"""Browser checks (`make ui-check`): headless Chromium, driven through its remote-debugging port, against
`mlflow ui` on a store with two finished mini_test100 runs and against `kedro viz run`, both started here on
127.0.0.1 and stopped afterwards. Screenshots go to data/08_reporting/ui/.

A one-shot `chromium --screenshot` captures the page before MLflow's charts load (spinners), so each check
waits in the page until what it looks for is there and no spinner is on screen, then takes the screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT
from tests.test_viz import QUIET, expected_layer, kedro_command, project_copy

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"),
]
websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets is not installed (dev extra)")

SHOTS = PROJECT_ROOT / "data" / "08_reporting" / "ui"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
WIDTH, HEIGHT = 1600, 1000
# Two cheap but real mini_test100 runs: the tiny random Llama, a handful of records and two optimizer steps.
RUN_PARAMS = ("data.train_per_class=4,data.test_per_class=4,data.synthetic.num_records=200,training.max_steps=2,"
              "training.per_device_train_batch_size=4,evaluation.max_new_tokens=3")
RUNS = ({"training.learning_rate": "0.002", "training.seed": "1"},
        {"training.learning_rate": "0.005", "training.seed": "2"})

# Spinners and skeletons of MLflow's design system and of any page: only those on screen count.
SPINNERS = ('[class*="spin-spinning"], [role="progressbar"], [aria-busy="true"], [class*="skeleton"], '
            '[class*="Skeleton"]')
VISIBLE_SPINNERS = f"""[...document.querySelectorAll('{SPINNERS}')].filter(e => {{ const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight && r.right > 0 && r.left < innerWidth;
}}).length"""
# Closes MLflow's assistant panel and kedro-viz's feature hints, which otherwise cover part of the page (both
# remember it in the profile's local storage).
DISMISS = """(() => { let n = 0;
  for (const close of document.querySelectorAll('.feature-hints__close')) { close.click(); n++; }
  for (const button of document.querySelectorAll('button')) {
    if (button.innerText.trim() === 'Dismiss') { button.click(); n++; } }  // kedro-viz's update reminder
  for (const button of document.querySelectorAll('button[aria-label="Close"]')) {
    for (let e = button, i = 0; e && i < 8; e = e.parentElement, i++) {
      if ((e.innerText || '').startsWith('MLflow Assistant')) { button.click(); n++; break; } } }
  return n; })()"""
COVERED = "document.querySelector('.feature-hints') !== null"
# kedro-viz's tour of new features opens a moment after the page: turned off in its stored settings up front.
# It also remembers the last pipeline shown, which can win over the one the URL names (`?pid=`): the stored
# one is set to the URL's before the page's scripts run.
NO_TOUR = """try { const settings = JSON.parse(localStorage.getItem('KedroViz') || '{}');
  settings.showFeatureHints = false;
  const pipeline = new URLSearchParams(location.search).get('pid');
  if (pipeline) settings.pipeline = {...(settings.pipeline || {}), active: pipeline};
  localStorage.setItem('KedroViz', JSON.stringify(settings)); } catch (error) {}"""


class Chromium:
    """Headless Chromium with a fresh profile, driven over the DevTools protocol (CDP) of its first page."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it chose here
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            assert time.monotonic() < deadline and self.process.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(target for target in targets if target["type"] == "page")
        self.socket = websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.exceptions: list[str] = []  # uncaught exceptions in the page, from Runtime events
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", source=NO_TOUR)
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 120) -> None:
        """Navigate, then wait until ``ready`` (a JS expression) holds and no spinner is on screen."""
        # From a blank page: a change of the #fragment alone would keep the previous view's images in the page.
        self.call("Page.navigate", url="about:blank")
        self.exceptions.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        ready = f"(() => {{ try {{ return !!({ready}); }} catch (error) {{ return false; }} }})()"  # body may be null
        while not (self.evaluate(ready) and self.evaluate(VISIBLE_SPINNERS) == 0):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"{url}: not ready after {timeout:.0f} s ({ready}); page text: {text[:1500]}")
            time.sleep(0.5)
        if self.evaluate(DISMISS):
            closing = time.monotonic() + 10  # kedro-viz's hints say goodbye for 4 s before they go
            while self.evaluate(COVERED) and time.monotonic() < closing:
                time.sleep(0.5)
        time.sleep(1)  # charts animate in once their data is there

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    """A free port below 49152: kedro-viz refuses the ephemeral range the OS hands out for port 0."""
    for port in random.Random().sample(range(20000, 49000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 20000 and 49000")


@contextlib.contextmanager
def server(command: list[str], cwd: Path, ready_url: str, log: Path, timeout: float = 180) -> Iterator[Path]:
    """A server in its own process group (it may fork workers), up once ``ready_url`` answers; stopped after."""
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **QUIET})
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{command[0]} exited: {log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(ready_url, timeout=5).status == 200:
                    break
            assert time.monotonic() < deadline, f"{ready_url} not up after {timeout:.0f} s: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


# --- the store, the servers, the browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> Path:
    """A project copy whose sqlite store holds two FINISHED mini_test100 runs with different settings."""
    project = project_copy(tmp_path_factory.mktemp("ui"))
    for settings in RUNS:
        extra = ",".join(f"{key}={value}" for key, value in settings.items())
        result = kedro_command(project, "run", "--pipeline=mini_test100", "--params",
                               f"model.name={tiny_model_dir},{RUN_PARAMS},{extra}", timeout=900)
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return project


@pytest.fixture(scope="module")
def store(project) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("finetune_predictor")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    return {"client": client, "experiment_id": experiment.experiment_id, "runs": runs}


@pytest.fixture(scope="module")
def mlflow_url(project) -> Iterator[str]:
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with server(command, project, f"{url}/health", project / "mlflow_ui.log"):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


# --- MLflow ---------------------------------------------------------------------------------------------------

RUN_LINKS = ("[...document.querySelectorAll('a[href]')]"
             ".filter(a => /\\/runs\\/[0-9a-f]{32}$/.test(a.getAttribute('href')))")
# The part of each run name a person sees in the table: the characters left of the cell's clipping edge.
VISIBLE_NAMES = RUN_LINKS + """.map(a => { const cell = a.closest('[role="gridcell"]') || a.parentElement;
  const right = Math.min(cell.getBoundingClientRect().right, a.getBoundingClientRect().right) + 0.5;
  const range = document.createRange(); const walker = document.createTreeWalker(a, NodeFilter.SHOW_TEXT);
  let seen = ''; let node; while ((node = walker.nextNode())) { for (let i = 0; i < node.length; i++) {
    range.setStart(node, i); range.setEnd(node, i + 1);
    if (range.getBoundingClientRect().right <= right) seen += node.data[i]; } }
  return {href: a.getAttribute('href'), name: a.innerText.trim(), seen: seen.trim()}; })"""


def test_runs_table_tells_the_two_runs_apart(browser, mlflow_url, store):
    from finetune_predictor.tracking import ui_url

    # The link every run prints: it must land in the model-training view, not MLflow 3.17's GenAI default.
    port = mlflow_url.rsplit(":", 1)[1]
    browser.open(ui_url(store["experiment_id"], port=port), f"{RUN_LINKS}.length >= 2")
    rows = browser.evaluate(VISIBLE_NAMES)
    shot = browser.screenshot("mlflow_runs_table")
    genai_only = [item for item in ("Judges", "Prompts", "Playground") if item in browser.text().splitlines()]
    assert not genai_only, f"the printed link opened the GenAI view ({genai_only} in the sidebar; {shot})"
    ids = {run.info.run_id for run in store["runs"]}
    assert {row["href"].rsplit("/", 1)[1] for row in rows} == ids, rows
    assert {row["name"] for row in rows} == {run.info.run_name for run in store["runs"]}
    assert len({row["name"] for row in rows}) == 2, f"the two runs share a name: {rows}"
    # Told apart at a glance: what differs is in the part of the name the column shows.
    seen = [row["seen"] for row in rows]
    assert all(seen) and len(set(seen)) == 2, f"the visible names are alike: {seen} ({shot})"


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR width


def test_run_page_shows_params_metrics_and_plots_as_images(browser, mlflow_url, store):
    run = store["runs"][-1]
    page = f"{mlflow_url}/#/experiments/{store['experiment_id']}/runs/{run.info.run_id}"
    params, metrics = run.data.params, run.data.metrics
    browser.open(page, "document.body.innerText.includes('Parameters (')")
    text = browser.text()
    browser.screenshot("mlflow_run_overview")
    assert f"Metrics ({len(metrics)})" in text and f"Parameters ({len(params)})" in text
    lines = set(text.splitlines())
    assert not set(params) - lines, f"params missing from the run page: {sorted(set(params) - lines)[:10]}"
    assert not set(metrics) - lines, f"metrics missing from the run page: {sorted(set(metrics) - lines)[:10]}"

    charts = ("[...document.querySelectorAll('.js-plotly-plot')].filter(e => { const r = e.getBoundingClientRect();"
              " return r.height > 50 && r.top < innerHeight; }).length")
    browser.open(f"{page}/model-metrics", f"{charts} >= 3")
    browser.screenshot("mlflow_run_metric_charts")

    client, local = store["client"], Path(run.info.artifact_uri.removeprefix("file://"))
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots") if a.path.endswith(".png")]
    assert {"plots/training_loss.png", "plots/confusion_matrices.png"} <= set(plots), plots
    for plot in plots:
        # The preview is an <img> of the artifact, decoded at the PNG's own width.
        image = ("[...document.querySelectorAll('img')].find(i => i.src.startsWith('blob:') && i.complete"
                 " && i.naturalWidth > 0)")
        browser.open(f"{page}/artifacts/{plot}", image)
        assert browser.evaluate(f"{image}.naturalWidth") == _png_width(local / plot), plot
        browser.screenshot("mlflow_run_" + Path(plot).stem)


def test_compare_view_shows_both_runs_metrics(browser, mlflow_url, store):
    runs = store["runs"]
    ids = json.dumps([run.info.run_id for run in runs], separators=(",", ":"))
    url = f"{mlflow_url}/#/compare-runs?runs={ids}&experiments=[\"{store['experiment_id']}\"]"
    browser.open(url, "document.body.innerText.includes('Show diff only') && document.querySelector('.js-plotly-plot')")
    text = browser.text()
    browser.screenshot("mlflow_compare")
    assert all(run.info.run_id in text and run.info.run_name in text for run in runs)
    # The metrics table: metric names, then one value per run and metric, in the order of the runs.
    section = text[text.rindex("Metrics\nShow diff only"):].split("\nArtifacts")[0].splitlines()[2:]
    names = [line for line in section if line in runs[0].data.metrics]
    values = [float(line) for line in section if re.fullmatch(r"-?[\d.]+(e[-+]?\d+)?", line) and line not in names]
    assert len(names) >= 5 and len(values) == 2 * len(names), section[:60]
    for index, name in enumerate(names):
        for run, shown in zip(runs, values[2 * index:2 * index + 2], strict=True):
            assert shown == pytest.approx(run.data.metrics[name], rel=5e-3, abs=5e-4), (name, shown)


# --- kedro viz --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def viz_url(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    pytest.importorskip("kedro_viz", reason="kedro-viz is not installed (pip install -c constraints.txt -e '.[viz]')")
    project = project_copy(tmp_path_factory.mktemp("viz-server"))
    port = free_port()
    kedro = Path(sys.executable).with_name("kedro")
    url = f"http://127.0.0.1:{port}"
    with server([str(kedro), "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)], project,
                f"{url}/api/main", project / "kedro_viz.log") as log:
        yield url, log


def _drawn(browser: Chromium, kind: str) -> list[str]:
    return browser.evaluate(f"[...document.querySelectorAll('.pipeline-node--{kind}')].map(e => e.textContent)")


def _settled(browser: Chromium, kind: str, expected: list[str], timeout: float = 30) -> list[str]:
    """The nodes drawn once the graph has settled: kedro-viz draws the pipeline it remembers first, then the
    one the URL names."""
    deadline = time.monotonic() + timeout
    while sorted(drawn := _drawn(browser, kind)) != sorted(expected) and time.monotonic() < deadline:
        time.sleep(0.5)
    return drawn


def test_kedro_viz_renders_every_pipeline_with_its_layers(browser, viz_url):
    from finetune_predictor.pipeline_registry import register_pipelines

    url, log = viz_url
    layers = "[...document.querySelectorAll('.pipeline-layer-name')].map(e => e.textContent.trim())"
    for name, pipeline in register_pipelines().items():
        data = json.loads(urllib.request.urlopen(f"{url}/api/pipelines/{name}", timeout=60).read())
        datasets = {node["name"]: node.get("layer") for node in data["nodes"] if node["type"] == "data"}
        assert datasets == {dataset: expected_layer(dataset) for dataset in datasets}, name
        selected = (f"document.querySelector('.pipeline-list .dropdown__label').textContent.trim() === '{name}'"
                    " && document.querySelectorAll('.pipeline-node').length > 0")
        browser.open(f"{url}/?pid={name}&expandAllPipelines=true", selected)
        tasks = [node.name.split(".", 1)[1] for node in pipeline.nodes]
        assert sorted(_settled(browser, "task", tasks)) == sorted(tasks), name
        assert set(browser.evaluate(layers)) == set(datasets.values()), name
        assert not browser.exceptions, f"{name}: {browser.exceptions}"
        if name == "mini_test100":
            browser.screenshot("kedro_viz_mini_test100_expanded")
            browser.open(f"{url}/?pid={name}&expandAllPipelines=false", selected)
            namespaces = sorted({node.namespace for node in pipeline.nodes})
            assert sorted(_settled(browser, "modularPipeline", namespaces)) == namespaces
            browser.screenshot("kedro_viz_mini_test100")
    output = log.read_text()
    assert "Traceback" not in output and "ERROR" not in output, output[-4000:]

