"""Live training curves in a notebook: a trainer callback that redraws a figure every k steps.

    plot = LivePlot({"loss per term": ("loss", "terms/*"), "gradient norm": ("grad_norm",),
                     "flow-map error": ("oracle/map_rmse",)})
    for name in ("lsd", "esd"):
        Trainer(config(name), runs / name,
                callbacks=[FlowMapErrorCallback(flow, every=20), plot.callback(name, every=20)]).fit()

(``FlowMapErrorCallback`` is :class:`workbench.diagnostics.FlowMapErrorCallback`.)

One figure holds every run given to the same :class:`LivePlot` (colour = run, line style = metric),
and is updated in place in the notebook output (``IPython.display`` with a display id).

**What is drawn is what the run logged.** The callback reads the new complete lines of the run's
metrics log (``RunDir(run_dir).metrics``: the trainer's own metrics every ``log_every`` steps and whatever the
other callbacks return), so the picture and the run directory never disagree and the callback
itself logs nothing, draws no random numbers and never touches the model: attaching it leaves
training bit-identical. Metrics of the current step appear at the next redraw (the trainer writes a
step's line after its callbacks ran); ``on_train_end`` draws the finished run.

**Outside an IPython kernel** (scripts, tests, the command line) the callback does nothing during
training; at the end of training it reads the run's metrics once, so ``plot.figure()`` can still
draw them (e.g. to save). ``sink=`` replaces the display (any object with ``show(figure)``).
"""

from __future__ import annotations

import fnmatch
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..rundir import RunDir, read_jsonl
from ..training.callbacks import Callback, StepRecord, TrainContext

__all__ = ["DEFAULT_PANELS", "IPythonSink", "LivePlot", "LivePlotCallback", "MetricsTail", "draw_metrics",
           "in_ipython_kernel"]

#: panel title -> metric-name patterns (fnmatch): the loss and its terms, the gradient norm, the oracle error
DEFAULT_PANELS: dict[str, tuple[str, ...]] = {
    "loss per term": ("loss", "terms/*"),
    "gradient norm": ("grad_norm",),
    "flow-map error vs oracle": ("oracle/map_rmse",),
}

Series = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # run label -> metric -> (steps, values)
Draw = Callable[[Series, Mapping[str, Sequence[str]]], Any]


