"""The main job's markdown report, built from run directories alone (their ``evaluation.json``).

``write_report(run_dirs, path, header=...)`` renders: per data set, tables of sample quality against
the number of sampling steps N (one row per method, one column per N), the flow-map error against
the oracle where the data set has one, the detectors that fired, the training status and times of
every run, the wall time of the job and the list of figures. Every number in a table is
``format_number`` of a value read from an evaluation.json (so a test can compare them exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..rundir import atomic_write_text
from .evaluate import read_evaluation

#: metric name -> (title, what it is); the order of the tables
METRIC_TITLES = {
    "kl": ("histogram KL(data || model)", "KL between 2-D histograms of data and model samples"),
    "w2": ("W2", "exact 2-Wasserstein distance between the sample sets (POT)"),
    "sliced_w2": ("sliced W2", "256 random projections, exact 1-D W2 each"),
    "mmd2": ("MMD^2", "unbiased, sum of 5 RBF kernels at 0.25-4x the median distance"),
    "energy": ("energy distance", "2 E|X - Y| - E|X - X'| - E|Y - Y'|"),
    "drift": ("drift |x^(N) - x^(1)|", "RMS distance of the N-step sample to the 1-step sample from the same noise"),
}
#: the metrics shown first for each data set (the others follow under "further metrics")
HEADLINE = {"checkerboard": ("kl", "w2"), "gmm": ("w2", "energy")}


def format_number(v: object) -> str:
    """How every number appears in the report: 4 significant digits, "n/a" for a missing value."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}"


def load_evaluations(run_dirs: Sequence[str | Path]) -> list[dict]:
    """The evaluation.json of every run directory that has one, in the given order."""
    out = []
    for rd in run_dirs:
        doc = read_evaluation(rd)
        if doc is not None:
            out.append(doc | {"run_dir": str(rd)})
    return out


