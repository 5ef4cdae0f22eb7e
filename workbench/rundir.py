"""The run directory: its layout, the one atomic writer and the readers.

A run is a directory; every figure and report is rebuilt from run directories alone. This module
is the only place that spells a file name of one, and the only implementation of an atomic write:

    <run>/config.json                  the resolved config (TrainConfig sections, or {"kind": ...})
    <run>/metrics.jsonl                append-only, one JSON object per logged step (non-finite = null)
    <run>/sessions.jsonl               one line per training session (start, end, status)
    <run>/tb/                          TensorBoard events
    <run>/checkpoints/step-<9 digits>.pt   (a checkpoint that failed its checks is renamed
                                        step-<9 digits>.pt.unusable by the trainer on resume)
    <run>/diagnostics/*.npz, first_fired.json   periodic diagnostics
    <run>/diagnosis.json, diagnosis.md the detectors' verdicts at the end of training
    <run>/evaluation.json, training.json        the main job's evaluation and training summary
    <run>/gallery.npz                  the analytic-flow gallery (kind "gallery")

and, next to a set of run directories (and in the figures folder), a job's ``report.md`` (``REPORT``).

Atomic writes (:func:`atomic_write`): the bytes go to a temporary file in the target's directory,
are flushed and fsync'ed, then moved into place with ``os.replace`` (atomic on POSIX) and the
directory is fsync'ed; a crash leaves the previous file or none, never a torn one. Readers raise
``ValueError`` naming the file and what was expected (a missing, binary, truncated or mistyped file).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CHECKPOINT_DIR",
    "REPORT",
    "RunDir",
    "append_jsonl",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_run_dir",
    "json_safe",
    "read_json",
    "read_jsonl",
    "rewrite_last_jsonl",
    "save_npz",
]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SESSIONS = "sessions.jsonl"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
DIAGNOSTICS_DIR = "diagnostics"
DIAGNOSIS_JSON = "diagnosis.json"
DIAGNOSIS_MD = "diagnosis.md"
EVALUATION = "evaluation.json"
TRAINING = "training.json"
GALLERY = "gallery.npz"
REPORT = "report.md"  # a job's report, in the folder of its run directories and in its figures folder
_MAP_ERROR = re.compile(r"^map_error(?:_(.+))?\.npz$")
_TMP_PREFIX = ".tmp-"
_UNUSABLE_SUFFIX = ".unusable"
_CHECKPOINT = re.compile(r"^step-(\d+)\.pt$")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or read on construction).

    ``RunDir(path).config`` is ``path / "config.json"``, and so on for every file in the layout of
    the module docstring; ``checkpoint(step)``, ``checkpoints()`` (oldest first) and
    ``map_error(tag)`` name the files that carry a step or a model tag.
    """

    path: Path

    def __init__(self, path: str | os.PathLike | RunDir) -> None:
        if isinstance(path, RunDir):
            path = path.path
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"run_dir must be a path (str or os.PathLike), got {type(path).__name__}")
        if str(path) == "":
            raise ValueError("run_dir must name a directory, got '' (use '.' for the current directory)")
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    config = property(lambda self: self.path / CONFIG, doc="config.json")
    metrics = property(lambda self: self.path / METRICS, doc="metrics.jsonl")
    sessions = property(lambda self: self.path / SESSIONS, doc="sessions.jsonl")
    tensorboard = property(lambda self: self.path / TB_DIR, doc="tb/")
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR, doc="checkpoints/")
    diagnostics = property(lambda self: self.path / DIAGNOSTICS_DIR, doc="diagnostics/")
    grad_bins = property(lambda self: self.path / DIAGNOSTICS_DIR / "grad_bins.npz", doc="diagnostics/grad_bins.npz")
    first_fired = property(lambda self: self.path / DIAGNOSTICS_DIR / "first_fired.json",
                           doc="diagnostics/first_fired.json")
    diagnosis_json = property(lambda self: self.path / DIAGNOSIS_JSON, doc="diagnosis.json")
    diagnosis_md = property(lambda self: self.path / DIAGNOSIS_MD, doc="diagnosis.md")
    evaluation = property(lambda self: self.path / EVALUATION, doc="evaluation.json")
    training = property(lambda self: self.path / TRAINING, doc="training.json")
    gallery = property(lambda self: self.path / GALLERY, doc="gallery.npz")

    def map_error(self, tag: str = "model") -> Path:
        """diagnostics/map_error.npz for the raw model, map_error_<tag>.npz for an EMA tag."""
        return self.path / DIAGNOSTICS_DIR / ("map_error.npz" if tag == "model" else f"map_error_{tag}.npz")

    def map_errors(self) -> dict[str, Path]:
        """{tag: path} of every map-error file the run has (``map_error(tag)`` for each), in file-name
        order ("model" first); empty when there is none. Other files in diagnostics/ are ignored."""
        d = self.path / DIAGNOSTICS_DIR
        if not d.is_dir():
            return {}
        out = {}
        for path in sorted(d.iterdir()):
            m = _MAP_ERROR.match(path.name)
            tag = (m[1] or "model") if m else None
            if tag is not None and path.is_file() and path == self.map_error(tag):
                out[tag] = path
        return out

    def checkpoint(self, step: int) -> Path:
        """checkpoints/step-<step, 9 digits>.pt."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        return self.checkpoint_dir / f"step-{step:09d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint, oldest first (temporary files ignored)."""
        d = self.checkpoint_dir
        if not d.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CHECKPOINT.match(p.name)))

    def unusable_checkpoint(self, step: int) -> Path:
        """checkpoints/step-<step>.pt.unusable: where a checkpoint that failed its checks is set aside
        (kept for inspection, no longer listed by :meth:`checkpoints`)."""
        path = self.checkpoint(step)
        return path.with_name(path.name + _UNUSABLE_SUFFIX)

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files a killed atomic write left in the run's folders; return how many.

        Only the process that owns the run may call this (the trainer, when it resumes): a temporary
        file may also belong to a write in progress."""
        n = 0
        for folder in (self.path, self.checkpoint_dir, self.diagnostics):
            if folder.is_dir():
                for p in folder.glob(_TMP_PREFIX + "*"):
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def check_run_dir(path: object, name: str = "run_dir", *, create: bool = True) -> RunDir:
    """Validate a run directory argument: a non-empty path that is not a file and (with ``create``)
    can be created and written. ValueError naming ``name`` otherwise."""
    try:
        rd = RunDir(path)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise type(err)(str(err).replace("run_dir", name, 1)) from None
    p = rd.path
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name} must be a directory, but {p} is a file")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{name} {p} cannot be created ({err.strerror or err})") from None
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{name} {p} is not writable")
    return rd


# -- the atomic writer ----------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temporary file beside ``path``, fsync it, move it onto ``path``.

    Creates the parent directory. On any exception (KeyboardInterrupt included) the temporary file
    is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` by ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` by ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(v: Any) -> Any:
    """Non-finite floats as None (strict JSON), tensors and numpy scalars as Python numbers,
    recursively through mappings (keys as str) and lists: what every JSON writer here writes."""
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def atomic_write_json(path: str | os.PathLike, doc: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``doc`` as strict JSON (NaN and inf become null) with a trailing newline."""
    return atomic_write_text(path, json.dumps(json_safe(doc), indent=indent, allow_nan=False) + "\n")


