"""The notebooks as a JupyterLab user gets them: plain-text (jupytext percent format) ``.py`` files that
a JupyterLab server, started with the project's Jupyter configuration (``notebooks/.jupyter``, the one
``scripts/notebooks.sh`` uses), serves as notebooks and opens as notebooks by default; each notebook
the server returns executes end to end through a kernel in SMOKE mode under a time budget.

One JupyterLab server is started headless per module on a free localhost port (with a token and an
inactivity shutdown, so it stops itself even if the test process dies) and stopped at the end. Each
notebook is executed once: the notebook JSON the server's contents API returns (what the browser
receives) is run through ``nbclient``, so that one execution covers both the server path and the
kernel path.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nbclient
import nbformat
import pytest
import tomllib
from jupyter_core.paths import jupyter_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
CONFIG_DIR = NOTEBOOK_DIR / ".jupyter"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.py"))
BUDGET_S = 240  # per notebook, SMOKE mode
START_BUDGET_S = 90  # for the server to answer
JUPYTEXT_FACTORY = "Jupytext Notebook"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


def test_no_ipynb_next_to_the_sources():
    """The .py files are the single source of truth: no converted copy is committed or left behind."""
    assert not list(NOTEBOOK_DIR.glob("*.ipynb"))


def test_notebooks_extra_is_part_of_dev():
    """`bash scripts/notebooks.sh` installs the notebooks extra; the tests (dev extra) need all of it too."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {e: {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in reqs} for e, reqs in extras.items()}
    assert {"jupyterlab", "jupytext", "ipywidgets"} <= names["notebooks"]
    assert set(extras["notebooks"]) <= set(extras["dev"]), "the dev extra must repeat the notebooks extra"


def test_the_default_viewer_names_the_factory_jupytext_registers():
    """The override names the document factory by its display name: pin that name against the installed
    jupytext front-end extension, so a rename upstream fails here instead of silently opening an editor."""
    overrides = json.loads((CONFIG_DIR / "labconfig" / "default_setting_overrides.json").read_text())
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == JUPYTEXT_FACTORY
    bundles = [p for d in jupyter_path("labextensions") for p in Path(d).glob("jupyterlab-jupytext/static/*.js")]
    assert bundles, "the jupytext JupyterLab extension is not installed"
    assert any(f'"{JUPYTEXT_FACTORY}"' in p.read_text(errors="replace") for p in bundles)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab server: ``get(path, **query)`` returns (status, body bytes)."""

    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path):
        self.url, self.token, self.proc, self.log = url, token, proc, log

    def get(self, path: str, **query) -> tuple[int, bytes]:
        q = urllib.parse.urlencode(query)
        req = urllib.request.Request(f"{self.url}{path}{'?' + q if q else ''}",
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, **query):
        status, body = self.get(path, **query)
        assert status == 200, f"GET {path} answered {status}: {body[:300]!r}\nserver log:\n{self.log_tail()}"
        return json.loads(body)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on notebooks/ with the project's configuration, isolated from the user's own Jupyter
    directories (config, data, runtime in a temporary folder), on a free port, headless."""
    home = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_CONFIG_PATH=str(CONFIG_DIR),
               JUPYTER_PLATFORM_DIRS="0", OMP_NUM_THREADS="1")
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           "--ServerApp.port_retries=0", "--allow-root", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={NOTEBOOK_DIR}",
           # stops itself if this process dies and nobody asks it anything for a while
           "--ServerApp.shutdown_no_activity_timeout=600", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + START_BUDGET_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if server.get("/api/status")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {START_BUDGET_S} s:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(home / "runtime", ignore_errors=True)