def _table(head: list[str], rows: list[list[str]], *, text_columns: int = 1) -> list[str]:
    """A markdown table; the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    align = [":---"] * text_columns + ["---:"] * (len(head) - text_columns)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def metric_table(evals: list[dict], metric: str) -> list[str]:
    """Rows = methods, columns = N; the data floor (two independent data samples) in the last row."""
    steps = evals[0]["steps"]
    rows = [[e["method"], *[format_number(v) for v in e["quality"].get(metric, [None] * len(steps))]] for e in evals]
    if metric != "drift":
        floor = evals[0]["floor"].get(metric)
        rows.append(["*data vs data*", *[format_number(floor)] * len(steps)])
    return _table(["method", *[f"N = {k}" for k in steps]], rows)


def oracle_table(evals: list[dict]) -> list[str]:
    """RMS |x^(N)(x0) - X_{0,1}(x0)| per N and the one-jump map error on the triangle."""
    steps = evals[0]["steps"]
    rows = []
    for e in evals:
        o = e["oracle"]
        rows.append([e["method"], *[format_number(v) for v in o["steps_rmse"]], format_number(o["map_rmse"])])
    spread = format_number(evals[0]["oracle"]["map_spread"])
    return _table(["method", *[f"N = {k}" for k in steps], f"X_(s,t) on the triangle (spread {spread})"], rows)


def runs_table(evals: list[dict]) -> list[str]:
    """Status, steps done / planned, train and evaluation seconds, and the detectors that fired."""
    rows = []
    for e in evals:
        tr = e.get("training", {})
        fired = ", ".join(e.get("detectors", {}).get("fired", [])) or "none"
        steps = f"{tr.get('steps_done', e['step'])}/{tr.get('steps_planned', e['config']['steps'])}"
        rows.append([e["run"], tr.get("status", "?"), steps, format_number(tr.get("seconds")), format_number(e["seconds"]),
                     fired])
    head = ["run", "status", "steps", "train s", "eval s", "detectors fired (evaluated weights)"]
    table = _table(head, rows, text_columns=2)
    table[1] = "| :--- | :--- | ---: | ---: | ---: | :--- |"
    return table


def render_report(evals: list[dict], *, header: Sequence[str] = (), figures: Sequence[str | Path] = (),
                  notes: Sequence[str] = ()) -> str:
    """The report as markdown (module docstring); ``header`` lines go first."""
    md = ["# Main job report", "", *header, ""]
    if not evals:
        return "\n".join(md + ["No run has an evaluation.json yet.", ""])
    e0 = evals[0]
    spec = e0["spec"]
    md += ["## How the numbers were measured", "",
           f"Evaluated weights: {e0['model']} (the newest checkpoint of each run). N-step samples "
           f"x_(k+1) = X_(t_k, t_(k+1))(x_k), t_k = k/N, from x_0 ~ N(0, I); {spec['n']} model samples against "
           f"{spec['n']} fresh data samples for W2, sliced W2, MMD^2 and the energy distance, the same draws for "
           f"every method (seed {spec['seed']}). "
           + (f"Histogram KL: {spec['n_kl']} samples per side, {spec['kl_bins']} x {spec['kl_bins']} equal cells on "
              f"the box {spec['kl_box']}, additive smoothing 1e-6. " if spec.get("kl_box") else "")
           + "The row *data vs data* scores two independent data samples of the same sizes: "
           "the floor of each estimator at this sample size. Lower is better everywhere.", ""]
    by_data: dict[str, list[dict]] = {}
    for e in evals:
        by_data.setdefault(e["data"], []).append(e)
    for label, group in by_data.items():
        md += [f"## {label}", ""]
        present = [m for m in METRIC_TITLES if m in group[0]["quality"]]
        head = [m for m in HEADLINE.get(label, ("w2",)) if m in present]
        for m in head:
            title, what = METRIC_TITLES[m]
            md += [f"### {label}: {title} against the number of steps N", "", f"{what}.", "", *metric_table(group, m), ""]
        if all(e.get("oracle") for e in group):
            md += [f"### {label}: flow-map error against the oracle", "",
                   "RMS over noise draws of |x^(N)(x_0) - X_(0,1)(x_0)| (the N-step sample against the exact "
                   "flow map, ODE oracle in float64), and the RMS error of one jump X_hat_(s,t)(x) with (s, t) "
                   "uniform on the triangle s <= t and x ~ p_s (the spread is the error of predicting the mean).",
                   "", *oracle_table(group), ""]
        rest = [m for m in present if m not in head]
        if rest:
            md += [f"### {label}: further metrics", ""]
            for m in rest:
                title, what = METRIC_TITLES[m]
                md += [f"{title} ({what}):", "", *metric_table(group, m), ""]
    md += ["## Runs, training status and detectors", "",
           "Detectors: workbench.diagnostics.diagnose on the evaluated weights (reference flow where the data "
           "set has one), written by the diagnosis callback at the end of training (diagnosis.md in each run "
           "directory has the evidence).", "", *runs_table(evals), ""]
    fired = [(e["run"], k, v) for e in evals for k, v in e.get("detectors", {}).get("evidence", {}).items()]
    if fired:
        md += ["Evidence of the detectors that fired:", ""] + [f"- {run} / {k}: {v}" for run, k, v in fired] + [""]
    missing = [(e["run"], k, v) for e in evals for k, v in list(e.get("errors", {}).items())[:3]]
    if missing:
        md += ["Values shown as n/a (the evaluation could not compute them):", ""]
        md += [f"- {run} / {k}: {v}" for run, k, v in missing] + [""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if figures:
        md += ["## Figures", "", *[f"- {p}" for p in figures], ""]
    return "\n".join(md)


def write_report(run_dirs: Sequence[str | Path], path: str | Path, *, header: Sequence[str] = (),
                 figures: Sequence[str | Path] = (), notes: Sequence[str] = ()) -> Path:
    """Render the report of ``run_dirs`` (``render_report``, grouped by the data set of each run's
    config) and write it to ``path`` atomically."""
    evals = load_evaluations(run_dirs)
    return atomic_write_text(path, render_report(evals, header=header, figures=figures, notes=notes))


def report_values(run_dirs: Sequence[str | Path]) -> dict:
    """{run: {metric: [values per N]}} as the report formats them (for checking a report)."""
    return {e["run"]: {m: [format_number(v) for v in vals] for m, vals in e["quality"].items()}
            for e in load_evaluations(run_dirs)}


__all__ = ["format_number", "load_evaluations", "metric_table", "oracle_table", "render_report", "report_values",
           "write_report"]