def append_jsonl(path: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """Append ``row`` as one strict-JSON line (non-finite floats as null) to an append-only log.

    If the file ends in a torn line (a crash mid-append), a newline is written first so that the new
    row stays a line of its own (the torn line is then skipped by :func:`read_jsonl`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(json_safe(dict(row)), allow_nan=False) + "\n"
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
    return path


def rewrite_last_jsonl(path: str | os.PathLike, update: Mapping[str, Any]) -> Path:
    """Atomically rewrite a JSON-lines log with ``update`` merged into its last row (a new row if it
    has none): how a session line gets its end once the session is over."""
    rows = read_jsonl(path)
    if rows:
        rows[-1] = {**rows[-1], **update}
    else:
        rows = [dict(update)]
    text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Atomically write numpy arrays as an uncompressed .npz."""
    import numpy as np

    def write(f: IO[bytes]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        f.write(buf.getvalue())

    return atomic_write(path, write)


# -- readers -------------------------------------------------------------------------------------------
def read_json(path: str | os.PathLike, *, expect: type | tuple[type, ...] = dict, what: str = "") -> Any:
    """Parse a JSON file; ValueError naming the file when it is missing, not UTF-8 text, not valid
    JSON (binary, truncated) or not of type ``expect``."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise ValueError(f"{label} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{label} is not UTF-8 text (a binary or corrupt file?)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{label} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                         "truncated or corrupt?") from None
    if not isinstance(doc, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise ValueError(f"{label} must hold a JSON {names}, got {type(doc).__name__}")
    return doc


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON-object lines of an append-only log, in order; [] for a missing file.

    A torn last line (a crash mid-write) ends the log silently; a line elsewhere that is not a JSON
    object (binary garbage, a hand edit) is skipped with one warning naming the file and the count."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows: list[dict] = []
    bad = 0
    for i, raw in enumerate(lines):
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i < len(lines) - 1:
            bad += 1
        # else: a torn last line (a crash mid-write) ends the log
    if bad:
        warnings.warn(f"{path}: skipped {bad} line(s) that are not JSON objects", stacklevel=2)
    return rows
