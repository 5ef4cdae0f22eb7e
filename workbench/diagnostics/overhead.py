"""The overhead of the per-step diagnostics: what the cheap signals callback costs a training step.

``python -m workbench.diagnostics.overhead [--objective fm,lsd,isd] [--steps 40] [--reps 9]
[--batch 512] [--hidden 128] [--depth 3] [--warmup 10] [--log-every 10] [--device cpu]``

For every objective the same :class:`~workbench.training.TrainConfig` (same seed, so the same
weights, batches and times) is trained side by side by the real :class:`~workbench.training.Trainer`
without and with :class:`~workbench.diagnostics.TrainingSignalsCallback`, in ``reps`` interleaved
repetitions (the order of the two arms alternates every repetition; one untimed run of each arm
comes first), on one torch thread, each run
in a fresh temporary run directory with checkpoints, TensorBoard and the progress bar off.

A timing callback placed last stamps the wall clock at the end of every step (after a CUDA
synchronisation on a GPU); step k's time is stamp(k) - stamp(k - 1), so it holds the whole loop
iteration: the trainer's step, every callback, and the metrics line written at logging steps. The
first ``warmup`` steps of each run are dropped. Per run the *mean* step time over the remaining
steps is what a run pays (the signals summary runs only every ``log_every`` steps, a cost the
median step would hide). The two arms of one repetition run back to back, so their ratio
mean(with) / mean(without) is paired against the slow drifts of a shared machine; the table gives
for each arm the median over repetitions of the mean step time, ``overhead`` = the median over
repetitions of the paired ratio minus 1 (with its quartiles), and beside it the same paired ratio
for the median single step. The time spent inside the callback itself (its ``on_step_end``, per
timed step) is measured too: on a shared machine it is the sharper number, since the noise between
two runs is larger than the callback's cost. ``same run`` checks that the two arms ended with bitwise equal weights
(the callback must not change training). Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..training import (
    Callback,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    StepRecord,
    TrainConfig,
    TrainContext,
    Trainer,
)
from .signals import TrainingSignalsCallback

DEFAULT_OBJECTIVES = ("fm", "lsd", "isd")


@dataclass(frozen=True)
class OverheadRow:
    """Step times of one objective without (``base_ms``) and with (``diag_ms``) the signals callback:
    median over repetitions of each run's mean step time (milliseconds); ``overhead`` and its
    quartiles ``overhead_q25``, ``overhead_q75``: of the paired per-repetition ratio
    mean(with) / mean(without) minus 1; ``overhead_median_step``: median over repetitions of the
    paired ratio of median single steps minus 1; ``callback_ms``: median over repetitions of the time
    spent inside the callback's ``on_step_end`` per timed step (its own cost, free of the noise
    between arms); ``same_run``: both arms ended with equal weights in
    every repetition; ``error`` is set when training raised."""

    objective: str
    base_ms: float
    diag_ms: float
    overhead: float
    overhead_q25: float
    overhead_q75: float
    overhead_median_step: float
    callback_ms: float
    same_run: bool
    error: str | None = None


class _Timed(Callback):
    """Delegates to ``inner`` and records the wall time of each of its ``on_step_end`` calls."""

    def __init__(self, inner: Callback) -> None:
        self.inner, self.every = inner, inner.every
        self.seconds: list[float] = []

    def on_train_start(self, ctx: TrainContext) -> None:
        self.seconds = []
        self.inner.on_train_start(ctx)

    def on_step_end(self, ctx: TrainContext, record: StepRecord) -> dict | None:
        t0 = time.perf_counter()
        out = self.inner.on_step_end(ctx, record)
        self.seconds.append(time.perf_counter() - t0)
        return out

    def on_train_end(self, ctx: TrainContext) -> None:
        self.inner.on_train_end(ctx)


class _StepClock(Callback):
    """Stamps the wall clock at the end of every step (last in the callback list)."""

    def __init__(self) -> None:
        self.sync = lambda: None
        self.stamps: list[float] = []

    def on_train_start(self, ctx: TrainContext) -> None:
        self.sync()
        self.stamps = [time.perf_counter()]

    def on_step_end(self, ctx: TrainContext, record: StepRecord) -> None:
        self.sync()
        self.stamps.append(time.perf_counter())

    def step_seconds(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:])][warmup:]


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _config(objective: str, *, steps: int, batch: int, hidden: int, depth: int, log_every: int, seed: int,
            device: str, dtype: str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(hidden=hidden, depth=depth, time_embedding="raw"),
        objective=ObjectiveConfig(objective),
        data=DataConfig("checkerboard", {"variant": "realnvp"}),
        optim=OptimConfig(name="radam", lr=1e-3, schedule="constant", grad_clip=10.0),
        batch_size=batch, steps=steps, seed=seed, device=device, dtype=dtype, log_every=log_every,
        checkpoint_every=0, keep_checkpoints=1, progress=False, tensorboard=False,
    )


def _train(config: TrainConfig, root: Path, name: str, with_signals: bool) -> tuple[_StepClock, _Timed | None, dict]:
    clock = _StepClock()
    signals = _Timed(TrainingSignalsCallback()) if with_signals else None
    callbacks: list[Callback] = ([signals] if signals is not None else []) + [clock]
    trainer = Trainer(config, root / name, callbacks=callbacks)
    if trainer.device.type == "cuda":
        clock.sync = torch.cuda.synchronize
    result = trainer.fit()
    if result.status != "completed":
        raise RuntimeError(f"training did not complete: {result.message}")
    return clock, signals, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def run_overhead_benchmark(
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    *,
    steps: int = 40,
    reps: int = 9,
    batch: int = 512,
    hidden: int = 128,
    depth: int = 3,
    warmup: int = 10,
    log_every: int = 10,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[OverheadRow]:
    """Measure the signals callback's overhead for every objective as described in the module docstring."""
    from ..losses import OBJECTIVES

    names = list(objectives)
    unknown = [n for n in names if n not in OBJECTIVES]
    if not names or unknown:
        raise ValueError(f"objectives must be names from {sorted(OBJECTIVES)}, got {names!r}")
    for name, v in (("steps", steps), ("reps", reps), ("batch", batch), ("hidden", hidden), ("depth", depth),
                    ("log_every", log_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup must be an int in [0, steps) so that a step is timed, got {warmup!r}")
    configs = {n: _config(n, steps=steps, batch=batch, hidden=hidden, depth=depth, log_every=log_every,
                          seed=seed, device=device, dtype=dtype) for n in names}
    means: dict[str, dict[bool, list[float]]] = {n: {False: [], True: []} for n in names}
    singles: dict[str, dict[bool, list[float]]] = {n: {False: [], True: []} for n in names}
    inside: dict[str, list[float]] = {n: [] for n in names}
    same = dict.fromkeys(names, True)
    errors: dict[str, str] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="wb-diag-bench-") as tmp:
            root = Path(tmp)
            try:  # one untimed run per arm first: lazy imports and first-call set-up are not the callback's cost
                for arm in (False, True):
                    _train(configs[names[0]], root, f"warmup-{int(arm)}", arm)
            except (ValueError, TypeError, RuntimeError):
                pass  # reported below, when the objective is timed
            for r in range(reps):
                order = (False, True) if r % 2 == 0 else (True, False)
                for name in names:
                    if name in errors:
                        continue
                    weights = {}
                    try:
                        for arm in order:
                            clock, signals, weights[arm] = _train(configs[name], root, f"{name}-{r}-{int(arm)}", arm)
                            dt = clock.step_seconds(warmup)
                            means[name][arm].append(sum(dt) / len(dt) * 1e3)
                            singles[name][arm].append(statistics.median(dt) * 1e3)
                            if signals is not None:
                                inside[name].append(sum(signals.seconds[warmup:]) / len(dt) * 1e3)
                    except (ValueError, TypeError, RuntimeError) as err:
                        errors[name] = f"{type(err).__name__}: {err}"
                        continue
                    same[name] = same[name] and all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])
    finally:
        torch.set_num_threads(threads)
    rows = []
    nan = float("nan")
    for name in names:
        if name in errors:
            rows.append(OverheadRow(name, nan, nan, nan, nan, nan, nan, nan, False, errors[name]))
            continue
        base, diag = means[name][False], means[name][True]
        q1, q2, q3 = _quartiles([d / b - 1.0 for b, d in zip(base, diag)])
        single = statistics.median(d / b - 1.0 for b, d in zip(singles[name][False], singles[name][True]))
        rows.append(OverheadRow(name, statistics.median(base), statistics.median(diag), q2, q1, q3, single,
                                statistics.median(inside[name]), same[name]))
    return rows