def test_lab_loads_the_jupytext_and_widget_extensions(lab):
    """The page the browser loads lists both front-end extensions, and the server's settings make
    "Jupytext Notebook" the default viewer of .py files (what a double click uses)."""
    status, html = lab.get("/lab")
    assert status == 200
    m = re.search(rb'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "the /lab page carries no page config"
    page = json.loads(m.group(1))
    federated = {e["name"] for e in page["federated_extensions"]}
    assert {"jupyterlab-jupytext", "@jupyter-widgets/jupyterlab-manager"} <= federated, federated
    settings = lab.get_json("/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    default = settings["schema"]["properties"]["defaultViewers"]["default"]
    assert default.get("python") == JUPYTEXT_FACTORY, default


def _cells_in_source(path: Path) -> list[str]:
    """Cell types read off the percent-format markers directly (independently of jupytext)."""
    return ["markdown" if "[markdown]" in line else "code"
            for line in path.read_text().splitlines() if re.match(r"^# %%( |$)", line)]


def _style_check_source() -> str:
    """A cell that reports which rcParams set by the project's style file differ in the kernel."""
    return (
        "import json, matplotlib\n"
        "from analysis.style import STYLE\n"
        "_want = matplotlib.rc_params_from_file(str(STYLE), use_default_template=False)\n"
        "print(json.dumps(sorted(k for k in _want if matplotlib.rcParams[k] != _want[k])))\n"
    )


@pytest.fixture(scope="module")
def executed(lab, tmp_path_factory):
    """path -> (notebook the server returned, executed in place; number of its own cells): each notebook
    is fetched and run once per module, whichever test asks first."""
    done = {}

    def run(path: Path):
        if path not in done:
            model = lab.get_json(f"/api/contents/{urllib.parse.quote(path.name)}", type="notebook", content="1")
            assert (model["type"], model["format"]) == ("notebook", "json"), (model["type"], model["format"])
            nb = nbformat.from_dict(model["content"])
            n_cells = len(nb.cells)
            nb.cells.append(nbformat.v4.new_code_cell(_style_check_source()))
            out = tmp_path_factory.mktemp(path.stem)
            # SMOKE mode, no MPLBACKEND: figures come out as images, as JupyterLab's inline backend shows them
            env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
            env.update(SMOKE="1", OMP_NUM_THREADS="1", WORKBENCH_OUT=str(out),
                       PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            client = nbclient.NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3", store_widget_state=True,
                                             resources={"metadata": {"path": str(out)}})
            client.execute(env=env)
            done[path] = nb, n_cells
        return done[path]

    return run


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_served_as_a_notebook_and_executes_in_smoke_mode(executed, path):
    nb, n_cells = executed(path)
    # what the server sent is the notebook the .py describes, cell for cell
    nbformat.validate(nb)
    assert [c.cell_type for c in nb.cells[:n_cells]] == _cells_in_source(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    outputs = [o for c in nb.cells[:n_cells] if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook showed no figure"
    # the figures were drawn in the project's style (every figure helper applies it)
    style_out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    assert json.loads(style_out) == [], f"rcParams differ from analysis/style.mplstyle: {style_out}"


def test_sliders_of_notebook_01_run_in_the_kernel(executed):
    """The s/t sliders: ipywidgets builds them in the kernel (widget views in the cell output, models in
    the saved widget state) and the interact callback draws the push-forward and prints the identity
    residuals into its output widget."""
    nb, _ = executed(NOTEBOOK_DIR / "01_analytic_flows_tour.py")
    cell = next(c for c in nb.cells if c.cell_type == "code" and "widgets.interact" in c.source)
    views = [o["data"][WIDGET_VIEW]["model_id"] for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
    assert views, "the slider cell displayed no widget"
    models = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert set(views) <= set(models)
    sliders = {m["state"].get("description"): m["state"] for m in models.values() if m["model_name"] == "FloatSliderModel"}
    assert {"s", "t"} <= set(sliders), sliders.keys()
    assert (sliders["s"]["value"], sliders["t"]["value"]) == (0.1, 0.8)
    assert sliders["t"]["max"] < 1, "t = 1 is singular for atoms and circles"
    shown = [o for m in models.values() if m["model_name"] == "OutputModel" for o in m["state"].get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in shown), "the slider callback drew no figure"
    text = "".join(o.get("text", "") for o in shown if o.get("output_type") == "stream")
    assert re.search(r"\d\.\d\de[-+]\d\d", text), f"the slider callback printed no residuals: {text!r}"
