"""The report's PNG figures, drawn from results and metrics.jsonl records only.

Figures are built on matplotlib's object API with an Agg canvas and styled inside an
rc_context, so drawing a report neither switches the backend of nor restyles a user's
interactive session. Each arm keeps one colour in every figure: baselines in greys, Free
arms from a colour-blind-safe palette in sorted order.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter
except ImportError as e:  # not a core dependency: only reports draw
    raise ImportError("ftbench report figures need matplotlib: pip install matplotlib") from e

from ftbench.report.render import write_atomic

DPI = 120
FREE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B")
BASE_COLOURS = ("#4d4d4d", "#8c8c8c", "#1a1a1a", "#b3b3b3")
PAPER_COLOUR = "#b0b7bf"
SUITE_ORDER = {"code": 0, "math": 1, "qa": 2}
SUITE_NAMES = {"code": "Code", "math": "Math", "qa": "QA"}
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "legend.frameon": False, "hatch.linewidth": 0.8,
    # Arm and task names are user strings: a "$" must not start mathtext.
    "text.parse_math": False,
}


@contextmanager
def _canvas(path: Path, width: float, height: float) -> Iterator[Figure]:
    """A figure to draw on; on success it is written to `path` as a PNG, atomically."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    write_atomic(Path(path), buf.getvalue())


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def _finite(x: Any) -> float | None:
    """A float, or None for missing, None, NaN, inf or non-numeric values."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _is_baseline(label: str) -> bool:
    return label.rsplit("/", 1)[-1].startswith("baseline")


def arm_colours(labels: list[str]) -> dict[str, str]:
    """Colour by name, not by position in one figure, so each arm matches across figures."""
    base = sorted(a for a in set(labels) if _is_baseline(a))
    free = sorted(a for a in set(labels) if not _is_baseline(a))
    colours = {a: BASE_COLOURS[i % len(BASE_COLOURS)] for i, a in enumerate(base)}
    colours.update({a: FREE_COLOURS[i % len(FREE_COLOURS)] for i, a in enumerate(free)})
    return colours


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records holding `key`; bad values become NaN, which
    matplotlib draws as a gap. A record without "step" counts by its position."""
    steps, values = [], []
    for i, r in enumerate(records):
        if key in r:
            step = _finite(r.get("step"))
            steps.append(i + 1 if step is None else step)
            v = _finite(r[key])
            values.append(np.nan if v is None else v)
    return np.asarray(steps, float), np.asarray(values, float)


def _last_finite(values: np.ndarray) -> float | None:
    ok = values[np.isfinite(values)]
    return float(ok[-1]) if len(ok) else None


