"""Checkpoints of a run directory: atomic writes, a checksum, safe and checked loads.

A checkpoint is ``<run_dir>/checkpoints/step-000001000.pt`` (the name comes from
:class:`workbench.rundir.RunDir`), written with :func:`workbench.rundir.atomic_write`, so a crash
during the write leaves every earlier checkpoint intact and never a partial file under a
checkpoint name.

Format. The file is ``torch.save`` of the state dict (tensors and primitive containers only, RNG
states as their uint8 tensors) plus one reserved top-level entry::

    state["checksum"] = {"algorithm": "sha256", "digest": "<64 hex digits>"}

The digest is SHA-256 of a canonical encoding of every other entry (:func:`state_digest`): keys in
sorted order, each value tagged with its type, a tensor as its dtype, shape and raw bytes (on the
CPU, in C order), a float by its ``repr`` (which round-trips exactly). It hashes what a load returns,
not the bytes of the zip container, so ``torch.load(path, weights_only=True)`` still reads a
checkpoint as a plain dict, and a flipped bit either makes ``torch.load`` fail or changes a value the
digest covers; padding bytes that nothing reads are the only ones whose corruption goes unseen, and
it changes nothing that is loaded.

Checks. :func:`save_checkpoint` refuses (``FloatingPointError``) a state holding a NaN or inf in
any floating tensor: model weights, optimiser moments, every EMA; a non-finite state is never
written. :func:`load_checkpoint` refuses (:class:`CheckpointError`, a ``ValueError``) a file that
``torch.load(weights_only=True)`` cannot read, that carries no checksum, whose checksum does not
match, or that holds a non-finite floating tensor, and names the file and the tensors.
:func:`load_latest` skips such files with a warning and raises when checkpoints exist but none is
usable (a silent restart from step 0 would throw the run away).
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..rundir import CHECKPOINT_DIR, RunDir, atomic_write

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKSUM_KEY",
    "CheckpointError",
    "LatestCheckpoint",
    "checkpoint_path",
    "find_latest",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "nonfinite_tensors",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "state_digest",
]

CHECKSUM_KEY = "checksum"
_ALGORITHM = "sha256"
_NAMES_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, without or with a wrong checksum, or
    holding non-finite values. The message names the file and what is wrong."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``<run_dir>/checkpoints/step-<step, 9 digits>.pt``."""
    return RunDir(run_dir).checkpoint(step)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint of the run, oldest first (temporary files ignored)."""
    return RunDir(run_dir).checkpoints()


# -- the checksum and the finiteness check ----------------------------------------------------------
def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted name, leaf) for every leaf of nested dicts / lists / tuples, dict keys sorted."""
    if isinstance(obj, Mapping):
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            yield from _walk(obj[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, obj


def _update(h: Any, obj: Any) -> None:
    """Feed the canonical encoding of ``obj`` to the hash ``h`` (type-tagged, keys sorted)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            raise TypeError(f"checkpoints hold dense tensors only, got layout {t.layout}")
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        flat = t.reshape(-1).cpu().contiguous()  # reshape(-1) also makes a 0-d tensor viewable as bytes
        h.update(flat.view(torch.uint8).numpy())  # no copy: hashlib reads the buffer
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(f"K{type(key).__name__}:{key!r}:".encode())
            _update(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _update(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)):
        h.update(f"P{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"checkpoints hold tensors and primitive containers only, got {type(obj).__name__}")


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of ``state`` without its ``"checksum"`` entry."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    h = hashlib.sha256()
    _update(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return h.hexdigest()


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Dotted names (e.g. ``optimizer.state.3.exp_avg_sq``, ``ema.0.999.net.0.weight``) of the
    floating tensors in ``state`` that hold a NaN or an inf, and of non-finite Python floats."""
    bad = []
    for name, v in _walk(state, prefix):
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            if v.numel() and not bool(torch.isfinite(v).all()):
                bad.append(name)
        elif isinstance(v, float) and not math.isfinite(v):
            bad.append(name)
    return bad


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


# -- save and load ----------------------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, *, keep: int | None = None) -> Path:
    """Write ``state`` with its checksum atomically as the checkpoint of ``step``; then keep only the
    newest ``keep`` checkpoints.

    Raises ``FloatingPointError`` naming the tensors when any floating tensor of ``state`` is not
    finite (nothing is written), ``ValueError`` when ``state`` already has a ``"checksum"`` entry.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if CHECKSUM_KEY in state:
        raise ValueError(f"state must not have a {CHECKSUM_KEY!r} entry: save_checkpoint adds it")
    bad = nonfinite_tensors(state)
    if bad:
        raise FloatingPointError(f"refusing to checkpoint step {step}: non-finite values in {_names(bad)}")
    payload = {**state, CHECKSUM_KEY: {"algorithm": _ALGORITHM, "digest": state_digest(state)}}
    path = atomic_write(checkpoint_path(run_dir, step), lambda f: torch.save(payload, f))
    if keep is not None:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


# What torch.load raises for damaged bytes held in memory: the zip reader's RuntimeError or
# ValueError, a truncated or mangled pickle stream (EOFError, UnpicklingError, UnicodeDecodeError,
# and the LookupError / TypeError of the restricted unpickler meeting a corrupted opcode argument).
# The file is read into memory first, so no OSError can come from here: a missing file, a permission
# problem or a disk error (and a MemoryError) propagates from the read instead, since it says nothing
# about the file, and a caller that sets unreadable checkpoints aside must not set a good one aside.
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, LookupError, TypeError)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (tensors and primitive containers only)
    and return its state without the checksum entry.

    With ``verify`` (the default) the checksum must be present and match and every floating tensor
    must be finite; ``verify=False`` reads a file as it is (inspection of a damaged or old file).
    Raises :class:`CheckpointError` naming the file and the problem when its content is unreadable
    or fails a check; an ``OSError`` (missing file, permissions, a disk error) or ``MemoryError``
    propagates unchanged, since it says nothing about whether the file is good.
    """
    path = Path(path)
    blob = io.BytesIO(path.read_bytes())  # OSError, MemoryError: not a verdict on the file, propagated
    try:
        state = torch.load(blob, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: torch.load(weights_only=True) refused it ({first}); "
                              "a checkpoint holds only tensors and primitive containers") from err
    except _UNREADABLE as err:  # a torn, truncated or corrupted container; OSError, MemoryError propagate
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {first})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} must hold a dict, got {type(state).__name__}")
    stored = state.pop(CHECKSUM_KEY, None)
    if not verify:
        return state
    if stored is None:
        raise CheckpointError(f"checkpoint {path} has no checksum (not written by save_checkpoint, or by a version "
                              "that stored none); read it unverified with load_checkpoint(path, verify=False)")
    if not (isinstance(stored, dict) and stored.get("algorithm") == _ALGORITHM and isinstance(stored.get("digest"), str)):
        raise CheckpointError(f"checkpoint {path} has a malformed checksum entry {stored!r}")
    try:
        digest = state_digest(state)
    except TypeError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from err
    if digest != stored["digest"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its SHA-256 checksum "
                              "(bit flips, a damaged copy or an edit)")
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite values in {_names(bad)}")
    return state