def format_overhead_table(rows: Sequence[OverheadRow], header: str = "") -> str:
    """A plain-text table (also valid Markdown) of :func:`run_overhead_benchmark` rows."""
    lines = [header] if header else []
    lines += ["| objective | ms/step without | ms/step with signals | overhead (q25, q75) "
              "| overhead of the median step | ms/step inside the callback (share) | same run |",
              "| --- | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.objective} | failed: {r.error} | | | | | |")
            continue
        lines.append(
            f"| {r.objective} | {r.base_ms:.3f} | {r.diag_ms:.3f} | {100 * r.overhead:+.1f}% "
            f"({100 * r.overhead_q25:+.1f}%, {100 * r.overhead_q75:+.1f}%) "
            f"| {100 * r.overhead_median_step:+.1f}% | {r.callback_ms:.4f} ({100 * r.callback_ms / r.base_ms:.2f}%) "
            f"| {'yes' if r.same_run else 'NO'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m workbench.diagnostics.overhead",
        description="Per-step training time with and without the cheap per-step diagnostics "
                    "(TrainingSignalsCallback), trained side by side by the real Trainer.")
    p.add_argument("--objective", default=",".join(DEFAULT_OBJECTIVES),
                   help="comma-separated objective names (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="optimiser steps per run (default: %(default)s)")
    p.add_argument("--reps", type=int, default=9, help="interleaved repetitions per arm (default: %(default)s)")
    p.add_argument("--batch", type=int, default=512, help="batch size (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128, help="MLP width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=3, help="MLP depth (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps of each run (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=10, help="trainer's logging cadence (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.objective.split(",") if n.strip()]
    try:
        rows = run_overhead_benchmark(names, steps=args.steps, reps=args.reps, batch=args.batch, hidden=args.hidden,
                                      depth=args.depth, warmup=args.warmup, log_every=args.log_every, seed=args.seed,
                                      device=args.device, dtype=args.dtype)
    except ValueError as err:
        p.error(str(err))
    header = (f"TrainingSignalsCallback overhead: checkerboard, MLP {args.hidden}x{args.depth}, batch {args.batch}, "
              f"{args.dtype}, device {args.device}, 1 thread, {args.steps} steps per run ({args.warmup} untimed), "
              f"log_every {args.log_every}, median of {args.reps} interleaved reps; torch {torch.__version__}")
    print(format_overhead_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
