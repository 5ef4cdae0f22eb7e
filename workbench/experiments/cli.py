"""The command line: ``python -m workbench.experiments PRESET [--key value ...]``.

    python -m workbench.experiments --help                 list the presets
    python -m workbench.experiments PRESET [--key value ...] [--run-dir DIR] [--dry-run]
    python -m workbench.experiments --resume RUN_DIR       continue a run from its last checkpoint
    python -m workbench.experiments main [...]             the main job (workbench.experiments.main_job)
    python -m workbench.experiments bench [...]            step time of every objective relative to fm

Keys are config fields, dotted (``--optim.lr 3e-4``) or by a unique leaf name (``--lr 3e-4``);
``--objective.<field>`` sets an objective override and ``--data.<kwarg>`` a data keyword (JSON
values). Exit codes: 0 done, 1 diverged, 2 usage error, 128 + signal number when stopped by
SIGINT/SIGTERM (a checkpoint is written first; resume with ``--resume``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..training.config import TrainConfig, apply_overrides, config_keys

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
    own = {"run-dir": str, "resume": str, "dry-run": bool, "help": bool}
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


@contextlib.contextmanager
def stop_on_signals(trainer) -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM ask the trainer to checkpoint and stop after the current step
    (and put the previous handlers back at once, so a second Ctrl-C interrupts immediately); the
    previous handlers are restored on exit. Yields the list of signals received."""
    received: list[int] = []
    previous: dict[int, object] = {}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def handler(signum, frame):
        received.append(signum)
        trainer.request_stop(f"received {signal.Signals(signum).name}")
        restore()

    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, handler)
    try:
        yield received
    finally:
        restore()


def _callbacks(config: TrainConfig, data) -> list:
    if not config.eval_every:
        return []
    from ..diagnostics.callbacks import FlowMapErrorCallback

    try:
        flow = data.as_flow()
    except (AttributeError, ValueError) as err:
        raise UsageError(f"eval_every > 0 needs a data source with an analytic flow ({err}); use --eval_every 0") from err
    return [FlowMapErrorCallback(flow, every=config.eval_every, seed=config.seed)]


def _validate(config: TrainConfig) -> None:
    """Build the data source, the objective and the callbacks once (what a run would fail on first)."""
    from ..data import get_data
    from ..training.build import build_objective, check_schedules

    try:
        data = get_data(config.data.name, **config.data.kwargs)
        check_schedules(build_objective(config.objective, data), config.objective.schedules)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
    _callbacks(config, data)


def _default_run_dir(preset: str) -> Path:
    base = Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def _train(config: TrainConfig, run_dir: Path, resume: bool) -> int:
    from ..data import get_data
    from ..training.trainer import Trainer

    try:
        data = get_data(config.data.name, **config.data.kwargs)
        callbacks = _callbacks(config, data)
        trainer = Trainer(config, run_dir, callbacks=callbacks, data=data, resume=resume)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
    print(f"run directory: {run_dir}" + (f" (resuming at step {trainer.step})" if resume else ""), file=sys.stderr)
    with stop_on_signals(trainer) as received:
        result = trainer.fit()
    print(result.message, file=sys.stderr)
    if result.status == "diverged":
        return EXIT_DIVERGED
    if result.status == "interrupted" and received:
        return 128 + int(received[0])
    return EXIT_OK


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "main":
        try:
            from . import main_job
        except ImportError as err:
            raise UsageError(f"the main job (workbench/experiments/main_job.py) is not available: {err}") from err
        return int(main_job.main(argv[1:]) or 0)
    if argv and argv[0] == "bench":
        from .benchmark import main as bench_main

        return bench_main(argv[1:])
    preset_name = argv[0] if argv and not argv[0].startswith("-") else None
    overrides, flags = parse_overrides(argv[1:] if preset_name else argv)
    if flags.get("help") or not argv:
        print(_help_text())
        return EXIT_OK if flags.get("help") else EXIT_USAGE
    if "resume" in flags:
        if preset_name or overrides or "run-dir" in flags:
            raise UsageError("--resume RUN_DIR takes no preset and no other options (the run's config.json is used)")
        run_dir = Path(flags["resume"])
        try:
            config = TrainConfig.load(run_dir)
        except ValueError as err:
            raise UsageError(str(err)) from err
        return _train(config, run_dir, resume=True)
    if preset_name is None:
        raise UsageError("give a preset name (see --help) or --resume RUN_DIR")
    from .presets import get_presets

    presets = get_presets()
    if preset_name not in presets:
        raise UsageError(f"unknown preset {preset_name!r}; choose one of: {', '.join(presets)}")
    try:
        config = apply_overrides(presets[preset_name].config, overrides)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if flags.get("dry-run"):
        _validate(config)
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    run_dir = Path(flags["run-dir"]) if "run-dir" in flags else _default_run_dir(preset_name)
    return _train(config, run_dir, resume=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