def smoothing_window(n_steps: int) -> int:
    """Steps in the running mean: about 1/15 of the run, at least 5 (at most the run)."""
    return max(1, min(n_steps, max(5, n_steps // 15), 200))


def running_mean(values: np.ndarray, window: int, centred: bool = False) -> np.ndarray:
    """Mean over `window` steps at each step, NaNs skipped: trailing (the last `window`
    steps), or centred on the step for drawing, where a trailing mean would lag the raw
    line by half a window (the window shrinks at the ends)."""
    out = np.full_like(values, np.nan, dtype=float)
    before = window // 2 if centred else window - 1
    after = window - 1 - before if centred else 0
    for i in range(len(values)):
        chunk = values[max(0, i - before):i + after + 1]
        chunk = chunk[np.isfinite(chunk)]
        if len(chunk):
            out[i] = chunk.mean()
    return out


def final_running(records: list[dict], key: str) -> tuple[float, float, int] | None:
    """(mean, sd, window) of `key` over the last smoothing_window steps: the value the
    smoothed curve ends at. One batch is noisy; the last few steps' mean is the figure."""
    _, values = _series(records, key)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    k = smoothing_window(len(values))
    tail = values[-k:]
    return float(tail.mean()), float(tail.std(ddof=1)) if len(tail) > 1 else 0.0, k


def _check_curves(curves: dict[str, list[dict]], what: str) -> None:
    if not curves:
        raise ValueError(f"{what}: no arms given; pass {{arm label: metrics.jsonl records}}")
    empty = [label for label, records in curves.items() if not records]
    if empty:
        raise ValueError(f"{what}: no metrics records for {', '.join(empty)}; drop those arms "
                         "or check models/<run>/<arm>/metrics.jsonl")


def _pct(x: float) -> str:
    return f"{x:+.1f} %"


# ---------------------------------------------------------------------------------------
# Relative gains

def _task_rows(points: list) -> list[tuple[str, str | None]]:
    """Top-down rows: (suite, None) headers and (suite, task) bars, in suite order."""
    first_seen: dict[str, tuple[int, str, int]] = {}
    for i, p in enumerate(points):
        task, suite = str(_get(p, "task")), str(_get(p, "suite", "") or "")
        # Unknown suites go last, each kept together (by name) so it gets one header.
        first_seen.setdefault(task, (SUITE_ORDER.get(suite.lower(), len(SUITE_ORDER)), suite, i))
    rows: list[tuple[str, str | None]] = []
    for task, (_, suite, _) in sorted(first_seen.items(), key=lambda kv: kv[1]):
        if not rows or rows[-1][0] != suite:
            rows.append((suite, None))
        rows.append((suite, task))
    return rows


def _row_positions(rows: list[tuple[str, str | None]]) -> list[float]:
    """y of each row, top-down; a suite header sits closer to its first benchmark than to
    the previous suite's bars."""
    ys, y = [], 0.0
    for k, (_, task) in enumerate(rows):
        if k:
            y -= 0.8 if task and rows[k - 1][1] is None else 0.9 if task is None else 1.0
        ys.append(y)
    return ys


def _gain_bar(ax, y: float, height: float, p: Any, colour: str) -> float:
    """One arm's bar for one task; returns the x extent its label reached."""
    gain = _finite(_get(p, "rel_gain"))
    if gain is None:
        # Only a zero baseline leaves a gain undefined (stats.compare).
        ax.text(0, y, " n/a: baseline scored 0", va="center", ha="left", fontsize=8,
                color=colour)
        return 0.0
    value, significant = 100 * gain, bool(_get(p, "significant", False))
    ax.barh(y, value, height=height, color=colour, alpha=1.0 if significant else 0.35,
            hatch=None if significant else "////", edgecolor=colour, linewidth=0.8)
    lo, hi = _finite(_get(p, "rel_ci_low")), _finite(_get(p, "rel_ci_high"))
    end = value
    if lo is not None and hi is not None:
        lo, hi = 100 * min(lo, gain), 100 * max(hi, gain)
        ax.errorbar(value, y, xerr=[[value - lo], [hi - value]], fmt="none", ecolor="#333333",
                    elinewidth=0.9, capsize=2.5)
        end = hi if value >= 0 else lo
    ax.text(end, y, f"  {_pct(value)}  ", va="center", ha="left" if value >= 0 else "right",
            fontsize=8, color="#333333")
    return end


def relative_gains(points: list, path: Path, subtitle: str | None = None,
                   watermark: str | None = None) -> Path:
    """Relative gain (%) of each Free arm over its baseline, per benchmark grouped by suite,
    with the CI as error bars; faded, hatched bars are not significant. `points` are dicts
    or objects with task, suite, arm, rel_gain, rel_ci_low, rel_ci_high (fractions, None
    when the baseline scored 0) and significant. `subtitle` (the protocol and item counts)
    goes under the title and `watermark` (a smoke run's warning) across the plot, so that a
    copied figure keeps them."""
    if not points:
        raise ValueError("relative_gains: no points to plot (no Free arm was compared)")
    arms = list(dict.fromkeys(str(_get(p, "arm")) for p in points))
    colours = arm_colours(arms)
    rows = _task_rows(points)
    height = 1.3 + 0.3 * sum(max(len(arms), 1.5) if task else 0.8 for _, task in rows)
    with _canvas(path, 8.5, max(2.6, height)) as fig:
        ax = fig.add_subplot()
        extents = _draw_gain_rows(ax, rows, arms, colours, points)
        ax.axvline(0, color="#222222", linewidth=1.0)
        _pad_xlim(ax, extents)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("relative gain over the baseline (%)")
        title = "Free Transformer vs baseline: relative gain per benchmark"
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""),
                     fontsize=None if not subtitle else 9)
        if watermark:
            ax.text(0.5, 0.5, watermark, transform=ax.transAxes, ha="center", va="center",
                    rotation=20, fontsize=22, color="#cc0000", alpha=0.18, zorder=0)
        _gain_legend(fig, arms, colours, points)
    return Path(path)


def _draw_gain_rows(ax, rows: list[tuple[str, str | None]], arms: list[str],
                    colours: dict[str, str], points: list) -> list[float]:
    """Bars for every (task, arm), suite headers in bold; returns the x extents drawn."""
    by_key = {(str(_get(p, "task")), str(_get(p, "arm"))): p for p in points}
    ys, slot, extents = _row_positions(rows), 0.8 / len(arms), [0.0]
    for k, ((_, task), y) in enumerate(zip(rows, ys)):
        if task is None and k:
            ax.axhline(y + 0.45, color="#cccccc", linewidth=0.8)  # between suites
        for a, arm in enumerate(arms if task else []):
            p = by_key.get((task, arm))
            if p is not None:
                offset = (a - (len(arms) - 1) / 2) * slot
                extents.append(_gain_bar(ax, y - offset, slot * 0.9, p, colours[arm]))
    ax.set_yticks(ys, [task or SUITE_NAMES.get(suite.lower(), suite or "other")
                       for suite, task in rows])
    for tick, (_, task) in zip(ax.get_yticklabels(), rows):
        if task is None:
            tick.set_fontweight("bold")
    return extents


def _pad_xlim(ax, extents: list[float]) -> None:
    lo, hi = min(extents + [0.0]), max(extents + [0.0])
    span = max(hi - lo, 10.0)
    ax.set_xlim(lo - 0.18 * span, hi + 0.18 * span)


def _gain_legend(fig, arms: list[str], colours: dict[str, str], points: list) -> None:
    handles = [Patch(facecolor=colours[a], edgecolor=colours[a], label=a) for a in arms]
    if any(not _get(p, "significant", False) and _finite(_get(p, "rel_gain")) is not None
           for p in points):
        handles.append(Patch(facecolor="white", edgecolor="#666666", hatch="////",
                             label="not significant (p \u2265 0.05)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))


# ---------------------------------------------------------------------------------------
# Training curves

def _is_free(records: list[dict]) -> bool:
    return any("kl_bits" in r for r in records)


def _plot_training(ax, curves: dict[str, list[dict]], colours: dict[str, str]) -> None:
    keys = set()
    for label, records in curves.items():
        key = "ce" if any("ce" in r for r in records) else "loss"
        steps, values = _series(records, key)
        if not len(steps):
            continue
        keys.add(key)
        # Per-batch values are noisy: the faint raw line keeps them visible, the bold running
        # mean shows the trend (the report's "final training CE" is its trailing form).
        k = smoothing_window(int(np.isfinite(values).sum()))
        smooth = k > 1
        ax.plot(steps, values, color=colours[label], linewidth=0.9,
                alpha=0.3 if smooth else 1.0, label=None if smooth else label)
        if smooth:
            ax.plot(steps, running_mean(values, k, centred=True), color=colours[label],
                    linewidth=1.7, label=f"{label} (running mean, {k} steps)")
    what = "cross-entropy" if keys == {"ce"} else "loss" if keys == {"loss"} else "CE / loss"
    ax.set_ylabel(f"training {what}\n(nats/token)")
    ax.set_title("Training")
    if keys:
        handles = ax.get_legend_handles_labels()[0]
        if any(h.get_label().endswith("steps)") for h in handles):
            handles.append(Line2D([], [], color="#4d4d4d", alpha=0.3, linewidth=0.9,
                                  label="each step's batch (faint)"))
        _legend_right(ax, handles)
    else:
        _no_data(ax, "no ce or loss in the records")


VAL_STYLES = {"val_ce": "-", "val_ce_prior": "-", "val_elbo": "--"}
# Validation keys in nats per token that bound -log p(S); the other val_ keys (KL, MI,
# logit spread) describe the latent and are drawn in the latent figure.
LIKELIHOOD_KEYS = tuple(VAL_STYLES)


def _plot_validation(ax, curves: dict[str, list[dict]], colours: dict[str, str]) -> None:
    """Likelihood bounds only."""
    for label, records in curves.items():
        keys = sorted({k for r in records for k in r if k in LIKELIHOOD_KEYS})
        for key in keys:
            steps, values = _series(records, key)
            ax.plot(steps, values, VAL_STYLES.get(key, ":"), color=colours[label], marker="o",
                    markersize=3.5, linewidth=1.3, label=f"{label}: {key[4:]}")
    ax.set_ylabel("validation\n(nats/token)")
    ax.set_title("Validation CE (Free arms: under prior Z; ELBO dashed)")
    _legend_right(ax)


def _has_validation(curves: dict[str, list[dict]]) -> bool:
    return any(k in LIKELIHOOD_KEYS for records in curves.values() for r in records for k in r)


def _legend_right(ax, handles: list | None = None) -> None:
    """Beside the panel, not on it: curves fill the axes, and panels stay equally wide."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777777")


def training_curves(curves: dict[str, list[dict]], path: Path) -> Path:
    """Training CE by step for every arm (raw, and its running mean), and validation
    likelihoods where logged. The KL is drawn once, in latent_diagnostics, beside what the
    latent carries. `curves` maps an arm label to its metrics.jsonl records."""
    _check_curves(curves, "training_curves")
    colours = arm_colours(list(curves))
    panels = [_plot_training]
    if _has_validation(curves):
        panels.append(_plot_validation)
    with _canvas(path, 8.5, 0.4 + 2.9 * len(panels)) as fig:
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, draw in zip(axes, panels):
            draw(ax, curves, colours)
        axes[-1].set_xlabel("step")
        fig.align_ylabels(axes)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Overhead

def _overhead_bar(ax, y: float, ratio: float | None, colour: str, hatch: str | None,
                  height: float, spread: float | None = None, note: str | None = None) -> float:
    """One bar; `note` marks a measurement that is not a finding: drawn hollow and grey,
    with the reason instead of a value."""
    if ratio is None:
        ax.text(0, y, "  not measured", va="center", ha="left", fontsize=8, color="#777777")
        return 0.0
    value = 100 * (ratio - 1)
    if note:
        ax.barh(y, value, height=height, color="none", hatch="xx", edgecolor="#b5b5b5",
                linewidth=0.6)
        ax.text(0, y, f"  {note}  ", va="center", ha="left" if value <= 0 else "right",
                fontsize=8, color="#8a8a8a", style="italic")
        return value
    ax.barh(y, value, height=height, color=colour, hatch=hatch, edgecolor="#555555"
            if hatch else colour, linewidth=0.6)
    end = value
    if spread:
        err = 100 * spread * ratio
        ax.errorbar(value, y, xerr=err, fmt="none", ecolor="#333333", elinewidth=0.9,
                    capsize=2.5)
        end = value + err if value >= 0 else value - err
    ax.text(end, y, f"  {_pct(value)}  ", va="center", ha="left" if value >= 0 else "right",
            fontsize=8, color="#333333")
    return end


def overhead_bars(rows: list[tuple], path: Path) -> Path:
    """Overhead of the Free arm as (Free/baseline - 1) in %, one bar per quantity, the
    paper's stated overhead beside it when given. `rows` are (label, ratio, paper_ratio),
    optionally followed by the ratio's relative spread (an error bar) and a note: a row
    with a note is a measurement not to be read as a finding (e.g. "unreliable: load 6.4"),
    drawn hollow and grey."""
    if not rows:
        raise ValueError("overhead_bars: no rows to plot")
    rows = [tuple(r) + (None,) * (5 - len(r)) for r in rows]
    with_paper = any(_finite(paper) is not None for _, _, paper, _, _ in rows)
    height = 0.38 if with_paper else 0.6
    with _canvas(path, 8.5, max(2.4, 0.9 + 0.5 * len(rows))) as fig:
        ax = fig.add_subplot()
        extents = [0.0]
        for k, (_, ratio, paper, spread, note) in enumerate(rows):
            y = -k
            run_y = y + height / 2 if with_paper else y
            extents.append(_overhead_bar(ax, run_y, _finite(ratio), FREE_COLOURS[0], None,
                                         height, _finite(spread), note))
            if note and _finite(ratio) is not None:
                # The note is written from 0 away from the bar: keep room for it there.
                extents.append(-0.8 * 100 * (_finite(ratio) - 1))
            if _finite(paper) is not None:
                extents.append(_overhead_bar(ax, y - height / 2, _finite(paper), PAPER_COLOUR,
                                             "///", height))
        ax.set_yticks([-k for k in range(len(rows))], [str(r[0]) for r in rows])
        for tick, row in zip(ax.get_yticklabels(), rows):
            if row[4]:
                tick.set_color("#8a8a8a")
        ax.axvline(0, color="#222222", linewidth=1.0)
        _pad_xlim(ax, extents)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("overhead: Free / baseline \u2212 1 (%)")
        ax.set_title("Cost of the Free Transformer over the baseline")
        handles = [Patch(color=FREE_COLOURS[0], label="this run")]
        if with_paper:
            handles.append(Patch(facecolor=PAPER_COLOUR, edgecolor="#555555", hatch="///",
                                 label="paper (its scale)"))
        if any(r[4] for r in rows):
            handles.append(Patch(facecolor="white", edgecolor="#b5b5b5", hatch="xx",
                                 label="measured, not a finding (see table)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return Path(path)


# ---------------------------------------------------------------------------------------
# Latent diagnostics

# Below this, values are drawn at the floor on a log axis (MI of an unused latent is ~0).
LOG_FLOOR = 1e-4


def collapsed(records: list[dict], collapse_bits: float) -> bool:
    """True when the arm's last finite KL per token is below `collapse_bits`."""
    last = _last_finite(_series(records, "kl_bits")[1])
    return last is not None and last < collapse_bits


def unused(records: list[dict], unused_bits: float) -> bool:
    """True when the arm's last validation MI is below `unused_bits` bit/token."""
    last = _last_finite(_series(records, "val_mi_bits")[1])
    return last is not None and last < unused_bits


def _bits_scale(ax, arrays: list[np.ndarray]) -> bool:
    """Log scale when the values span decades (KL against a near-zero MI, or a collapse);
    returns whether it is log."""
    values = np.concatenate(arrays) if arrays else np.array([])
    values = values[np.isfinite(values)]
    positive = values[values > 0]
    if len(positive) and (values.min() <= 0 or positive.max() / positive.min() > 20):
        ax.set_yscale("log")
        # The default log labels are mathtext, which STYLE turns off for user strings.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        return True
    ax.set_ylim(bottom=0)
    return False


def _plot_latent_bits(ax, free: dict[str, list[dict]], colours: dict[str, str],
                      collapse_bits: float, extra_mi: dict[str, tuple[float, float]]) -> None:
    """KL (what Z costs) and MI (what it carries) on one axis, in bits per token."""
    arrays = []
    for label, records in free.items():
        arrays.append(_series(records, "kl_bits")[1])
        arrays.append(_series(records, "val_mi_bits")[1])
    arrays += [np.array([v]) for _, v in extra_mi.values()]
    log = _bits_scale(ax, arrays)
    floor = (lambda v: np.maximum(v, LOG_FLOOR)) if log else (lambda v: v)
    clipped = False
    handles = []
    for label, records in free.items():
        c = colours[label]
        steps, values = _series(records, "kl_bits")
        k = smoothing_window(int(np.isfinite(values).sum()))
        ax.plot(steps, values, color=c, linewidth=0.8, alpha=0.3 if k > 1 else 1.0)
        handles += ax.plot(steps, running_mean(values, k, centred=True), color=c,
                           linewidth=1.6, label=f"{label}: KL (cost)")
        vsteps, vkl = _series(records, "val_kl_bits")
        if len(vsteps):
            ax.plot(vsteps, vkl, "o", color=c, markersize=4, markerfacecolor="white")
        msteps, mi = _series(records, "val_mi_bits")
        if len(msteps):
            clipped |= bool(np.any(mi[np.isfinite(mi)] < LOG_FLOOR)) and log
            handles += ax.plot(msteps, floor(mi), "s-.", color=c, markersize=5, linewidth=1.2,
                               label=f"{label}: MI (information carried)")
        elif label in extra_mi:
            step, value = extra_mi[label]
            clipped |= value < LOG_FLOOR and log
            handles += ax.plot([step], floor(np.array([value])), "s", color=c, markersize=7,
                               label=f"{label}: MI (measured after training)")
        kappa = _last_finite(_series(records, "kappa_bits")[1])
        if kappa is not None:
            # The legend entry is this line's own style and colour.
            handles.append(ax.axhline(kappa, color=c, linestyle="--", linewidth=1.0,
                                      label=f"{label}: \u03ba = {kappa:g} bit"))
    handles.append(ax.axhline(collapse_bits, color="#999999", linestyle=":", linewidth=1.0,
                              label=f"{collapse_bits:g} bit: collapsed (KL) / unused (MI)"))
    handles.append(Line2D([], [], color="#777777", marker="o", markerfacecolor="white",
                          linestyle="none", label="KL on validation"))
    if clipped:
        handles.append(Line2D([], [], color="none", label=f"(MI < {LOG_FLOOR:g} drawn at "
                                                          f"{LOG_FLOOR:g})"))
    _legend_right(ax, handles)
    ax.set_ylabel("bits / token")


def _plot_logit_spread(ax, free: dict[str, list[dict]], colours: dict[str, str]) -> None:
    for label, records in free.items():
        steps, values = _series(records, "val_logit_std")
        if len(steps):
            ax.plot(steps, values, "s-", color=colours[label], markersize=4, linewidth=1.2,
                    label=label)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("logit sd across\npositions")
    ax.set_title("Encoder bit logits: spread across positions (0: same posterior everywhere)")
    _legend_right(ax)


def _plot_frac_above(ax, free: dict[str, list[dict]], colours: dict[str, str]) -> None:
    for label, records in free.items():
        steps, values = _series(records, "frac_above_kappa")
        if len(steps):
            ax.plot(steps, 100 * values, color=colours[label], linewidth=1.2, label=label)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("tokens with KL > \u03ba (%)")
    ax.set_title("Share of tokens above the free-bits threshold")
    _legend_right(ax)


def latent_diagnostics(curves: dict[str, list[dict]], path: Path,
                       collapse_bits: float = 0.01, unused_bits: float = 0.01,
                       extra_mi: dict[str, tuple[float, float]] | None = None) -> Path:
    """For Free arms (records with kl_bits): the KL per token (its cost) and, at validation
    steps, the mutual information Z carries, against κ; the spread of the encoder's bit
    logits and the share of tokens above κ where logged. `extra_mi` gives (step, MI) for
    arms whose MI was measured after training. An arm whose KL ends below `collapse_bits`
    is "collapsed"; one whose MI ends below `unused_bits`, "latent unused" (title)."""
    _check_curves(curves, "latent_diagnostics")
    free = {label: records for label, records in curves.items() if _is_free(records)}
    if not free:
        raise ValueError("latent_diagnostics: no Free arm (no record has kl_bits)")
    extra_mi = extra_mi or {}
    colours = arm_colours(list(curves))
    gone = [label for label, records in free.items() if collapsed(records, collapse_bits)]
    idle = [label for label, records in free.items() if label not in gone and (
        unused(records, unused_bits) or (label in extra_mi and extra_mi[label][1] < unused_bits
                                         and not any("val_mi_bits" in r for r in records)))]
    panels = [lambda ax: _plot_latent_bits(ax, free, colours, collapse_bits, extra_mi)]
    if any("val_logit_std" in r for records in free.values() for r in records):
        panels.append(lambda ax: _plot_logit_spread(ax, free, colours))
    if any("frac_above_kappa" in r for records in free.values() for r in records):
        panels.append(lambda ax: _plot_frac_above(ax, free, colours))
    with _canvas(path, 8.5, 0.5 + 2.8 * len(panels)) as fig:
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, draw in zip(axes, panels):
            draw(ax)
        flags = ([f"collapsed (KL < {collapse_bits:g} bit): {', '.join(gone)}"] if gone else []
                 ) + ([f"latent unused (MI < {unused_bits:g} bit): {', '.join(idle)}"]
                      if idle else [])
        axes[0].set_title("KL paid vs information carried (MI)")
        if flags:
            fig.suptitle("; ".join(flags), color="#b00020", fontsize=11)
        axes[-1].set_xlabel("step")
        fig.align_ylabels(axes)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Benchmark scores over training

def _tokens_text(x: float, _=None) -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def score_curves(series: dict[str, dict], path: Path, title: str, ylabel: str,
                 last_third_from: float | None = None, subtitle: str | None = None,
                 band_label: str = "95 % interval", watermark: str | None = None) -> Path:
    """One benchmark's score against training tokens, a line per arm with its uncertainty
    band. `series` maps an arm label to {"tokens", "value", "lo", "hi"} (sequences, scores
    as fractions, drawn in %) and optionally "final" (booleans: the final export's point,
    drawn as a larger marker). `last_third_from` (tokens) shades the last third of
    training, the span the report averages over."""
    if not series:
        raise ValueError("score_curves: no arms to plot")
    colours = arm_colours(list(series))
    markers = ("o", "s", "^", "D", "v", "P", "X")
    with _canvas(path, 8.5, 4.2) as fig:
        ax = fig.add_subplot()
        if last_third_from is not None:
            ax.axvspan(last_third_from, max(max(s["tokens"]) for s in series.values()),
                       color="#f0e6c8", alpha=0.55, zorder=0, linewidth=0)
        for k, (label, s) in enumerate(sorted(series.items(),
                                              key=lambda kv: (not _is_baseline(kv[0]), kv[0]))):
            x = np.asarray(s["tokens"], float)
            y, lo, hi = (100 * np.asarray(s[key], float) for key in ("value", "lo", "hi"))
            c = colours[label]
            marker = markers[k % len(markers)]
            ax.fill_between(x, lo, hi, color=c, alpha=0.18, linewidth=0, zorder=1)
            ax.plot(x, lo, color=c, linewidth=0.6, alpha=0.6, zorder=1)
            ax.plot(x, hi, color=c, linewidth=0.6, alpha=0.6, zorder=1)
            # Baselines dashed and on top: where an arm scores the same, both stay visible.
            base = _is_baseline(label)
            ax.plot(x, y, color=c, marker=marker, markersize=4 if base else 5.5,
                    linewidth=1.6 if base else 2.0, label=label, zorder=5 if base else 3,
                    linestyle=(0, (5, 2)) if base else "-")
            final = np.asarray(s.get("final", [False] * len(x)), bool)
            if final.any():
                ax.plot(x[final], y[final], marker=marker, markersize=9, linestyle="none",
                        markerfacecolor="white", markeredgecolor=c, markeredgewidth=1.8,
                        zorder=4)
        ax.xaxis.set_major_formatter(FuncFormatter(_tokens_text))
        ax.set_xlabel("training tokens seen (per arm)")
        ax.set_ylabel(ylabel)
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""),
                     fontsize=None if not subtitle else 10)
        if watermark:
            ax.text(0.5, 0.5, watermark, transform=ax.transAxes, ha="center", va="center",
                    rotation=20, fontsize=22, color="#cc0000", alpha=0.15, zorder=0)
        handles = ax.get_legend_handles_labels()[0]
        handles.append(Patch(facecolor="#777777", alpha=0.25, label=band_label))
        if any(any(s.get("final", [])) for s in series.values()):
            handles.append(Line2D([], [], color="#555555", marker="o", markersize=8,
                                  markerfacecolor="white", linestyle="none",
                                  label="final export"))
        if last_third_from is not None:
            handles.append(Patch(facecolor="#f0e6c8", label="last third (averaged)"))
        _legend_right(ax, handles)
    return Path(path)
