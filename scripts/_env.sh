# Shared by scripts/run.sh and scripts/test.sh: create .venv (Python >= 3.10) and install the project.
# torch is pinned to the CPU wheel through .ci/constraints-cpu.txt so a fresh install is fast;
# the package metadata itself leaves torch unpinned (a GPU user installs any CUDA build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${VENV:-.venv}
extra=${WORKBENCH_EXTRA:-}  # "dev" for the test extra; not $1, which holds the caller's arguments
stamp="$VENV/.installed${extra:+-$extra}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ .ci/constraints-cpu.txt -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c .ci/constraints-cpu.txt -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
