"""The project's install metadata stays consistent: pyproject is the one list, environment.yml
mirrors it, CI runs the README's test command, and the required top level exists."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch", "pot": "pot"}


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    proj = _pyproject()["project"]
    wanted = {}
    for spec in proj["dependencies"] + proj["optional-dependencies"]["dev"]:
        r = Requirement(spec)
        wanted[_norm(r.name)] = str(r.specifier)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    got = {}
    pip_items = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_items += dep.get("pip", [])
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep)
        name, spec = m.group(1), m.group(2).replace(" ", "")
        if name in ("python", "pip"):
            continue
        got[_norm(CONDA_NAMES.get(name, name))] = spec
    assert got == wanted, f"environment.yml and pyproject.toml disagree: {got} vs {wanted}"
    assert "-e ." in pip_items, "environment.yml must install the project itself with pip"
    py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py == ["python=3.11"]


def test_required_top_level_exists():
    for name in ("workbench", "analysis", "notebooks", "tests", "environment.yml"):
        assert (ROOT / name).exists(), name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^\s*(bash scripts/test\.sh)\s*$", readme, re.M)
    assert m, "README must give the test command 'bash scripts/test.sh' on its own line"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert re.search(r"^\s*bash scripts/run\.sh\s*$", readme, re.M), "README must give the main-job command"


def test_ci_pins_a_cpu_torch_but_metadata_does_not():
    pins = (ROOT / ".ci" / "constraints-cpu.txt").read_text().split()
    assert any(p.startswith("torch==") for p in pins)
    torch_req = [Requirement(d) for d in _pyproject()["project"]["dependencies"] if d.startswith("torch")][0]
    assert "==" not in str(torch_req.specifier), "package metadata must leave torch unpinned for CUDA users"