@dataclass(frozen=True)
class LatestCheckpoint:
    """What :func:`find_latest` found: the newest usable ``state`` (None if none), its ``step`` and
    ``path``, and ``skipped``: (step, path, reason) of every newer checkpoint that failed to load."""

    state: dict[str, Any] | None
    step: int | None
    path: Path | None
    skipped: tuple[tuple[int, Path, str], ...]


def find_latest(run_dir: str | Path, map_location: str | torch.device = "cpu") -> LatestCheckpoint:
    """Try the run's checkpoints newest first; return the first that loads and passes its checks,
    with the ones skipped on the way (each also reported as a warning). Reads only; deletes nothing.
    An ``OSError`` or ``MemoryError`` while reading propagates: it is no reason to skip a checkpoint."""
    skipped: list[tuple[int, Path, str]] = []
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as err:
            skipped.append((step, path, str(err)))
            warnings.warn(f"skipping checkpoint of step {step}: {err}", stacklevel=2)
            continue
        return LatestCheckpoint(state, step, path, tuple(skipped))
    return LatestCheckpoint(None, None, None, tuple(skipped))


def unusable_message(run_dir: str | Path, skipped: tuple[tuple[int, Path, str], ...]) -> str:
    """The error when checkpoints exist and none is usable (each one's reason, and the ways out)."""
    reasons = "; ".join(f"step {step}: {reason}" for step, _, reason in skipped)
    return (f"none of the {len(skipped)} checkpoint(s) in {RunDir(run_dir).checkpoint_dir} is usable ({reasons}). "
            "Refusing to restart from step 0 silently: restore a good copy of a checkpoint, or start afresh "
            "explicitly, setting the unusable files aside: on the command line "
            "`python -m workbench.experiments --resume RUN_DIR --fresh-start`, "
            "in Python Trainer.resume(run_dir, allow_fresh_start=True) or load_latest(run_dir, allow_fresh_start=True)")


def load_latest(
    run_dir: str | Path, map_location: str | torch.device = "cpu", *, allow_fresh_start: bool = False
) -> dict[str, Any] | None:
    """The state of the newest usable checkpoint; None when the run has no checkpoint.

    Each unusable checkpoint skipped on the way is reported (a warning naming the file and why).
    When checkpoints exist but none is usable this raises :class:`CheckpointError` listing them,
    unless ``allow_fresh_start`` (then it returns None). Temporary files are ignored, not deleted
    (the run's owner removes them: :meth:`workbench.rundir.RunDir.remove_stale_temporaries`).
    """
    found = find_latest(run_dir, map_location)
    if found.state is None and found.skipped and not allow_fresh_start:
        raise CheckpointError(unusable_message(run_dir, found.skipped))
    return found.state


# -- RNG states as tensors ---------------------------------------------------------------------------
def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """States of the named generators, of torch's global CPU generator and of every CUDA device."""
    out: dict[str, Any] = {name: g.get_state() for name, g in generators.items()}
    out["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when the device count matches)."""
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
