"""Free arms beyond the headline number: the spread over Z (draws or samples) beside the
gain, and the two Z protocols of log-likelihood tasks side by side.

Everything comes from the results files: per-item outcomes of the headline protocol (the
top-level ones) and of the other protocol (result["protocols"]), and the per-draw or
per-sample scores (result["spread"]). The two protocols are compared item by item on the
same items (paired); a task where their paired 95 % interval excludes 0 is flagged
DISAGREE (the interval and p come from one procedure, so this is also p < 0.05); one
whose interval holds 0 reads "no detected difference", with the interval's width, which
says how large a difference the items could have hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftbench.report.collect import HEADLINE, ArmResults, item_outcomes
from ftbench.report.stats import PairedComparison, compare, paired_arrays
from ftbench.report.tables import interval_text, pts


@dataclass
class ProtocolRow:
    arm: str
    task: str
    headline: str
    """The headline protocol's name (the main table's)."""
    gain: PairedComparison | None
    spread: str
    other: str | None
    other_gain: PairedComparison | None
    between: PairedComparison | None
    """other protocol - headline protocol, paired over the Free arm's items."""

    @property
    def disagree(self) -> bool:
        return self.between is not None and self.between.significant


def _other_outcomes(result: dict, protocol: str) -> dict[str, float]:
    block = result["protocols"][protocol]
    return item_outcomes({"task": result["task"], "per_item": block["per_item"]})


def spread_text(result: dict) -> str:
    """'mean ± sd over K draws [min, max]' or 'mean ± SE over n samples (sd)', in %."""
    spread = result.get("spread")
    if not spread:
        return "—"
    if "unavailable" in spread:
        return f"n/a ({spread['unavailable']})"
    if spread["kind"] == "z_draws":
        headline = result["protocol"].get("z_protocol")
        s = spread["protocols"].get(headline)
        if s is None:
            return "—"
        return (f"one draw: {100 * s['mean']:.1f} ± {100 * s['sd']:.1f} sd over K={s['n']} "
                f"[{100 * min(s['values']):.1f}, {100 * max(s['values']):.1f}]")
    s = spread["metrics"].get(HEADLINE[result["task"]])
    if s is None:
        return "—"
    return (f"{100 * s['mean']:.1f} ± {100 * s['se']:.1f} SE over n={s['n']} samples "
            f"(sd {100 * s['sd']:.1f})")


def protocol_rows(arms: list[ArmResults], n_boot: int = 10_000) -> list[ProtocolRow]:
    by_run = {a.run: {x.arm: x for x in arms if x.run == a.run} for a in arms}
    rows = []
    for a in arms:
        base = by_run[a.run].get("baseline")
        label = a.arm if len(by_run) == 1 else f"{a.run}/{a.arm}"
        for task, r in sorted(a.results.items()):
            if r["protocol"].get("arch") != "free" or task not in HEADLINE:
                continue
            ours = item_outcomes(r)
            base_items = (item_outcomes(base.results[task])
                          if base is not None and task in base.results else None)
            gain = (compare(*paired_arrays(base_items, ours), n_boot=n_boot)
                    if base_items is not None else None)
            other = other_gain = between = None
            for name in (r.get("protocols") or {}):
                other = name
                theirs = _other_outcomes(r, name)
                between = compare(*paired_arrays(ours, theirs), n_boot=n_boot)
                if base_items is not None:
                    other_gain = compare(*paired_arrays(base_items, theirs), n_boot=n_boot)
                break  # two protocols exist; the headline is the other one
            rows.append(ProtocolRow(label, task, r["protocol"].get("z_protocol", "?"), gain,
                                    spread_text(r), other, other_gain, between))
    return rows


def gain_text(c: PairedComparison | None) -> str:
    if c is None:
        return "—"
    return (f"{100 * c.other:.1f} ({pts(c.diff)} pts; {interval_text(c)})"
            + ("" if c.significant else " (n.s.)"))


def between_text(row: ProtocolRow) -> str:
    c = row.between
    if c is None:
        return "—"
    flag = ("DISAGREE" if row.disagree else
            f"no detected difference (interval width {100 * (c.ci_high - c.ci_low):.1f} pts)")
    return (f"{pts(c.diff)} pts [{pts(c.ci_low)}, {pts(c.ci_high)}], "
            f"p={c.p_value:.3g}: {flag}")
