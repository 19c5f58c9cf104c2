"""Benchmarks over training: each arm's score against the tokens it has seen, and the
paper's final value and average over the last third of training (its Table 3), from the
results of `ftbench eval --snapshots`.

The paper judges its models on curves, not one checkpoint ("the performance curves
during training are often unstable"), and its Table 3 gives, beside the final value, "the
average over the last third of the iterations". Here:

- a curve per benchmark: every evaluated point (snapshots and the final export) of
  every arm, with a 95 % item-bootstrap band at each point (the items resampled, the
  arm's per-item outcomes at that step held fixed);
- the last third: points whose step is above 2/3 of the run's steps, the final export
  included; its average is the mean of those points' scores;
- the relative gain over the baseline with a paired 95 % interval from a two-way
  bootstrap: each resample draws items and last-third steps with replacement, the same
  ones for the Free arm and the baseline (items and steps are paired), and takes the
  ratio of the two arms' means over them. Item noise and the spread between snapshots
  both enter; the final value's interval is the same procedure over one step.

With several κ, the relative gains are also laid out as the paper's Tables 1 and 2 (a
column per κ). Nothing here is drawn when no snapshot was evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ftbench.report.collect import HEADLINE, SUITE_ORDER
from ftbench.report.document import Figure, Heading, Paragraph, Table

LAST_THIRD = 2 / 3
N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Gain:
    rel: float | None
    lo: float | None
    hi: float | None
    n_items: int
    n_steps: int


def headline_rows(frame):
    """The headline metric and Z protocol of each main (not replica) result."""
    return frame[frame["headline_metric"] & frame["headline_protocol"] & ~frame["replica"]]


def run_steps(frame, run: str, arm: str) -> int | None:
    """The run's last step: its final export's (rows with snapshot False)."""
    rows = frame[(frame["run"] == run) & (frame["arm"] == arm) & ~frame["snapshot"]]
    steps = rows["step"].dropna()
    return int(steps.max()) if len(steps) else None


def last_third_steps(steps, total: int) -> list[int]:
    return sorted(int(s) for s in steps if s > LAST_THIRD * total)


def last_third_average(frame, run: str, arm: str, task: str) -> tuple[float, list[int]] | None:
    """(mean of the headline scores over the last third's points, their steps); None when
    the run's last step or the points are missing."""
    total = run_steps(frame, run, arm)
    if total is None:
        return None
    rows = headline_rows(frame)
    rows = rows[(rows["run"] == run) & (rows["arm"] == arm) & (rows["task"] == task)]
    rows = rows.dropna(subset=["step"])
    rows = rows[rows["step"] > LAST_THIRD * total]
    if rows.empty:
        return None
    return float(rows["value"].mean()), sorted(int(s) for s in rows["step"])


def outcome_matrix(items, run: str, arm: str, task: str):
    """(steps, item ids, outcomes[step, item]) of an arm's headline per-item outcomes."""
    sel = items[(items["run"] == run) & (items["arm"] == arm) & (items["task"] == task)
                & (items["metric"] == HEADLINE[task]) & items["headline_protocol"]
                & ~items["replica"]].dropna(subset=["step"])
    if sel.empty:
        return [], [], np.zeros((0, 0))
    # A snapshot and the final export never share a step (no snapshot at the last step).
    wide = sel.pivot_table(index="step", columns="item", values="outcome", aggfunc="mean")
    return [int(s) for s in wide.index], list(wide.columns), wide.to_numpy(float)


def item_band(outcomes: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of one point's per-item outcomes (items resampled)."""
    ok = outcomes[np.isfinite(outcomes)]
    if not len(ok):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))].mean(axis=1)
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def paired_gain(base: np.ndarray, other: np.ndarray, n_boot: int = N_BOOT,
                seed: int = 0) -> Gain:
    """Relative gain of `other` over `base`, outcomes[step, item] paired by step and item,
    with its two-way bootstrap interval (module docstring). Resamples whose baseline mean
    is 0 are left out of the interval."""
    if base.shape != other.shape or base.size == 0:
        raise ValueError("paired_gain needs two non-empty outcome matrices of the same shape")
    n_steps, n_items = base.shape
    b_mean, o_mean = float(base.mean()), float(other.mean())
    rel = (o_mean - b_mean) / b_mean if b_mean > 0 else None
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, n_steps, size=(n_boot, n_steps))
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    # Resample r: rows steps[r], columns items[r]; its mean is the mean over the chosen
    # steps of each step's mean over the chosen items.
    rb = np.array([base[np.ix_(s, i)].mean() for s, i in zip(steps, items)])
    ro = np.array([other[np.ix_(s, i)].mean() for s, i in zip(steps, items)])
    keep = rb > 0
    if not keep.any():
        return Gain(rel, None, None, n_items, n_steps)
    ratios = ro[keep] / rb[keep] - 1
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(ratios, [a, 1 - a])
    return Gain(rel, float(lo), float(hi), n_items, n_steps)


