"""The diagnostics-overhead command (python -m workbench.diagnostics.overhead) runs on a tiny config and prints its table.

No timing is asserted (timings belong to the benchmark, not to tests); what is checked is that the
command runs end to end, prints one row per objective with finite times, that the two arms trained
the same run (the signals callback does not change training), and that bad arguments are refused.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.diagnostics.overhead import main, run_overhead_benchmark

TINY = ["--steps", "4", "--reps", "2", "--warmup", "1", "--batch", "16", "--hidden", "8", "--depth", "1",
        "--log-every", "2"]


def test_command_prints_the_table(capsys):
    assert main(["--objective", "fm,lsd", *TINY]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("TrainingSignalsCallback overhead")
    assert out[1].startswith("| objective | ms/step without | ms/step with signals | overhead")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out[3:]}
    assert sorted(rows) == ["fm", "lsd"]
    for cells in rows.values():
        assert float(cells[0]) > 0 and float(cells[1]) > 0
        assert cells[2].endswith(")") and "%" in cells[2]
        assert cells[-1] == "yes"


def test_rows_are_finite_and_paired():
    (row,) = run_overhead_benchmark(["isd"], steps=4, reps=1, warmup=1, batch=16, hidden=8, depth=1, log_every=2)
    assert row.objective == "isd" and row.error is None and row.same_run
    for v in (row.base_ms, row.diag_ms, row.overhead, row.overhead_median_step):
        assert math.isfinite(v)
    assert 0 < row.callback_ms < row.diag_ms  # the callback's own time is part of a step
    # one repetition: the overhead is that repetition's ratio of the two arms' mean step times
    assert row.overhead == pytest.approx(row.diag_ms / row.base_ms - 1.0, rel=1e-12)
    assert row.overhead_q25 == row.overhead == row.overhead_q75


def test_an_objective_that_cannot_train_is_reported_not_raised(capsys):
    # "lmd" needs a teacher and the benchmark's checkerboard has no analytic flow
    assert main(["--objective", "lmd,fm", *TINY]) == 0
    out = capsys.readouterr().out
    assert "| lmd | failed: ValueError" in out and "| fm | " in out


@pytest.mark.parametrize("argv, message", [
    (["--objective", "nope"], "objectives must be names from"),
    (["--steps", "0"], "steps must be a positive int"),
    (["--steps", "5", "--warmup", "5"], "warmup must be an int in [0, steps)"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_help():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "workbench.diagnostics.overhead", "--help"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--steps", "--reps", "--objective", "--batch"):
        assert flag in done.stdout
