"""Checkpoints of a run directory: atomic writes, safe loads (tensors and primitives only).

A checkpoint is ``<run_dir>/checkpoints/step-000001000.pt``. It is written to a temporary file
in the same directory, flushed and fsync'ed, then moved into place with ``os.replace`` (atomic on
POSIX), so a crash during the write leaves every earlier checkpoint intact and never a partial
file under a checkpoint name. Loading uses ``torch.load(weights_only=True)``: a checkpoint holds
only tensors and primitive containers (RNG states are stored as their uint8 tensors).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint of the run, oldest first (temporary files ignored)."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, *, keep: int | None = None) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; then keep only the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    if keep is not None:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: refuses anything but tensors and primitive containers."""
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint that loads (an unreadable one is reported and skipped); None if none.
    Temporary files left by a write that was killed are removed."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if d.is_dir():
        for stale in d.glob(".tmp-*.pt"):
            stale.unlink(missing_ok=True)
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location)
        except Exception as err:
            warnings.warn(f"checkpoint {path} (step {step}) is unreadable ({err}); trying an older one", stacklevel=2)
    return None


# -- RNG states as tensors ---------------------------------------------------------------------------
def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """States of the named generators, of torch's global CPU generator and of every CUDA device."""
    out: dict[str, Any] = {name: g.get_state() for name, g in generators.items()}
    out["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    missing = set(generators) - set(state)
    if missing:
        raise ValueError(f"checkpoint has no RNG state for generator(s) {sorted(missing)}")
    for name, g in generators.items():
        g.set_state(state[name].cpu())
    torch.set_rng_state(state["torch_cpu"].cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        states = [s.cpu() for s in state["torch_cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            warnings.warn("the number of CUDA devices changed since the checkpoint; CUDA RNG states not restored", stacklevel=2)