def paired_outcomes(items, run: str, base_arm: str, arm: str, task: str, steps: list[int]):
    """The two arms' outcomes on the given steps and the items both were scored on."""
    sb, ib, mb = outcome_matrix(items, run, base_arm, task)
    so, io, mo = outcome_matrix(items, run, arm, task)
    steps = [s for s in steps if s in sb and s in so]
    shared = sorted(set(ib) & set(io))
    if not steps or not shared:
        return None
    cb, co = [ib.index(x) for x in shared], [io.index(x) for x in shared]
    rb, ro = [sb.index(s) for s in steps], [so.index(s) for s in steps]
    b, o = mb[np.ix_(rb, cb)], mo[np.ix_(ro, co)]
    ok = np.isfinite(b).all(axis=0) & np.isfinite(o).all(axis=0)
    return b[:, ok], o[:, ok]


def kappa_text(kappa: float) -> str:
    f = Fraction(kappa).limit_denominator(64)
    value = str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    return f"{value} bit" + ("" if f <= 1 else "s")


def _gain_text(g: Gain | None) -> str:
    if g is None or g.rel is None:
        return "n/a"
    ci = "" if g.lo is None else f" [{100 * g.lo:+.1f}, {100 * g.hi:+.1f}]"
    return f"{100 * g.rel:+.1f} %{ci}"


def curve_blocks(runs: list[str], results_root: Path, models_root: Path, figures_dir: Path,
                 n_boot: int = N_BOOT) -> list:
    """The report's section on benchmarks over training; [] when no snapshot was evaluated."""
    from ftbench.report.collect import ReportError
    from ftbench.report.frame import items_frame, results_frame

    try:
        frame = results_frame(runs, results_root, models_root)
    except ReportError:
        return []
    if not frame["snapshot"].fillna(False).any():
        return []
    items = items_frame(runs, results_root, models_root)
    multi = len(set(frame["run"])) > 1
    head = headline_rows(frame).dropna(subset=["step", "tokens"])
    order = list(HEADLINE)  # the main table's order: code, math, qa
    tasks = sorted(set(head["task"]) & set(HEADLINE),
                   key=lambda t: (SUITE_ORDER.get(str(head[head["task"] == t]["suite"].iloc[0]),
                                                  9), order.index(t)))
    blocks = [Heading("Benchmarks over training"), Paragraph(
        "Each arm's headline score at every evaluated training snapshot (`ftbench eval "
        "--snapshots`) and at the final export (large hollow marker), against the training "
        "tokens the arm had seen. Bands: 95 % item-bootstrap intervals at each point (the "
        f"benchmark's items resampled, {n_boot:,} times), for every arm alike (the spread "
        "over Z draws of Free arms is in the Z spread tables). The shaded span is the last "
        "third of training (steps above 2/3 of the run's), the span the table below "
        "averages over, as the paper's Table 3 does (\"the average over the last third of "
        "the iterations\").")]
    limits = sorted({int(x) for x in head["limit"].dropna()})
    for task in tasks:
        rows = head[head["task"] == task]
        series, last_from = {}, None
        for (run, arm), g in rows.groupby(["run", "arm"], sort=True):
            g = g.sort_values("step")
            steps, _, matrix = outcome_matrix(items, run, arm, task)
            bands = {s: item_band(matrix[k], n_boot) for k, s in enumerate(steps)}
            lo = [bands.get(int(s), (np.nan, np.nan))[0] for s in g["step"]]
            hi = [bands.get(int(s), (np.nan, np.nan))[1] for s in g["step"]]
            label = f"{run}/{arm}" if multi else arm
            series[label] = {"tokens": g["tokens"].astype(float).tolist(),
                             "value": g["value"].tolist(), "lo": lo, "hi": hi,
                             "final": (~g["snapshot"].astype(bool)).tolist()}
            total = run_steps(frame, run, arm)
            if total and last_from is None:
                per_step = float(g["tokens"].iloc[-1]) / float(g["step"].iloc[-1])
                last_from = LAST_THIRD * total * per_step
        from ftbench.report import plots

        metric = HEADLINE[task]
        png = plots.score_curves(
            series, figures_dir / f"curve_{task}.png", f"{task} over training",
            f"{metric.split(',')[0]} (%)", last_third_from=last_from,
            subtitle=f"--limit {', '.join(map(str, limits))}: smoke test" if limits else None,
            band_label="95 % item bootstrap", watermark="SMOKE TEST" if limits else None)
        blocks.append(Figure(png, f"{task} ({metric}) against training tokens, every arm; "
                                  "bands: 95 % item-bootstrap intervals; shaded: the last "
                                  "third of training.", alt=f"{task} over training"))
    blocks += _tables(frame, items, tasks, multi, n_boot)
    return blocks


