"""The main comparison table in the paper's shape: benchmarks (grouped code / math / QA)
by arms, each Free arm against the baseline of its run, with paired statistics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ftbench.report.collect import HEADLINE, SUITE_ORDER, ArmResults, ReportError, item_outcomes
from ftbench.report.frame import frame_from_arms, headline_scores
from ftbench.report.stats import PairedComparison, compare, paired_arrays

# Anchors from the paper, at the paper's scale (not the run's): relative gains.
PAPER_ANCHORS = {
    "humanevalplus": "1.5B/47B: up to +55 %",
    "mbppplus": "8B/1T (1/2 bit): +6.1 % (MBPP)",
    "gsm8k": "8B/200B: > +20 %; 8B/1T: +5.8 %",
    "mmlu": "8B/1T: +5.2 %",
    "commonsense_qa": "8B/200B: +26 %",
}


@dataclass
class Cell:
    score: float
    comparison: PairedComparison | None  # None for the baseline column


def main_table(arms: list[ArmResults], n_boot: int = 10_000, frame=None) -> tuple[
        list[str], list[str], dict]:
    """(tasks in display order, arm labels, {(task, arm label): Cell}). Scores come from
    the results frame (ftbench.report.frame), the table `ftbench results` writes."""
    scores = headline_scores(frame_from_arms(arms) if frame is None else frame)
    by_run: dict[str, dict[str, ArmResults]] = {}
    for a in arms:
        by_run.setdefault(a.run, {})[a.arm] = a
    cells, labels = {}, []
    tasks = sorted({t for a in arms for t in a.results if t in HEADLINE},
                   key=lambda t: (SUITE_ORDER[next(iter(a.results[t]["suite"]
                                                       for a in arms if t in a.results))], t))
    for run, run_arms in by_run.items():
        if "baseline" not in run_arms:
            raise ReportError(f"run {run!r} has no baseline results "
                              f"(arms: {', '.join(run_arms)}); evaluate models/{run}/baseline")
        base = run_arms["baseline"]
        for name, arm in run_arms.items():
            label = f"{run}/{name}" if len(by_run) > 1 else name
            labels.append(label)
            for task in tasks:
                if task not in arm.results:
                    continue
                r = arm.results[task]
                score = scores[(run, name, task)]
                comparison = None
                if name != "baseline" and task in base.results:
                    a, b = paired_arrays(item_outcomes(base.results[task]), item_outcomes(r))
                    comparison = compare(a, b, n_boot=n_boot)
                cells[(task, label)] = Cell(score, comparison)
    return tasks, labels, cells


def pts(x: float) -> str:
    """A difference in points, signed, one decimal; more digits when one decimal would
    print a nonzero value as +0.0 or -0.0 (an interval bound then keeps its side of 0)."""
    v = 100 * x
    text = f"{v:+.1f}"
    if v != 0 and float(text) == 0:
        text = f"{v:+.2g}"
    return text


def interval_text(c: PairedComparison) -> str:
    return f"95 % CI [{pts(c.ci_low)}, {pts(c.ci_high)}]"


def cell_text(cell: Cell | None) -> str:
    """'score (gain pts, relative %; 95 % CI [lo, hi], p=...)', '(n.s.)' when the interval
    holds 0: the interval, p and the mark come from one procedure (stats.compare)."""
    if cell is None:
        return "—"
    if cell.comparison is None:
        return f"{100 * cell.score:.1f}"
    c = cell.comparison
    rel = "n/a" if c.rel_gain is None else f"{100 * c.rel_gain:+.1f} %"
    mark = "" if c.significant else " (n.s.)"
    return (f"{100 * cell.score:.1f} ({pts(c.diff)} pts, {rel}; "
            f"{interval_text(c)}, p={c.p_value:.3g}){mark}")


def mean_sd_text(values: list[float], scale: float = 100, digits: int = 1, unit: str = "") -> str:
    """'mean ± sd' of values across runs (sample sd; the value alone for one run), scaled:
    fractions print as percentages by default."""
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} \u00b1 {statistics.stdev(values) * scale:.{digits}f}{unit}"
