"""Benchmark: train-step time of every objective relative to plain flow matching ("fm").

``python -m workbench.experiments bench [--batch 1024] [--hidden 256] [--depth 4] [--reps 7]
[--inner 5] [--objectives fm,lsd,...] [--device cpu]``

Measured side by side in one process: every objective gets its own copy of the same initial MLP
and an Adam optimiser on the same fixed batch of 2-D Gaussian data (objectives that need a
teacher get that Gaussian's exact closed-form flow); one torch thread; ``warmup`` untimed steps,
then ``reps`` interleaved repetitions (the order rotates every repetition) of ``inner`` steps
each; the table reports the median (and quartiles) of the per-step times and median / median(fm).
A step is forward + backward + optimiser step. Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..training.build import DTYPES, resolve_device
from .presets import GAUSS2D, needs_teacher


@dataclass(frozen=True)
class BenchRow:
    """Per-step time (milliseconds) of one objective; ``error`` is set when its step raised."""

    objective: str
    median_ms: float
    q25_ms: float
    q75_ms: float
    ratio_to_fm: float
    error: str | None = None


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _make_step(objective, model, x1: torch.Tensor, generator: torch.Generator) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective(model, x1, generator=generator).loss.mean().backward()
        opt.step()

    return step


def run_benchmark(
    objectives: Sequence[str] | None = None,
    *,
    batch: int = 1024,
    hidden: int = 256,
    depth: int = 4,
    reps: int = 7,
    inner: int = 5,
    warmup: int = 2,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[BenchRow]:
    """Time every objective (default: all of ``OBJECTIVES``, "fm" first) as described above."""
    from ..data import get_data
    from ..losses import OBJECTIVES
    from ..models import make_mlp_flow_map

    names = list(OBJECTIVES) if objectives is None else list(objectives)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective(s) {unknown}; choose from {sorted(OBJECTIVES)}")
    if "fm" in names:
        names.remove("fm")
    names.insert(0, "fm")
    for name, v in (("batch", batch), ("hidden", hidden), ("depth", depth), ("reps", reps), ("inner", inner)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    dev, dt = resolve_device(device), DTYPES[dtype]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = get_data(GAUSS2D.name, **GAUSS2D.kwargs)
        gen = torch.Generator(device=dev).manual_seed(seed)
        x1 = data.sample(batch, gen, dtype=dt, device=dev)
        torch.manual_seed(seed)
        base = make_mlp_flow_map(data.dim, hidden=hidden, depth=depth).to(dev, dt)
        steps: dict[str, Callable[[], None]] = {}
        errors: dict[str, str] = {}
        for name in names:
            obj = OBJECTIVES[name]
            if needs_teacher(obj):
                obj = dataclasses.replace(obj, teacher=data.as_flow())
            steps[name] = _make_step(obj, copy.deepcopy(base), x1, gen)
            try:
                for _ in range(warmup):
                    steps[name]()
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"
        timed = [n for n in names if n not in errors]
        times: dict[str, list[float]] = {n: [] for n in timed}
        for r in range(reps if timed else 0):
            k = r % len(timed)
            for name in timed[k:] + timed[:k]:
                sync()
                t0 = time.perf_counter()
                for _ in range(inner):
                    steps[name]()
                sync()
                times[name].append((time.perf_counter() - t0) / inner * 1e3)
    finally:
        torch.set_num_threads(threads)
    ref = statistics.median(times["fm"]) if "fm" in times else float("nan")
    rows = []
    for name in names:
        if name in errors:
            rows.append(BenchRow(name, float("nan"), float("nan"), float("nan"), float("nan"), errors[name]))
            continue
        q1, med, q3 = _quartiles(times[name])
        rows.append(BenchRow(name, med, q1, q3, med / ref))
    return rows


def format_table(rows: Sequence[BenchRow], header: str = "") -> str:
    """A plain-text table (also valid Markdown)."""
    lines = [header] if header else []
    lines += ["| objective | ms/step (median) | quartiles | x fm |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.objective} | failed | {r.error} | |")
        else:
            lines.append(f"| {r.objective} | {r.median_ms:.3f} | {r.q25_ms:.3f} - {r.q75_ms:.3f} | {r.ratio_to_fm:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.experiments bench",
                                description="Train-step time of every objective relative to flow matching (fm).")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions (median over them)")
    p.add_argument("--inner", type=int, default=5, help="steps per timed repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--objectives", default=None, help="comma-separated names (default: all of OBJECTIVES)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = None if args.objectives is None else [n.strip() for n in args.objectives.split(",") if n.strip()]
    try:
        rows = run_benchmark(names, batch=args.batch, hidden=args.hidden, depth=args.depth, reps=args.reps,
                             inner=args.inner, warmup=args.warmup, seed=args.seed, device=args.device, dtype=args.dtype)
    except ValueError as err:
        p.error(str(err))
    header = (f"train step, MLP {args.hidden}x{args.depth}, batch {args.batch}, {args.dtype}, device {args.device}, "
              f"1 thread, median of {args.reps} interleaved reps x {args.inner} steps; torch {torch.__version__}")
    print(format_table(rows, header))
    return 0