def _tables(frame, items, tasks: list[str], multi: bool, n_boot: int) -> list:
    out = []
    header = ["benchmark", "arm", "final (step)", "final: gain over baseline",
              "last third: average (steps)", "last third: gain over baseline"]
    rows = []
    gains: dict[tuple[str, str, str, str], Gain | None] = {}
    head = headline_rows(frame)
    for task in tasks:
        for run in sorted(set(head["run"])):
            arms = sorted(set(head[(head["run"] == run) & (head["task"] == task)]["arm"]),
                          key=lambda a: (not a.startswith("baseline"), a != "baseline", a))
            base = "baseline" if "baseline" in arms else None
            for arm in arms:
                final = head[(head["run"] == run) & (head["arm"] == arm) & (head["task"] == task)
                             & ~head["snapshot"]]
                total = run_steps(frame, run, arm)
                third = last_third_average(frame, run, arm, task)
                cells = [task, f"{run}/{arm}" if multi else arm]
                cells.append(f"{100 * float(final['value'].iloc[0]):.1f} ({total})"
                             if len(final) else "—")
                g_final = g_third = None
                compared = base is not None and not arm.startswith("baseline")
                if compared and total is not None:
                    pair = paired_outcomes(items, run, base, arm, task, [total])
                    g_final = paired_gain(*pair, n_boot=n_boot) if pair else None
                if compared and third is not None:
                    pair = paired_outcomes(items, run, base, arm, task, third[1])
                    g_third = paired_gain(*pair, n_boot=n_boot) if pair else None
                cells += [_gain_text(g_final) if compared else "—",
                          "—" if third is None else
                          f"{100 * third[0]:.1f} ({', '.join(map(str, third[1]))})",
                          _gain_text(g_third) if compared else "—"]
                gains[(run, arm, task, "final")] = g_final
                gains[(run, arm, task, "third")] = g_third
                rows.append(cells)
    out += [Heading("Final value and average over the last third", level=3), Paragraph(
        "Scores in %, as the paper's Table 3: the final export's score and the average of "
        "the scores at the points in the last third of training (steps above 2/3 of the "
        "run's, the final export included; the steps are listed). Gains: relative to the "
        "run's baseline, with a paired 95 % interval from a two-way bootstrap "
        f"({n_boot:,} resamples) that draws the benchmark's items and the last third's steps "
        "with replacement, the same for both arms, and takes the ratio of the two arms' "
        "means: item noise and the spread between snapshots both enter (the final value's "
        "interval: items only). Resamples whose baseline mean is 0 are left out."),
        Table(header, rows)]
    out += _kappa_tables(frame, tasks, gains)
    return out


def _kappa_tables(frame, tasks: list[str], gains: dict) -> list:
    """The paper's Tables 1-2 layout: a column per κ, relative gain in %, per run."""
    head = headline_rows(frame)
    out = []
    for run in sorted(set(head["run"])):
        free = head[(head["run"] == run) & head["kappa_bits"].notna()]
        kappas = {}
        for arm, k in zip(free["arm"], free["kappa_bits"]):
            kappas.setdefault(float(k), arm)
        if len(kappas) < 2:
            continue
        order = sorted(kappas)
        for which, name in (("final", "final value"), ("third", "average over the last third")):
            rows = []
            for task in tasks:
                base = last_third_average(frame, run, "baseline", task) if which == "third" \
                    else None
                b = head[(head["run"] == run) & (head["arm"] == "baseline")
                         & (head["task"] == task) & ~head["snapshot"]]
                score = (base[0] if base else None) if which == "third" else (
                    float(b["value"].iloc[0]) if len(b) else None)
                rows.append([task, "—" if score is None else f"{100 * score:.1f}"] + [
                    _gain_text(gains.get((run, kappas[k], task, which))) for k in order])
            out += [Paragraph(f"{run}: relative gain over the baseline per κ, {name} "
                              "(the layout of the paper's Tables 1 and 2): the baseline's "
                              "score in %, then each Free arm's relative gain in % with its "
                              "paired 95 % interval."),
                    Table(["benchmark", "baseline (%)", *(kappa_text(k) for k in order)], rows)]
    return out
