"""The command line: ``python -m workbench.experiments PRESET [--key value ...]``.

    python -m workbench.experiments --help                 list the presets
    python -m workbench.experiments PRESET [--key value ...] [--run-dir DIR] [--dry-run]
    python -m workbench.experiments --resume RUN_DIR       continue a run from its last checkpoint
    python -m workbench.experiments --resume RUN_DIR --fresh-start
                                                           the same, but when no checkpoint is usable set
                                                           them aside and train again from step 0
    python -m workbench.experiments main [...]             the main job (workbench.experiments.main_job)
    python -m workbench.experiments bench [...]            step time of every objective relative to fm

Keys are config fields, dotted (``--optim.lr 3e-4``) or by a unique leaf name (``--lr 3e-4``);
``--objective.<field>`` sets an objective override and ``--data.<kwarg>`` a data keyword (JSON
values). ``--resume`` takes the run directory (or the config.json inside it). Exit codes: 0 done,
1 diverged, 2 usage error (a bad option or value, an unusable run directory, an unreadable
config.json, a batch or model too large for the machine: one line on stderr, no traceback),
128 + signal number when stopped by SIGINT/SIGTERM (a checkpoint is written first; resume with
``--resume``; :mod:`workbench.experiments.stopping`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..rundir import RunDir, check_run_dir
from ..training.config import TrainConfig, apply_overrides, config_keys
from .stopping import signal_exit_code, stop_on_signals

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad command line: reported on stderr with exit code 2."""


def _help_text() -> str:
    from .presets import get_presets

    lines = ["usage: python -m workbench.experiments PRESET [--key value ...] | --resume RUN_DIR | main | bench",
             "", __doc__.strip().split("\n\n", 1)[1].rstrip(), "", "presets:"]
    presets = get_presets()
    width = max(len(n) for n in presets)
    lines += [f"  {name:<{width}}  {p.description}" for name, p in presets.items()]
    lines += ["", "config keys: " + ", ".join(config_keys())]
    return "\n".join(lines)


def parse_overrides(args: Sequence[str]) -> tuple[dict[str, str], dict[str, str | bool]]:
    """Split ``--key value`` / ``--key=value`` pairs into config overrides and the CLI's own flags."""
    own = {"run-dir": str, "resume": str, "fresh-start": bool, "dry-run": bool, "help": bool}
    overrides: dict[str, str] = {}
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-h":
            arg = "--help"
        if not arg.startswith("--") or arg == "--":
            raise UsageError(f"unexpected argument {arg!r}; options are --key value")
        key, eq, value = arg[2:].partition("=")
        if key in own and own[key] is bool:
            if eq:
                raise UsageError(f"--{key} takes no value")
            flags[key] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"--{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        if key in own:
            flags[key] = value
        elif key in overrides:
            raise UsageError(f"--{key} given twice")
        else:
            overrides[key] = value
    return overrides, flags


def _callbacks(config: TrainConfig, data) -> list:
    if not config.eval_every:
        return []
    from ..diagnostics.callbacks import FlowMapErrorCallback

    try:
        flow = data.as_flow()
    except (AttributeError, ValueError) as err:
        raise UsageError(f"eval_every > 0 needs a data source with an analytic flow ({err}); use --eval_every 0") from err
    return [FlowMapErrorCallback(flow, every=config.eval_every, seed=config.seed)]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (CPU or CUDA)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _check_batch(config: TrainConfig, data) -> None:
    """Draw one data batch on the CPU: a batch too large for the machine (``--batch_size 1e12``) is
    a usage error naming the setting, not a crash at step 1. (The error is cut to its last line:
    torch appends C++ frames to some.)"""
    from ..training.build import DTYPES

    try:
        data.sample(config.batch_size, torch.Generator().manual_seed(0), dtype=DTYPES[config.dtype])
    except (RuntimeError, MemoryError, OverflowError, TypeError, ValueError) as err:
        raise UsageError(f"--batch_size {config.batch_size}: one batch of data cannot be drawn "
                         f"({_first_line(err)}); use a smaller batch") from None


def _too_large(config: TrainConfig, err: BaseException, where: str) -> UsageError:
    m = config.model
    return UsageError(f"out of memory {where} ({_first_line(err)}); the batch (--batch_size {config.batch_size}) "
                      f"or the model (--model.hidden {m.hidden}, --model.depth {m.depth}) is too large for this "
                      "machine")


def _prepare(config: TrainConfig) -> tuple[object, list]:
    """Build the data source, the objective and the callbacks, and draw one batch (what a run would
    fail on first); returns (data, callbacks)."""
    from ..data import get_data
    from ..training.build import build_objective, check_schedules

    try:
        data = get_data(config.data.name, **config.data.kwargs)
        check_schedules(build_objective(config.objective, data), config.objective.schedules)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
    callbacks = _callbacks(config, data)
    _check_batch(config, data)
    return data, callbacks


