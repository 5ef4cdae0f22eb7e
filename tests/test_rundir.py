"""The run directory (workbench.rundir): the atomic writer under exceptions and SIGKILL, stale
temporaries, the readers' errors (each names the file) and their tolerance of torn and damaged
logs, and the checks of a run-directory argument."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.rundir import (
    RunDir,
    append_jsonl,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    check_run_dir,
    read_json,
    read_jsonl,
    rewrite_last_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
OLD = b'{"old": true}\n'


# -- the atomic writer ---------------------------------------------------------------------------
def test_atomic_write_leaves_the_old_file_when_the_writer_raises(tmp_path):
    rd = RunDir(tmp_path)
    atomic_write_bytes(rd.config, OLD)

    def half_then_fail(f):
        f.write(b'{"new": tr')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(rd.config, half_then_fail)
    assert rd.config.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # the temporary file is gone
    with pytest.raises(KeyboardInterrupt):  # also for BaseException (Ctrl-C mid-write)
        atomic_write(rd.config, lambda f: (f.write(b"x"), (_ for _ in ()).throw(KeyboardInterrupt())))
    assert rd.config.read_bytes() == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    atomic_write_json(rd.config, {"new": float("nan")})  # strict JSON: NaN becomes null
    assert json.loads(rd.config.read_text()) == {"new": None}


_CHILD = """
import sys, time
from workbench.rundir import atomic_write

def write(f):
    f.write(b'{"new": "half of it')
    f.flush()
    open(sys.argv[2], "w").close()  # tell the parent the temporary file holds a partial write
    time.sleep(60)
    f.write(b'"}')

