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


def _ema(values: np.ndarray, span: float) -> np.ndarray:
    """Exponential moving average that steps over NaNs instead of spreading them."""
    alpha, out, level = 2 / (span + 1), np.full_like(values, np.nan), None
    for i, v in enumerate(values):
        if np.isfinite(v):
            level = v if level is None else alpha * v + (1 - alpha) * level
            out[i] = level
    return out


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
        ax.text(0, y, " n/a", va="center", ha="left", fontsize=8, color=colour)
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


def relative_gains(points: list, path: Path) -> Path:
    """Relative gain (%) of each Free arm over its baseline, per benchmark grouped by suite,
    with the CI as error bars; faded, hatched bars are not significant. `points` are dicts
    or objects with task, suite, arm, rel_gain, rel_ci_low, rel_ci_high (fractions, None
    when the baseline scored 0) and significant."""
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
        ax.set_title("Free Transformer vs baseline: relative gain per benchmark")
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
        smooth = len(values) >= 100  # raw noise hides the trend on long runs
        ax.plot(steps, values, color=colours[label], linewidth=1.0,
                alpha=0.3 if smooth else 1.0, label=None if smooth else label)
        if smooth:
            ax.plot(steps, _ema(values, len(values) / 50), color=colours[label],
                    linewidth=1.6, label=label)
    what = "cross-entropy" if keys == {"ce"} else "loss" if keys == {"loss"} else "CE / loss"
    ax.set_ylabel(f"training {what}\n(nats/token)")
    ax.set_title("Training")
    if keys:
        _legend_right(ax)
    else:
        _no_data(ax, "no ce or loss in the records")


VAL_STYLES = {"val_ce": "-", "val_ce_prior": "-", "val_elbo": "--"}


def _plot_validation(ax, curves: dict[str, list[dict]], colours: dict[str, str]) -> None:
    """Likelihood bounds only (val_kl_bits is bits of KL, not a CE)."""
    for label, records in curves.items():
        keys = sorted({k for r in records for k in r
                       if k.startswith("val_") and k != "val_kl_bits"})
        for key in keys:
            steps, values = _series(records, key)
            ax.plot(steps, values, VAL_STYLES.get(key, ":"), color=colours[label], marker="o",
                    markersize=3.5, linewidth=1.3, label=f"{label}: {key[4:]}")
    ax.set_ylabel("validation\n(nats/token)")
    ax.set_title("Validation CE (Free arms: under prior Z; ELBO dashed)")
    _legend_right(ax)


def _plot_kl(ax, curves: dict[str, list[dict]], colours: dict[str, str]) -> None:
    for label, records in curves.items():
        if not _is_free(records):
            continue
        steps, values = _series(records, "kl_bits")
        ax.plot(steps, values, color=colours[label], linewidth=1.2, label=f"{label}: KL")
        _, kappas = _series(records, "kappa_bits")
        kappa = _last_finite(kappas)
        if kappa is not None:
            ax.axhline(kappa, color=colours[label], linestyle="--", linewidth=1.1,
                       label=f"{label}: \u03ba = {kappa:g}")
    ax.set_ylabel("KL (bits/token)")
    ax.set_title("Free arms: KL per token, \u03ba dashed")
    ax.set_ylim(bottom=0)
    _legend_right(ax)


def _has_validation(curves: dict[str, list[dict]]) -> bool:
    return any(k.startswith("val_") and k != "val_kl_bits"
               for records in curves.values() for r in records for k in r)


