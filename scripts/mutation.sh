#!/usr/bin/env bash
# Mutation testing of the library's core modules with mutmut (docs/mutation_testing.md).
#
#   bash scripts/mutation.sh [AREA]      AREA: core | losses-split | losses | training | flows | all (default)
#
# Scope: pyproject.toml's [tool.mutmut] is the whole scope (AREA=all); [tool.workbench-mutation.AREA] narrows
# the files to mutate and the fast test selection. The project (workbench/, tests/, pyproject.toml) is
# copied to build/mutation/AREA/ with the area's mutmut table, so the worktree is never mutated and each
# area keeps its own results: a run stopped by the time bound resumes where it stopped next time; a change
# to the library sources (or pyproject.toml) starts the area over, a change to the tests alone reruns only
# the mutants that survived the last complete run.
#
# Environment:
#   MUTATION_TIMEOUT  wall-clock bound in seconds for the mutmut run (default 1800); the score printed is
#                     then partial and lists the mutants still unchecked.
#   MUTATION_JOBS     parallel mutant workers (default 1: the suite is CPU-bound)
#   MUTATION_PYTHON   a Python that has the dev extra installed (default: .venv set up by scripts/_env.sh)
#   MUTATION_FRESH=1  discard the area's cached results first
#   MUTATION_RECHECK=1  after a change to the tests, recheck the survivors by name even when the last run
#                     was cut short (by default an unfinished run is continued instead)
# Exit status: 0 when every checked mutant was killed, 1 when some survived (or were not covered), 2 on
# bad usage, 124 when the time bound ended the run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AREA=${1:-all}
if [ -n "${MUTATION_PYTHON:-}" ]; then
  PY=$MUTATION_PYTHON
else
  WORKBENCH_EXTRA=dev source "$ROOT/scripts/_env.sh"
  PY="$ROOT/$VENV/bin/python"
fi
MUTMUT="$(dirname "$PY")/mutmut"
[ -x "$MUTMUT" ] || { echo "mutation.sh: $MUTMUT not found: install the dev extra (pip install -e '.[dev]')" >&2; exit 2; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HYPOTHESIS_PROFILE=ci
unset PYTHONPATH  # the tests must import the mutated copy, never the worktree

cd "$ROOT"
WORK="$ROOT/build/mutation/$AREA"
mkdir -p "$WORK"
# the area's mutmut configuration: [tool.mutmut] with only_mutate / test selection from the area's table
"$PY" - "$AREA" "$WORK" <<'PYEOF' || exit 2
import hashlib, json, os, re, subprocess, sys, tomllib
from pathlib import Path

area, work = sys.argv[1], Path(sys.argv[2])
text = Path("pyproject.toml").read_text()
conf = tomllib.loads(text)["tool"]
mutmut = dict(conf["mutmut"])
if area != "all":
    areas = conf["workbench-mutation"]
    if area not in areas:
        sys.exit(f"mutation.sh: unknown area {area!r}; expected one of {['all', *areas]}")
    mutmut["only_mutate"] = areas[area]["mutate"]
    mutmut["pytest_add_cli_args_test_selection"] = areas[area]["tests"]
tests = mutmut["pytest_add_cli_args_test_selection"]
mutmut["pytest_add_cli_args_test_selection"] = [t for t in tests if Path(t).exists()]
# pyproject without the mutmut table (pytest's own settings stay), then the area's table
kept = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[)", "", text)
lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in mutmut.items()]
def listed(where):
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", where],
                         capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if Path(f).is_file()]


def fingerprint(files):
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.encode() + b"\0" + Path(f).read_bytes())
    return digest.hexdigest()


def copy(files):
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_bytes(Path(f).read_bytes())


# changed library sources (or configuration): start over; changed tests only: recheck the survivors
sources, tests = listed("workbench"), listed("tests")
stamp, tests_stamp = work / "sources.sha256", work / "tests.sha256"
recheck = work / "recheck.txt"
recheck.unlink(missing_ok=True)
if not stamp.exists() or stamp.read_text() != fingerprint(sources + ["pyproject.toml"]):
    subprocess.run(["rm", "-rf", str(work / "mutants"), str(work / "workbench"), str(work / "results.txt")], check=True)
    copy(sources)
    stamp.write_text(fingerprint(sources + ["pyproject.toml"]))
elif tests_stamp.exists() and tests_stamp.read_text() != fingerprint(tests) and (work / "results.txt").exists():
    previous = [line.strip().rsplit(": ", 1) for line in (work / "results.txt").read_text().splitlines() if ": " in line]
    if os.environ.get("MUTATION_RECHECK") == "1" or not any(st == "not checked" for _, st in previous):
        recheck.write_text("\n".join(n for n, st in previous if st in ("survived", "no tests", "suspicious")) + "\n")
subprocess.run(["rm", "-rf", str(work / "tests")], check=True)
copy(tests)
tests_stamp.write_text(fingerprint(tests))
(work / "pyproject.toml").write_text(kept + "\n".join(lines) + "\n")
PYEOF
[ "${MUTATION_FRESH:-0}" = 1 ] && rm -rf "$WORK/mutants" "$WORK/recheck.txt"
# after a change to the tests only, the survivors of the last complete run are rechecked by name
RECHECK=()
[ -s "$WORK/recheck.txt" ] && mapfile -t RECHECK <"$WORK/recheck.txt"

cd "$WORK"
start=$(date +%s)
set +e
timeout --signal=INT --kill-after=60 "${MUTATION_TIMEOUT:-1800}" "$MUTMUT" run --max-children "${MUTATION_JOBS:-1}" "${RECHECK[@]}" \
  >"$WORK/run.log" 2>&1
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
"$MUTMUT" results --all true >"$WORK/results.txt" 2>/dev/null || true
"$PY" - "$AREA" "$elapsed" "$rc" "$WORK/results.txt" <<'PYEOF'
import collections, sys

area, elapsed, rc, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
status = {}
for line in open(path):
    if ": " in line:
        name, st = line.strip().rsplit(": ", 1)
        status[name] = st
count = collections.Counter(status.values())
killed = count["killed"] + count["timeout"] + count["caught by type check"] + count["segfault"]
checked = sum(n for st, n in count.items() if st != "not checked")
print(f"mutation score [{area}]: {killed} killed / {checked} checked ({len(status)} mutants), {elapsed} s")
print("  by status: " + ", ".join(f"{st} {n}" for st, n in sorted(count.items())))
if rc == 124:
    print(f"  stopped by MUTATION_TIMEOUT: {count['not checked']} mutants unchecked; rerun to continue")
elif rc not in (0, 1):
    print(f"  mutmut exited with {rc}: see build/mutation/{area}/run.log")
for st in ("survived", "no tests", "suspicious"):
    for name in sorted(n for n, s in status.items() if s == st):
        print(f"  {st}: {name}")
print(f"  show one: cd build/mutation/{area} && mutmut show NAME")
PYEOF
[ $rc -eq 124 ] && exit 124
grep -qE ': (survived|no tests|suspicious)$' "$WORK/results.txt" && exit 1
exit 0
