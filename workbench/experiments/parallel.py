"""Run main-job runs in parallel worker processes with visible progress.

``run_jobs(jobs, names, workers=2, threads=1)`` starts ``workers`` spawned processes (one torch
thread each by default, :func:`workbench.experiments.jobs.init_worker`), runs
:func:`workbench.experiments.jobs.run_job` on each :class:`~workbench.experiments.specs.Job` and
prints a status line per :class:`~workbench.experiments.specs.ProgressMessage` the workers post
(start, every quarter of the steps, evaluation, done) above a tqdm bar over runs. Ctrl-C (or
SIGTERM, turned into KeyboardInterrupt by the caller with
:func:`workbench.experiments.stopping.sigterm_as_interrupt`) sets the workers' stop event: each
finishes its current step, writes a checkpoint and returns "interrupted"; queued runs are
cancelled or return at once. A run that raises is reported as "failed" and the others go on.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tqdm.auto import tqdm

from .jobs import init_worker, run_job
from .specs import Job, JobResult, ProgressMessage


def status_line(msg: ProgressMessage, index: dict[str, int], n: int) -> str:
    """The status line of a worker message."""
    tag = f"[{index.get(msg.run, 0):>2}/{n}] {msg.run}"
    if msg.kind == "start":
        return f"{tag}: training from step {msg.step} of {msg.total}"
    if msg.kind == "step":
        return f"{tag}: step {msg.step}/{msg.total}  loss {msg.loss:.4g}  ({msg.seconds:.0f} s)"
    if msg.kind == "evaluating":
        return f"{tag}: trained {msg.step} steps in {msg.seconds:.0f} s; evaluating"
    if msg.kind == "done":
        return f"{tag}: done ({msg.status}; train {msg.seconds:.0f} s, eval {msg.eval_seconds:.0f} s)"
    return f"{tag}: interrupted at step {msg.step} (checkpoint written; run again to resume)"


def run_jobs(jobs: Sequence[Job], names: Sequence[str], *, workers: int = 2, threads: int = 1, progress: bool = True,
             log: Callable[[str], None] | None = None) -> tuple[list[JobResult], bool]:
    """Run ``jobs`` (:func:`workbench.experiments.jobs.run_job` each) on ``workers`` processes;
    ``names`` are all run names of the plan (for the [k/n] tags and the bar). Returns (results,
    interrupted?)."""
    if not all(isinstance(j, Job) for j in jobs):
        raise TypeError("jobs must be workbench.experiments.specs.Job instances")
    for name, v in (("workers", workers), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not jobs:
        return [], False
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    index = {name: k + 1 for k, name in enumerate(names)}
    n = len(names)
    ctx = mp.get_context("spawn")
    messages, stop = ctx.Queue(), ctx.Event()
    bar = tqdm(total=n, initial=n - len(jobs), desc="main job runs", unit="run", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    results: list[JobResult] = []
    interrupted = False

    def drain() -> None:
        while True:
            try:
                msg = messages.get_nowait()
            except queue_mod.Empty:
                return
            log(status_line(msg, index, n))

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=init_worker,
                             initargs=(messages, stop, threads)) as pool:
        name_of = {pool.submit(run_job, job): job.name for job in jobs}
        pending = set(name_of)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    try:
                        res = fut.result()
                    except Exception as err:
                        res = JobResult(run=name_of[fut], status="failed", error=f"{type(err).__name__}: {err}")
                        log(f"[{index.get(name_of[fut], 0):>2}/{n}] {name_of[fut]}: FAILED ({res.error})")
                    results.append(res)
                    if res.status == "interrupted":
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