def _legend_right(ax, handles: list | None = None) -> None:
    """Beside the panel, not on it: curves fill the axes, and panels stay equally wide."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777777")


def training_curves(curves: dict[str, list[dict]], path: Path) -> Path:
    """Training CE by step for every arm; validation likelihoods where logged; for Free arms
    the KL in bits per token with each arm's κ as a dashed line. `curves` maps an arm label
    to its metrics.jsonl records."""
    _check_curves(curves, "training_curves")
    colours = arm_colours(list(curves))
    panels = [_plot_training]
    if _has_validation(curves):
        panels.append(_plot_validation)
    if any(_is_free(r) for r in curves.values()):
        panels.append(_plot_kl)
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
                  height: float) -> float:
    if ratio is None:
        ax.text(0, y, "  not measured", va="center", ha="left", fontsize=8, color="#777777")
        return 0.0
    value = 100 * (ratio - 1)
    ax.barh(y, value, height=height, color=colour, hatch=hatch, edgecolor="#555555"
            if hatch else colour, linewidth=0.6)
    ax.text(value, y, f"  {_pct(value)}  ", va="center", ha="left" if value >= 0 else "right",
            fontsize=8, color="#333333")
    return value


def overhead_bars(rows: list[tuple[str, float | None, float | None]], path: Path) -> Path:
    """Overhead of the Free arm as (Free/baseline - 1) in %, one bar per quantity, the
    paper's stated overhead beside it when given. `rows` are (label, ratio, paper_ratio)."""
    if not rows:
        raise ValueError("overhead_bars: no rows to plot")
    with_paper = any(_finite(paper) is not None for _, _, paper in rows)
    height = 0.38 if with_paper else 0.6
    with _canvas(path, 8.5, max(2.4, 0.9 + 0.5 * len(rows))) as fig:
        ax = fig.add_subplot()
        extents = [0.0]
        for k, (_, ratio, paper) in enumerate(rows):
            y = -k
            run_y = y + height / 2 if with_paper else y
            extents.append(_overhead_bar(ax, run_y, _finite(ratio), FREE_COLOURS[0], None,
                                         height))
            if _finite(paper) is not None:
                extents.append(_overhead_bar(ax, y - height / 2, _finite(paper), PAPER_COLOUR,
                                             "///", height))
        ax.set_yticks([-k for k in range(len(rows))], [str(r[0]) for r in rows])
        ax.axvline(0, color="#222222", linewidth=1.0)
        _pad_xlim(ax, extents)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("overhead: Free / baseline \u2212 1 (%)")
        ax.set_title("Cost of the Free Transformer over the baseline")
        handles = [Patch(color=FREE_COLOURS[0], label="this run")]
        if with_paper:
            handles.append(Patch(facecolor=PAPER_COLOUR, edgecolor="#555555", hatch="///",
                                 label="paper (its scale)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return Path(path)


# ---------------------------------------------------------------------------------------
# Latent diagnostics

def collapsed(records: list[dict], collapse_bits: float) -> bool:
    """True when the arm's last finite KL per token is below `collapse_bits`."""
    last = _last_finite(_series(records, "kl_bits")[1])
    return last is not None and last < collapse_bits


def _kl_scale(ax, free: dict[str, list[dict]]) -> None:
    """Log scale when KL spans decades (collapse and growth are both visible then)."""
    values = np.concatenate([_series(r, "kl_bits")[1] for r in free.values()])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
        # The default log labels are mathtext, which STYLE turns off for user strings.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0)


def _plot_latent_kl(ax, free: dict[str, list[dict]], colours: dict[str, str],
                    collapse_bits: float) -> None:
    for label, records in free.items():
        tag = " (collapsed)" if collapsed(records, collapse_bits) else ""
        steps, values = _series(records, "kl_bits")
        ax.plot(steps, values, color=colours[label], linewidth=1.2, label=f"{label}{tag}")
        vsteps, vvalues = _series(records, "val_kl_bits")
        if len(vsteps):
            ax.plot(vsteps, vvalues, "o", color=colours[label], markersize=4,
                    markerfacecolor="white", label=f"{label}: validation")
        kappa = _last_finite(_series(records, "kappa_bits")[1])
        if kappa is not None:
            ax.axhline(kappa, color=colours[label], linestyle="--", linewidth=1.0)
    ax.axhline(collapse_bits, color="#999999", linestyle=":", linewidth=1.0)
    _kl_scale(ax, free)
    handles = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], color="#555555", linestyle="--", label="\u03ba (free bits)"),
                Line2D([], [], color="#999999", linestyle=":",
                       label=f"collapse threshold ({collapse_bits:g} bit)")]
    _legend_right(ax, handles)
    ax.set_ylabel("KL (bits/token)")


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
                       collapse_bits: float = 0.01) -> Path:
    """For Free arms (records with kl_bits): KL per token by step against κ, and the share
    of tokens above κ where logged. An arm whose final KL is below `collapse_bits` is
    labelled "collapsed" in the legend and the title."""
    _check_curves(curves, "latent_diagnostics")
    free = {label: records for label, records in curves.items() if _is_free(records)}
    if not free:
        raise ValueError("latent_diagnostics: no Free arm (no record has kl_bits)")
    colours = arm_colours(list(curves))
    gone = [label for label, records in free.items() if collapsed(records, collapse_bits)]
    with_frac = any("frac_above_kappa" in r for records in free.values() for r in records)
    with _canvas(path, 8.5, 0.5 + 3.0 * (2 if with_frac else 1)) as fig:
        axes = fig.subplots(2 if with_frac else 1, 1, sharex=True, squeeze=False)[:, 0]
        _plot_latent_kl(axes[0], free, colours, collapse_bits)
        title = "Latent: KL per token"
        axes[0].set_title(title + (f" \u2014 collapsed: {', '.join(gone)}" if gone else ""),
                          color="#b00020" if gone else "black")
        if with_frac:
            _plot_frac_above(axes[1], free, colours)
        axes[-1].set_xlabel("step")
        fig.align_ylabels(axes)
    return Path(path)