atomic_write(sys.argv[1], write)
"""


def test_sigkill_mid_write_leaves_the_old_file_and_a_stale_temporary(tmp_path):
    rd = RunDir(tmp_path / "run")
    atomic_write_bytes(rd.config, OLD)
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(rd.config), str(ready)], env=env,
                             stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not ready.exists():
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() - t0 < 60, "the child never started writing"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert rd.config.read_bytes() == OLD
    stale = [p for p in rd.path.iterdir() if p.name != "config.json"]
    assert len(stale) == 1 and stale[0].name.startswith(".tmp-") and stale[0].read_bytes().startswith(b'{"new"')
    # temporaries in the checkpoint and diagnostics folders are stale too; other files are kept
    for folder in (rd.checkpoint_dir, rd.diagnostics):
        folder.mkdir()
        (folder / ".tmp-abc.pt").write_bytes(b"torn")
        (folder / "keep.npz").write_bytes(b"data")
    assert rd.remove_stale_temporaries() == 3
    assert sorted(p.name for p in rd.path.rglob("*") if p.is_file()) == ["config.json", "keep.npz", "keep.npz"]
    assert rd.remove_stale_temporaries() == 0


# -- read_json -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,match",
    [
        (None, "does not exist"),
        (b"\x80\x04\x95binary\xff\xfe", "not UTF-8"),
        (b'{"model": {"hidden": 3', "not valid JSON"),
        (b"[1, 2, 3]", "must hold a JSON dict, got list"),
        (b"", "not valid JSON"),
    ],
    ids=["missing", "binary", "truncated", "wrong-type", "empty"],
)
def test_read_json_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_json(path, what="config")
    assert str(path) in str(info.value) and "config" in str(info.value)
    assert info.value.__cause__ is None  # one clean message, no chained decoder traceback


def test_read_json_accepts_the_expected_types(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    assert read_json(path, expect=(dict, list)) == [1, 2]


# -- read_jsonl and the append-only logs -----------------------------------------------------------
def test_read_jsonl_drops_a_torn_last_line_silently(tmp_path, recwarn):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert not recwarn.list
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_read_jsonl_skips_garbage_in_the_middle_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\x00\xff\xfe garbage\n[1, 2]\n{"step": 2}\n')
    with pytest.warns(UserWarning, match=r"skipped 2 line\(s\)") as w:
        assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert str(path) in str(w[0].message)


def test_append_jsonl_starts_a_new_line_after_a_torn_one(tmp_path):
    path = tmp_path / "sessions.jsonl"
    append_jsonl(path, {"start_step": 0})
    with open(path, "a") as f:
        f.write('{"start_step": 5, "dev')  # a crash mid-append
    append_jsonl(path, {"start_step": 5, "x": float("inf")})
    with pytest.warns(UserWarning, match="skipped 1"):
        assert read_jsonl(path) == [{"start_step": 0}, {"start_step": 5, "x": None}]
    with pytest.warns(UserWarning, match="skipped 1"):  # the rewrite drops the damaged line
        rewrite_last_jsonl(path, {"end_step": 9, "status": "completed"})
    assert read_jsonl(path) == [{"start_step": 0}, {"start_step": 5, "x": None, "end_step": 9, "status": "completed"}]


# -- check_run_dir ---------------------------------------------------------------------------------
def test_check_run_dir_refuses_empty_files_and_uncreatable_paths(tmp_path):
    with pytest.raises(ValueError, match="--run-dir must name a directory, got ''"):
        check_run_dir("", "--run-dir")
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    with pytest.raises(ValueError, match=f"run_dir must be a directory, but {a_file} is a file"):
        check_run_dir(a_file)
    under_a_file = a_file / "run"  # tests run as root: a path under a FILE cannot be created by anyone
    with pytest.raises(ValueError, match=f"run_dir {under_a_file} cannot be created"):
        check_run_dir(under_a_file)
    with pytest.raises(TypeError, match="must be a path"):
        check_run_dir(3)
    rd = check_run_dir(tmp_path / "new" / "run")
    assert rd.path.is_dir() and rd.config == tmp_path / "new" / "run" / "config.json"
    assert check_run_dir(tmp_path / "later", create=False).path.exists() is False


def test_run_dir_layout_names():
    rd = RunDir("runs/x")
    assert rd.checkpoint(12) == Path("runs/x/checkpoints/step-000000012.pt")
    assert rd.unusable_checkpoint(12) == Path("runs/x/checkpoints/step-000000012.pt.unusable")
    assert rd.sessions == Path("runs/x/sessions.jsonl") and rd.metrics == Path("runs/x/metrics.jsonl")
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        rd.checkpoint(-1)


def test_check_run_dir_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
    """The 'not writable' branch, whatever user runs the tests (root writes everywhere, so a read-only
    mode bit would not reach it): os.access reports no write permission for the one directory asked."""
    target = tmp_path / "ro"
    real_access = os.access
    asked = []

    def access(path, mode, *args, **kwargs):
        if Path(path) == target and mode & os.W_OK:
            asked.append(mode)
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(ValueError, match=rf"^output_dir {target} is not writable$"):
        check_run_dir(target, "output_dir")
    assert asked and target.is_dir()  # created, then refused
    assert check_run_dir(tmp_path / "rw").path == tmp_path / "rw"  # other directories unaffected
    assert check_run_dir(target, "output_dir", create=False).path == target  # no write check without create


def test_map_errors_lists_each_tag_with_the_path_map_error_gives(tmp_path):
    """Tags from file names, the one place that parses them: the raw model, EMA tags (dots kept);
    other files of diagnostics/ and a directory of that name are ignored."""
    rd = RunDir(tmp_path / "run")
    assert rd.map_errors() == {}
    d = tmp_path / "run" / "diagnostics"
    d.mkdir(parents=True)
    for name in ("map_error.npz", "map_error_ema0.999.npz", "map_error_ema0.99.npz", "grad_bins.npz",
                 "map_error.npz.tmp", "map_errors.npz", "map_error_.npz", "map_error_model.npz"):
        (d / name).write_bytes(b"")
    (d / "map_error_dir.npz").mkdir()
    got = rd.map_errors()
    assert got == {"model": d / "map_error.npz", "ema0.99": d / "map_error_ema0.99.npz",
                   "ema0.999": d / "map_error_ema0.999.npz"}
    assert list(got)[0] == "model" and all(rd.map_error(tag) == path for tag, path in got.items())