def _default_run_dir(preset: str) -> Path:
    base = Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def _run_dir(text: object, flag: str, *, create: bool = True) -> Path:
    """The validated run directory of ``flag`` (created when ``create``): not '', not a file, not
    under a file, writable."""
    try:
        return check_run_dir(text, flag, create=create).path
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None


def _resume_dir(text: str) -> RunDir:
    """The run directory ``--resume`` names: the directory itself, or its config.json."""
    path = Path(text) if text else None
    if path is not None and path.is_file():
        if path.name != RunDir(path.parent).config.name:
            raise UsageError(f"--resume takes a run directory, but {path} is a file; pass the directory that holds "
                             f"the run's {RunDir(path.parent).config.name}")
        path = path.parent
    rd = RunDir(_run_dir(text if path is None else path, "--resume", create=False))
    if not rd.config.is_file():
        raise UsageError(f"--resume {rd.path}: no {rd.config.name} there; pass the directory of a run "
                         "(the one given to --run-dir)")
    return rd


def load_config(rd: RunDir) -> TrainConfig:
    """The run's config (:func:`workbench.experiments.evaluate.load_run_config`); UsageError naming
    the file when it is unreadable (binary, truncated) or not a valid training config."""
    from .evaluate import load_run_config

    try:
        return load_run_config(rd.path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _train(config: TrainConfig, run_dir: str, resume: bool, fresh_start: bool = False) -> int:
    """Train ``config`` in ``run_dir`` (the text given, validated here: '' is refused, not read
    as the current directory); ``fresh_start``: a resume whose checkpoints are all unusable starts
    again from step 0 (the trainer's ``allow_fresh_start``)."""
    from ..training.trainer import Trainer

    data, callbacks = _prepare(config)
    existed = Path(run_dir).exists() if run_dir else True
    run_dir = _run_dir(run_dir, "--resume" if resume else "--run-dir")
    try:
        trainer = Trainer(config, run_dir, callbacks=callbacks, data=data, resume=resume,
                          allow_fresh_start=fresh_start)
    except (ValueError, TypeError, RuntimeError, MemoryError) as err:
        if isinstance(err, (RuntimeError, MemoryError)) and not out_of_memory(err):
            raise
        if not existed and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave no empty directory behind a refused command line
        if out_of_memory(err):
            raise _too_large(config, err, "while building the model") from None
        raise UsageError(str(err)) from err
    print(f"run directory: {run_dir}" + (f" (resuming at step {trainer.step})" if resume else ""), file=sys.stderr)
    try:
        with stop_on_signals(trainer) as received:
            result = trainer.fit()
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        raise _too_large(config, err, f"at step {trainer.step + 1}") from None
    print(result.message, file=sys.stderr)
    if result.status == "diverged":
        return EXIT_DIVERGED
    if result.status == "interrupted" and received:
        return signal_exit_code(received[0])
    return EXIT_OK


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "main":
        from . import main_job

        return int(main_job.main(argv[1:]) or 0)
    if argv and argv[0] == "bench":
        from .step_benchmark import main as bench_main

        return bench_main(argv[1:])
    preset_name = argv[0] if argv and not argv[0].startswith("-") else None
    overrides, flags = parse_overrides(argv[1:] if preset_name else argv)
    if flags.get("help") or not argv:
        print(_help_text())
        return EXIT_OK if flags.get("help") else EXIT_USAGE
    if "resume" in flags:
        if preset_name or overrides or set(flags) - {"resume", "fresh-start"}:
            raise UsageError("--resume RUN_DIR takes no preset and no other options but --fresh-start "
                             "(the run's config.json is used)")
        rd = _resume_dir(str(flags["resume"]))
        return _train(load_config(rd), str(rd.path), resume=True, fresh_start=bool(flags.get("fresh-start")))
    if "fresh-start" in flags:
        raise UsageError("--fresh-start goes with --resume RUN_DIR (a new run starts from step 0 anyway)")
    if preset_name is None:
        raise UsageError("give a preset name (see --help) or --resume RUN_DIR")
    from .presets import get_presets

    presets = get_presets()
    if preset_name not in presets:
        raise UsageError(f"unknown preset {preset_name!r}; choose one of: {', '.join(presets)}")
    try:
        config = apply_overrides(presets[preset_name].config, overrides)
    except (ValueError, TypeError) as err:  # the config's own validation: a message naming the key
        raise UsageError(str(err)) from None
    if flags.get("dry-run"):
        _prepare(config)
        if "run-dir" in flags:
            _run_dir(flags["run-dir"], "--run-dir", create=False)
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    run_dir = str(flags["run-dir"]) if "run-dir" in flags else str(_default_run_dir(preset_name))
    return _train(config, run_dir, resume=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
