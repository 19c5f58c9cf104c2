"""The figure of the view across sizes (ftbench.report.sizes): per benchmark, the
baseline's score and each Free arm's gain, in points and relative, against training FLOPs
on a log axis. Drawn with the report's style and arm colours (ftbench.report.plots)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import NullLocator

from ftbench.report.collect import HEADLINE
from ftbench.report.plots import BASE_COLOURS, _canvas, arm_colours
from ftbench.report.sizes import SizePoint, free_arms, tasks_in_order


def _by_x(points: list[SizePoint]) -> list[SizePoint]:
    return sorted(points, key=lambda p: (p.train_flops, p.run))


def _draw_gain(ax, pts: list[SizePoint], colour: str, label: str, relative: bool) -> None:
    if relative:
        pts = [p for p in pts if p.rel_gain is not None and p.rel_ci_low is not None]
        ys = [100 * p.rel_gain for p in pts]
        lo = [100 * p.rel_ci_low for p in pts]
        hi = [100 * p.rel_ci_high for p in pts]
    else:
        ys = [100 * p.diff for p in pts]
        lo = [100 * p.ci_low for p in pts]
        hi = [100 * p.ci_high for p in pts]
    if not pts:
        return
    xs = [p.train_flops for p in pts]
    ax.plot(xs, ys, "-", color=colour, lw=1.2, alpha=0.7, label=label)
    # The interval's ends as they are: a percentile interval of a ratio need not hold its
    # point estimate, which error bars (lengths either side of the point) cannot show.
    ax.vlines(xs, lo, hi, colors=colour, lw=1.0)
    ax.plot(xs + xs, lo + hi, "_", color=colour, ms=8)
    for x, y, p in zip(xs, ys, pts):
        ax.plot([x], [y], "o", ms=6, color=colour,
                markerfacecolor=colour if p.significant else "white", markeredgewidth=1.4)


def _flops_axis(ax, base: list[SizePoint], lo: float, hi: float) -> None:
    """Log x with a labelled tick at each size (its baseline's FLOPs): a ladder spans a
    decade or two, where the default log ticks would label nothing or every minor tick."""
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks([p.train_flops for p in base],
                  [f"{p.size}\n{p.train_flops:.2g}" for p in base])


def gains_vs_compute(points: list[SizePoint], path: Path) -> Path:
    """One row per benchmark: baseline score (%), gain in points, relative gain (%), each
    against the arm's training FLOPs (log x). Returns `path`."""
    tasks = tasks_in_order(points)
    arms = free_arms(points)
    colours = arm_colours(["baseline", *arms])
    xs = [p.train_flops for p in points]
    lo, hi = min(xs) / 1.6, max(xs) * 1.6  # one range for every panel: sizes line up
    with _canvas(path, 13.0, 2.9 * len(tasks) + 0.9) as fig:
        axes = fig.subplots(len(tasks), 3, squeeze=False)
        for i, task in enumerate(tasks):
            mine = [p for p in points if p.task == task]
            base = _by_x([p for p in mine if p.arm == "baseline"])
            ax = axes[i][0]
            ax.plot([p.train_flops for p in base], [100 * p.score for p in base], "-o",
                    color=BASE_COLOURS[0], ms=6, label="baseline")
            for p in base:
                ax.annotate(p.size, (p.train_flops, 100 * p.score), textcoords="offset points",
                            xytext=(4, 5), fontsize=8, color=BASE_COLOURS[0])
            ax.set_ylabel(f"{task}\n{HEADLINE[task]} (%)")
            ax.set_title("baseline score" if i == 0 else "")
            for j, relative in ((1, False), (2, True)):
                ax = axes[i][j]
                ax.axhline(0, color="#888888", lw=0.8)
                for arm in arms:
                    _draw_gain(ax, _by_x([p for p in mine if p.arm == arm]), colours[arm],
                               arm, relative)
                ax.set_ylabel("gain (points)" if not relative else "relative gain (%)")
                if i == 0:
                    ax.set_title("Free - baseline, points" if not relative
                                 else "(Free - baseline) / baseline")
            for ax in axes[i]:
                _flops_axis(ax, base, lo, hi)
                if i == len(tasks) - 1:
                    ax.set_xlabel("training FLOPs (log; ticks at each size's baseline)")
        handles, labels = axes[0][1].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6),
                       title="Free arms (hollow: 95 % interval holds 0)")
    return Path(path)