def in_ipython_kernel() -> bool:
    """True inside a Jupyter / IPython kernel (where ``IPython.display`` reaches a front end)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of every notebook stack
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class IPythonSink:
    """Shows a figure as a PNG in the notebook output, then replaces it in place on every update."""

    def __init__(self) -> None:
        self._handle = None

    def show(self, fig: Any) -> None:
        from IPython.display import Image, display

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        image = Image(data=buf.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def new_output(self) -> None:
        """Start a fresh output area at the next ``show`` (e.g. in a later cell)."""
        self._handle = None


class MetricsTail:
    """Incremental reader of a run's metrics log (``RunDir(run_dir).metrics``): ``read_new()`` returns
    the rows appended since the last call, as :func:`workbench.rundir.read_jsonl` reads them (a torn
    last line is left for the next call; a line that is not a JSON object is skipped with a warning
    naming the file). The log is parsed again only when its size has changed."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = RunDir(run_dir).metrics
        self._seen = 0
        self._size = -1

    def reset(self) -> None:
        """Read the log from its start at the next call."""
        self._seen, self._size = 0, -1

    def read_new(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size == self._size:
            return []
        rows = read_jsonl(self.path)
        self._size = size
        new = rows[self._seen:]
        self._seen = len(rows)
        return new


def _check_panels(panels: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(panels, Mapping) or not panels:
        raise TypeError(f"panels must be a non-empty mapping title -> metric-name patterns, got {panels!r}")
    out = {}
    for title, patterns in panels.items():
        if isinstance(patterns, str):
            patterns = (patterns,)
        if not isinstance(title, str) or not isinstance(patterns, (tuple, list)) or not patterns or \
                not all(isinstance(p, str) and p for p in patterns):
            raise TypeError(f"panels[{title!r}] must be a non-empty sequence of metric-name patterns "
                            f"(e.g. ('loss', 'terms/*')), got {patterns!r}")
        out[title] = tuple(patterns)
    return out


def _number(v: object) -> float | None:
    """A logged value as a float (JSON null, i.e. a non-finite value, is NaN); None for non-numbers."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _matching(series: Mapping[str, Any], patterns: Sequence[str]) -> list[str]:
    """Metric names matching the patterns, in pattern order, then name order."""
    out: list[str] = []
    for p in patterns:
        out += [k for k in sorted(series) if fnmatch.fnmatchcase(k, p) and k not in out]
    return out


def draw_metrics(series: Series, panels: Mapping[str, Sequence[str]], *, colors: Sequence[str] | None = None,
                 key_label: Callable[[str], str] | None = None, figsize: tuple[float, float] | None = None):
    """One panel per entry of ``panels`` (title -> metric-name patterns) against the optimiser step:
    colour = run label, line style = the metric's rank among the run's matches (pattern order, then
    name), so runs whose terms have different names share styles; log scale when every finite
    value is > 0, else linear. ``series``: run label -> metric name -> (steps, values). Returns a matplotlib Figure
    (created with ``matplotlib.figure.Figure``, so it is not registered with pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = _check_panels(panels)
    colors = list(colors) if colors else [f"C{k}" for k in range(10)]
    key_label = key_label or (lambda k: k)
    styles = ["-", "--", ":", "-."]
    n = len(panels)
    fig = Figure(figsize=figsize or (min(3.2 * n, 10.0), 2.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    labels = list(series)
    for ax, (title, patterns) in zip(axes, panels.items()):
        slots: list[list[str]] = []  # line style j: the metrics drawn with it (a run's j-th match)
        drawn = []
        for r, label in enumerate(labels):
            for j, key in enumerate(_matching(series[label], patterns)):
                steps, values = series[label][key]
                ax.plot(steps, values, color=colors[r % len(colors)], ls=styles[j % len(styles)],
                        marker="o" if len(steps) <= 25 else None, ms=2.5)
                drawn.append(values[np.isfinite(values)])
                if j == len(slots):
                    slots.append([])
                if key not in slots[j]:
                    slots[j].append(key)
        finite = np.concatenate(drawn) if drawn else np.zeros(0)
        if finite.size and np.all(finite > 0):
            ax.set_yscale("log")
        if not finite.size:
            ax.text(0.5, 0.5, "nothing logged yet", transform=ax.transAxes, ha="center", va="center", color="0.5")
        ax.set_title(title, loc="left")
        ax.set_xlabel("optimiser step")
        if len(slots) > 1:
            ax.legend([Line2D([], [], color="0.3", ls=styles[j % len(styles)]) for j in range(len(slots))],
                      [" / ".join(key_label(k) for k in keys) for keys in slots], fontsize=7, loc="best")
    if labels:
        handles = [Line2D([], [], color=colors[r % len(colors)]) for r in range(len(labels))]
        fig.legend(handles, labels, loc="outside upper right", ncols=max(len(labels), 1), fontsize=8, frameon=False)
    return fig


class LivePlot:
    """The metrics of one or more runs as one figure of panels, redrawn in place in a notebook.

    panels: title -> metric-name patterns (fnmatch, e.g. ``"terms/*"``), default
    :data:`DEFAULT_PANELS`; draw: ``draw(series, panels) -> Figure`` (default :func:`draw_metrics`;
    ``analysis.notebook_plots.live_curves`` draws in the house style); sink: where figures go:
    ``"auto"`` (an :class:`IPythonSink` inside an IPython kernel, else nowhere), None (nowhere),
    or any object with ``show(figure)``; min_interval_s: the least time between two redraws
    (``refresh(force=True)`` and the end of training ignore it).
    """

    def __init__(self, panels: Mapping[str, Sequence[str]] | None = None, *, draw: Draw | None = None,
                 sink: object = "auto", min_interval_s: float = 1.0) -> None:
        self.panels = _check_panels(DEFAULT_PANELS if panels is None else panels)
        if draw is not None and not callable(draw):
            raise TypeError(f"draw must be a callable (series, panels) -> Figure, got {type(draw).__name__}")
        if isinstance(sink, str):
            if sink != "auto":
                raise ValueError(f"sink must be 'auto', None or an object with show(figure), got {sink!r}")
            sink = IPythonSink() if in_ipython_kernel() else None
        elif sink is not None and not callable(getattr(sink, "show", None)):
            raise TypeError(f"sink must be 'auto', None or an object with show(figure), got {type(sink).__name__}")
        if isinstance(min_interval_s, bool) or not isinstance(min_interval_s, (int, float)) or \
                not (math.isfinite(min_interval_s) and min_interval_s >= 0):
            raise ValueError(f"min_interval_s must be a number >= 0, got {min_interval_s!r}")
        self.draw = draw or draw_metrics
        self.sink = sink
        self.min_interval_s = float(min_interval_s)
        self._data: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
        self._last_draw = -math.inf
        self.n_draws = 0

    @property
    def active(self) -> bool:
        """Whether figures go anywhere (False outside a kernel with ``sink="auto"``)."""
        return self.sink is not None

    def callback(self, label: str, every: int = 10) -> LivePlotCallback:
        """A trainer callback that feeds this plot under ``label`` and redraws every ``every`` steps."""
        return LivePlotCallback(self, label, every=every)

    def clear(self, label: str | None = None) -> None:
        """Forget one run's data (or every run's)."""
        if label is None:
            self._data.clear()
        else:
            self._data.pop(label, None)

    def add(self, label: str, rows: Sequence[Mapping[str, object]]) -> None:
        """Append metric rows (dicts with a ``step``, as in the run's metrics log) to run ``label``, keeping the
        numeric values of the metrics any panel asks for (JSON null = non-finite -> NaN)."""
        if not isinstance(label, str) or not label:
            raise TypeError(f"label must be a non-empty str, got {label!r}")
        patterns = [p for ps in self.panels.values() for p in ps]
        run = self._data.setdefault(label, {})
        for row in rows:
            step = row.get("step")
            if isinstance(step, bool) or not isinstance(step, int):
                raise ValueError(f"every row must carry an int 'step', got {row!r}")
            for key, v in row.items():
                if key == "step" or not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                    continue
                value = _number(v)
                if value is not None:
                    steps, values = run.setdefault(key, ([], []))
                    steps.append(step)
                    values.append(value)

    @property
    def series(self) -> Series:
        """run label -> metric name -> (steps (k,) int array, values (k,) float array)."""
        return {label: {k: (np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64))
                        for k, (s, v) in run.items()}
                for label, run in self._data.items()}

    def figure(self):
        """The figure of everything recorded so far (``draw(series, panels)``)."""
        return self.draw(self.series, self.panels)

    def refresh(self, force: bool = False) -> bool:
        """Redraw and send the figure to the sink (if active and ``min_interval_s`` has passed, or
        ``force``); returns whether it drew."""
        if not self.active or (not force and time.monotonic() - self._last_draw < self.min_interval_s):
            return False
        fig = self.figure()
        try:
            self.sink.show(fig)
        finally:
            _close(fig)
        self._last_draw = time.monotonic()
        self.n_draws += 1
        return True


def _close(fig: Any) -> None:
    """Release a figure (pyplot ones are unregistered so the inline backend does not show them again)."""
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except (ImportError, TypeError):  # pragma: no cover - a non-matplotlib draw function
        pass


class LivePlotCallback(Callback):
    """Feeds a :class:`LivePlot` with one run's logged metrics (module docstring).

    ``on_train_start`` (re)reads the run's metrics log from its start (so a resumed run shows its
    history), ``on_step_end`` every ``every`` steps reads the new lines and redraws,
    ``on_train_end`` reads the rest and draws the final figure. Returns no metrics.
    """

    def __init__(self, plot: LivePlot, label: str, every: int = 10) -> None:
        if not isinstance(plot, LivePlot):
            raise TypeError(f"plot must be a LivePlot, got {type(plot).__name__}")
        if not isinstance(label, str) or not label:
            raise TypeError(f"label must be a non-empty str, got {label!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (steps between redraws), got {every!r}")
        self.plot, self.label, self.every = plot, label, every
        self._tail: MetricsTail | None = None

    def _pull(self) -> None:
        self.plot.add(self.label, self._tail.read_new())

    def on_train_start(self, ctx: TrainContext) -> None:
        self._tail = MetricsTail(ctx.run_dir)
        self.plot.clear(self.label)
        if self.plot.active:
            self._pull()
            self.plot.refresh(force=True)

    def on_step_end(self, ctx: TrainContext, record: StepRecord) -> None:
        if self.plot.active and self._tail is not None:
            self._pull()
            self.plot.refresh()
        return None

    def on_train_end(self, ctx: TrainContext) -> None:
        if self._tail is None:
            return
        self._pull()
        self.plot.refresh(force=True)
