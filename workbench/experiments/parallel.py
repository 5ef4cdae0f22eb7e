"""Run main-job runs in parallel worker processes with visible progress.

``run_jobs(jobs, names, workers=2, threads=1)`` starts ``workers`` spawned processes (one torch
thread each by default, :func:`workbench.experiments.jobs.init_worker`), runs
:func:`workbench.experiments.jobs.run_job` on each job and prints a status line per message the
workers post (start, every quarter of the steps, evaluation, done) above a tqdm bar over runs.
Ctrl-C (or SIGTERM turned into KeyboardInterrupt by the caller) sets the workers' stop event:
each finishes its current step, writes a checkpoint and returns "interrupted"; queued runs are
cancelled or return at once. A run that raises is reported as "failed" and the others go on.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm


def status_line(msg: dict, index: dict[str, int], n: int) -> str | None:
    """The status line of a worker message (None for kinds that print nothing)."""
    tag = f"[{index.get(msg['run'], 0):>2}/{n}] {msg['run']}"
    kind = msg["kind"]
    if kind == "start":
        return f"{tag}: training from step {msg['step']} of {msg['total']}"
    if kind == "step":
        return f"{tag}: step {msg['step']}/{msg['total']}  loss {msg['loss']:.4g}  ({msg['seconds']:.0f} s)"
    if kind == "evaluating":
        return f"{tag}: trained {msg['step']} steps in {msg['seconds']:.0f} s; evaluating"
    if kind == "done":
        return f"{tag}: done ({msg['status']}; train {msg['seconds']:.0f} s, eval {msg['eval_seconds']:.0f} s)"
    if kind == "interrupted":
        return f"{tag}: interrupted at step {msg['step']} (checkpoint written; run again to resume)"
    return None


def _init(messages, stop, threads) -> None:
    from .jobs import init_worker

    init_worker(messages, stop, threads)


def run_jobs(jobs: Sequence[dict], names: Sequence[str], *, workers: int = 2, threads: int = 1, progress: bool = True,
             log: Callable[[str], None] | None = None) -> tuple[list[dict], bool]:
    """Run ``jobs`` (dicts for ``jobs.run_job``) on ``workers`` processes; ``names`` are all run
    names of the plan (for the [k/n] tags and the bar). Returns (results, interrupted?)."""
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    index = {name: k + 1 for k, name in enumerate(names)}
    n = len(names)
    ctx = mp.get_context("spawn")
    messages, stop = ctx.Queue(), ctx.Event()
    bar = tqdm(total=n, initial=n - len(jobs), desc="main job runs", unit="run", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    results: list[dict] = []
    interrupted = False

    def drain() -> None:
        while True:
            try:
                msg = messages.get_nowait()
            except queue_mod.Empty:
                return
            line = status_line(msg, index, n)
            if line:
                log(line)

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init,
                             initargs=(messages, stop, threads)) as pool:
        from .jobs import run_job

        name_of = {pool.submit(run_job, job): Path(job["run_dir"]).name for job in jobs}
        pending = set(name_of)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    try:
                        res = fut.result()
                    except Exception as err:
                        res = {"run": name_of[fut], "status": "failed", "error": f"{type(err).__name__}: {err}"}
                        log(f"[{index.get(name_of[fut], 0):>2}/{n}] {name_of[fut]}: FAILED ({res['error']})")
                    results.append(res)
                    if res["status"] == "interrupted":
                        interrupted = True
                    else:
                        bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            log("interrupt: the workers checkpoint their runs and stop (Ctrl-C again to abandon them)")
            for fut in pending:
                fut.cancel()
            for fut in pending:
                if not fut.cancelled():
                    try:
                        results.append(fut.result())
                    except Exception as err:
                        log(f"a worker failed while stopping: {err}")
        finally:
            drain()
            bar.close()
    return results, interrupted
