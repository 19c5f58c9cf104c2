"""The report's content, composed once from results/ and models/ (nothing recomputed) and
rendered by ftbench.report.render to Markdown and HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.report import plots
from ftbench.report.collect import (HEADLINE, ArmResults, ReportError, banners, collect,
                                    contexts_cut)
from ftbench.report.appendix import config_blocks, results_blocks
from ftbench.report.contamination import contamination_blocks
from ftbench.report.curves import curve_blocks
from ftbench.report.document import Banner, Document, Figure, Heading, Link, Paragraph, Table
from ftbench.report.frame import frame_from_arms, headline_replicas, headline_scores, write_frame
from ftbench.report.latent import latent_banners, latent_blocks, latent_rows
from ftbench.report.overhead import (PAPER_OVERHEAD, RATIO_TOLERANCE, ArmCost, arm_cost,
                                     eval_time_rows, load_text, measured_ratios, measured_text,
                                     overhead_rows, paper_overhead_text)
from ftbench.report.pairing import pair_checks, unmatched_banner
from ftbench.report.protocols import between_text, gain_text, protocol_rows
from ftbench.report.replica_groups import replica_groups
from ftbench.report.sizes import size_blocks
from ftbench.report.tables import PAPER_ANCHORS, Cell, cell_text, main_table, mean_sd_text
from ftbench.repro.report import (find_repro, load_repro, synthetic_blocks,
                                   synthetic_seeds_blocks)

COLLAPSE_BITS = 0.01
# The rows the paper's "compute and parameters" (one extra block) speaks of.
PAPER_ROWS = ("parameters without W_post", "training FLOPs / token", "prefill FLOPs / token")


@dataclass
class ReportInputs:
    runs: list[str]
    results_root: Path
    models_root: Path


def build_report(inp: ReportInputs, figures_dir: Path, table_csv: Path | None = None) -> Document:
    """table_csv: also write the results frame there (results.csv) and link it."""
    repro_dirs = {run: d for run in inp.runs if (d := find_repro(inp.results_root, run))}
    arms = collect(inp.results_root, inp.runs, allow_empty=bool(repro_dirs))
    figures_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"ftbench report: {', '.join(inp.runs)}")
    if arms:
        _benchmark_sections(doc, arms, inp, figures_dir, table_csv)
    studies = {run: load_repro(d) for run, d in repro_dirs.items()}  # each file read once
    if len(studies) > 1:
        doc.add(*synthetic_seeds_blocks(list(studies.values())))
    for run, data in studies.items():
        title = "Synthetic task (paper section 4.1)"
        doc.add(*synthetic_blocks(data, title if len(studies) == 1 else f"{title}: {run}"))
    return doc


def _benchmark_sections(doc: Document, arms: list[ArmResults], inp: ReportInputs,
                        figures_dir: Path, table_csv: Path | None) -> None:
    for text in banners(arms):
        doc.add(Banner(text))
    checks = [c for run in sorted({a.run for a in arms})
              for c in pair_checks(inp.models_root, run, [a.arm for a in arms if a.run == run])]
    if (text := unmatched_banner(checks)) is not None:
        doc.add(Banner(text))
    # One source of truth: the score tables below and results.csv are this frame.
    frame = frame_from_arms(arms, inp.models_root)
    if table_csv is not None:
        write_frame(frame, table_csv, "csv")
        doc.add(Link(table_csv.name, f"Every score of this report as one table (one row per "
                     "run, seed, arm, task, metric and Z protocol), for pandas:"))
    multi = len({x.run for x in arms}) > 1

    def label_of(a: ArmResults) -> str:
        return f"{a.run}/{a.arm}" if multi else a.arm

    curves = {}
    for a in arms:
        records = _read_metrics(inp.models_root / a.run / a.arm / "metrics.jsonl")
        if records:
            curves[label_of(a)] = records
    latent = latent_rows(arms, curves, inp.models_root, label_of)
    doc.add(*latent_banners(latent))
    costs = {(a.run, a.arm): arm_cost(inp.models_root, a.run, a.arm, a) for a in arms}
    _main_section(doc, arms, figures_dir, frame)
    doc.add(*size_blocks(arms, inp.models_root, figures_dir, frame=frame))  # runs of 2+ sizes
    # Evaluated training snapshots (`ftbench eval --snapshots`): curves, last-third table.
    doc.add(*curve_blocks(inp.runs, inp.results_root, inp.models_root, figures_dir))
    _protocols_section(doc, arms)
    _pairing_section(doc, checks)
    _seeds_section(doc, arms, frame, inp.models_root)
    _replicas_section(doc, arms, frame)
    _overhead_section(doc, arms, costs, figures_dir, inp.models_root)
    _training_section(doc, curves, figures_dir)
    _latent_section(doc, latent, curves, figures_dir)
    doc.add(*contamination_blocks(inp.models_root, sorted({a.run for a in arms})))
    _appendix(doc, arms, inp.models_root)


def _main_section(doc: Document, arms: list[ArmResults], figures_dir: Path, frame) -> None:
    tasks, labels, cells = main_table(arms, frame=frame)
    suites = {t: next(a.results[t]["suite"] for a in arms if t in a.results) for t in tasks}
    doc.add(Heading("Main comparison"),
            Paragraph("Scores in %. Free arms: absolute gain over the run's baseline in points, "
                      "relative gain, a paired 95 % interval of the absolute gain and a p-value, "
                      "both from one procedure: for pass/fail items, McNemar's exact test and "
                      "the exact interval it inverts (Clopper-Pearson on the items only one arm "
                      "gets right); otherwise (a Free arm's mean over n samples) the paired "
                      "percentile bootstrap and its two-sided p. Cells marked (n.s.): the "
                      "interval holds 0 (equivalently p ≥ 0.05), per cell: no correction "
                      "for the number of benchmarks, arms and protocols compared (with 10 "
                      "comparisons and no effect, a false mark somewhere has a 40 % chance). "
                      f"Free arms: {protocol_summary(arms, tasks)}. The last column is the "
                      "paper's result at the paper's scale and data, **not this run's**."))
    header = ["suite", "benchmark (metric)", *labels, "paper (its scale)"]
    rows, muted, points = [], set(), []
    for i, task in enumerate(tasks):
        cut = [lim for a in arms if task in a.results
               if (lim := contexts_cut(a.results[task])) is not None]
        # The arms of a pair share tokenizer and context, so one count stands for them.
        worst = max(cut, key=lambda lim: lim["contexts_truncated"]) if cut else None
        row = [suites[task], f"{task} ({HEADLINE[task]})" + (
            f"; {worst['contexts_truncated']} of {worst['contexts']} contexts cut to "
            f"{worst['max_seq_len']} tokens" if worst else "")]
        for j, label in enumerate(labels):
            cell: Cell | None = cells.get((task, label))
            row.append(cell_text(cell))
            if cell is not None and cell.comparison is not None:
                c = cell.comparison
                if not c.significant:
                    muted.add((i, 2 + j))
                points.append({"task": task, "suite": suites[task], "arm": label,
                               "rel_gain": c.rel_gain, "rel_ci_low": c.rel_ci_low,
                               "rel_ci_high": c.rel_ci_high, "significant": c.significant,
                               "rel_dropped": c.rel_dropped, "n_boot": c.n_boot})
        row.append(PAPER_ANCHORS.get(task, ""))
        rows.append(row)
    doc.add(Table(header, rows, muted=muted))
    undefined = sorted({p["task"] for p in points if p["rel_gain"] is None})
    defined = [p for p in points if p["rel_gain"] is not None]
    if points and not defined:
        # An empty axis of "n/a" labels says nothing; the reason does.
        doc.add(Paragraph("No relative-gain plot: the baseline scored 0 on every benchmark "
                          f"({', '.join(undefined)}), so a gain relative to it is undefined. "
                          "The absolute gains, in points, are in the table above."))
    elif defined:
        summary = protocol_summary(arms, tasks)
        png = plots.relative_gains(points, figures_dir / "relative_gains.png",
                                   subtitle=_wrap(summary, 110),
                                   watermark=_smoke_watermark(arms))
        why = (f" Benchmarks marked n/a ({', '.join(undefined)}): the baseline scored 0, so "
               "the relative gain is undefined; see the absolute gain in the table."
               if undefined else "")
        dropped = [f"{p['task']} {p['arm']} {p['rel_dropped']} of {p['n_boot']}"
                   for p in defined if p.get("rel_dropped")]
        drop_text = (" Resamples whose baseline mean was 0 are left out of the relative "
                     "interval (which is then conditional on a baseline above 0): "
                     + ", ".join(dropped) + "." if dropped else "")
        doc.add(Figure(png, "Relative gain of each Free arm over its baseline, per benchmark, "
                            "with the paired 95 % bootstrap interval of the relative gain; "
                            "faded bars are not significant (by the absolute gain's test, as "
                            f"in the table). Free arms: {summary}." + drop_text + why,
                       alt="relative gains"))


PROTOCOL_NAMES = {"posterior": "posterior prefill", "prior": "prior Z"}


def protocol_summary(arms: list[ArmResults], tasks: list[str]) -> str:
    """How the Free arms were scored and on how many items, in one line: what a copied
    caption or figure must keep."""
    ll, gen = set(), set()
    for a in arms:
        for r in a.results.values():
            p = r["protocol"]
            if p.get("arch") != "free":
                continue
            name = PROTOCOL_NAMES.get(p.get("z_protocol"), str(p.get("z_protocol")))
            if "z_draws" in p:
                ll.add(f"{name}, K={p['z_draws']} Z draws per item")
            elif "z_samples" in p:
                gen.add(f"n={p['z_samples']} Z samples per prompt, "
                        f"{p.get('token_sampling', 'greedy')} tokens")
    items = {t: max(a.results[t]["n_items"] for a in arms if t in a.results) for t in tasks}
    parts = []
    if ll:
        parts.append("log-likelihood: " + " | ".join(sorted(ll)))
    if gen:
        parts.append("generation: " + " | ".join(sorted(gen)))
    parts.append("items: " + ", ".join(f"{t} {n}" for t, n in items.items()))
    return "; ".join(parts)


def _smoke_watermark(arms: list[ArmResults]) -> str | None:
    limits = sorted({r["limit"] for a in arms for r in a.results.values()
                     if r["limit"] is not None})
    return (f"SMOKE TEST: --limit {', '.join(map(str, limits))}" if limits else None)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _protocols_section(doc: Document, arms: list[ArmResults]) -> None:
    rows = protocol_rows(arms)
    if not rows:
        return
    doc.add(Heading("Free arms: Z spread and both Z protocols"),
            Paragraph("Per Free arm and benchmark: the headline score and its gain over the "
                      "baseline (as in the main table), beside the spread over Z. "
                      "Log-likelihood tasks combine K draws per item by log-mean-exp; the "
                      "spread is the score a single draw would give (mean ± sd over the K "
                      "draws, [min, max]). Generative tasks average n samples per prompt, each "
                      "with its own Z; the spread is the mean ± its standard error across "
                      "samples. Log-likelihood tasks are also scored under the other Z protocol "
                      "(posterior: the encoder reads the context, new tokens get prior Z; "
                      "prior: uniform Z everywhere), from the same Z-independent pass; the "
                      "last column is their paired difference (other − headline) on the same "
                      "items, flagged DISAGREE when its 95 % interval excludes 0 (interval and p "
                      "from one procedure, as in the main table, so also p < 0.05); otherwise "
                      "\"no detected difference\" with the interval's width: a wide interval "
                      "means too few items to tell, not agreement."))
    table = [[r.arm, r.task, f"{r.headline}: {gain_text(r.gain)}", r.spread,
              f"{r.other}: {gain_text(r.other_gain)}" if r.other else "—", between_text(r)]
             for r in rows]
    doc.add(Table(["arm", "benchmark", "score, gain (headline protocol)", "spread over Z",
                   "other protocol: score, gain", "other − headline"], table))
    for r in rows:
        if r.disagree:
            c = r.between
            doc.add(Banner(f"Z PROTOCOLS DISAGREE: {r.arm} on {r.task}: {r.other} scores "
                           f"{100 * c.other:.1f} and {r.headline} {100 * c.baseline:.1f} "
                           f"(paired difference {100 * c.diff:+.1f} pts, 95 % CI "
                           f"[{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]); the comparison "
                           "with the baseline depends on the protocol."))


def _pairing_section(doc: Document, checks) -> None:
    if not checks:
        return
    multi = len({c.run for c in checks}) > 1
    doc.add(Heading("Matched pair"),
            Paragraph("What each arm was given, against its run's baseline, from the digests "
                      "it recorded while training: the batch of every step, the initial value "
                      "of every weight both arms have (rank 0's shard of it), the tokenizer "
                      "and the validation windows. Any difference is named in a banner at "
                      "the top."),
            Table(["arm", "batches", "shared initial weights", "tokenizer",
                   "validation windows"],
                  [[f"{c.run}/{c.arm}" if multi else c.arm, c.batches, c.initial_weights,
                    c.tokenizer, c.validation] for c in checks]))


def _seeds_section(doc: Document, arms: list[ArmResults], frame, models_root: Path) -> None:
    """Runs that differ only by seed: mean ± sd of each arm's score and relative gain.
    Runs are pooled only when their recorded configurations are equal once the seed is set
    aside (replica_groups); others are kept apart and named."""
    if len({a.run for a in arms}) < 2:
        return
    groups, notes = replica_groups(arms, models_root)
    pooled = [g for g in groups if len(g.members) >= 2]
    if not pooled and not notes:
        return
    doc.add(Heading("Across seeds"))
    if notes:
        doc.add(Banner("RUNS NOT POOLED AS SEEDS: " + "; ".join(notes) + ". Only runs whose "
                       "configurations differ by the seed alone are pooled below."))
    if not pooled:
        doc.add(Paragraph("No arm has two runs that differ by the seed alone: nothing to pool."))
        return
    score = headline_scores(frame)
    baselines = {a.run: a for a in arms if a.arm == "baseline"}
    tasks = sorted({t for a in arms for t in a.results if t in HEADLINE})
    names = [g.arm for g in pooled]

    def label(g) -> str:
        runs = ", ".join(m.run for m in g.members)
        return f"{g.arm} ({runs})" if names.count(g.arm) > 1 else f"{g.arm} (n runs)"

    header = ["benchmark", *(label(g) for g in pooled),
              *(f"{label(g)}: relative gain" for g in pooled if g.arm != "baseline")]
    rows = []
    for task in tasks:
        row, gain_cells = [task], []
        for g in pooled:
            scores = [score[(m.run, m.arm, task)] for m in g.members if task in m.results]
            row.append(f"{mean_sd_text(scores)} ({len(scores)})" if scores else "—")
            if g.arm == "baseline":
                continue
            gains = []
            for m in g.members:
                base = baselines.get(m.run)
                if base and task in base.results and task in m.results:
                    b = score[(base.run, base.arm, task)]
                    if b > 0:
                        gains.append(score[(m.run, m.arm, task)] / b - 1)
            gain_cells.append(f"{mean_sd_text(gains)} %" if gains else "n/a")
        rows.append(row + gain_cells)
    doc.add(Paragraph("Each arm's score over runs whose configurations differ only by the "
                      "training seed (mean ± sample standard deviation across runs, in %), "
                      "and the Free arms' relative gain over their own run's baseline. "
                      "Spread across training seeds is the noise floor a single run's gain "
                      "must clear."),
            Table(header, rows))


def _replicas_section(doc: Document, arms: list[ArmResults], frame) -> None:
    rows, replicas = [], headline_replicas(frame)
    for a in arms:
        for task in sorted(a.replicas):
            if task not in a.results or task not in HEADLINE:
                continue
            runs = replicas[(a.run, a.arm, task)]
            values = [value for _, _, value in runs]
            main_hash = a.results[task].get("prompts_sha256")
            hashes = {(r["seed"], r.get("fewshot_seed", 0)): r.get("prompts_sha256")
                      for r in a.replicas[task]}

            def fewshot_label(seed: int, fewshot: int) -> str:
                if not fewshot:
                    return ""
                h = hashes.get((seed, fewshot))
                if h is None or main_hash is None:
                    return f" (few-shot {fewshot}; prompts not recorded)"
                same = "same prompts as seed 0" if h == main_hash else "other prompts"
                return f" (few-shot {fewshot}: {same})"

            seeds = ", ".join(str(seed) + fewshot_label(seed, fewshot)
                              for seed, fewshot, _ in runs)
            rows.append([f"{a.run}/{a.arm}", task, seeds, mean_sd_text(values),
                         f"{100 * min(values):.1f} – {100 * max(values):.1f}"])
    if rows:
        doc.add(Heading("Spread over Z draws and sampling seeds"),
                Paragraph("The same trained arm evaluated with several `--seed` values: for "
                          "Free arms this redraws Z (and tokens, when sampled at a temperature); "
                          "the few-shot examples change only with `--fewshot-seed`, shown in "
                          "brackets with whether the replica's prompts (their recorded hash) "
                          "equal the main result's: the seed changes gsm8k's examples only "
                          "(MMLU takes its first five dev examples, gsm8k_cot has fixed ones, "
                          "CommonsenseQA is zero-shot), so elsewhere a few-shot replica only "
                          "redraws Z. Scores in %: mean ± standard deviation, and range."),
                Table(["arm", "benchmark", "seeds", "mean ± sd", "range"], rows))


def _overhead_section(doc: Document, arms: list[ArmResults],
                      costs: dict[tuple[str, str], ArmCost | None], figures_dir: Path,
                      models_root: Path) -> None:
    doc.add(Heading("Overhead of the Free Transformer"))
    pairs = [(costs.get((a.run, "baseline")), cost) for (run, name), cost in costs.items()
             if cost is not None and cost.arch == "free"
             for a in arms if a.run == run and a.arm == name]
    pairs = [(b, f) for b, f in pairs if b is not None]
    if not pairs:
        doc.add(Paragraph("No overhead table: the trained arms (models/<run>/<arm>/config.json "
                          "of a baseline and a Free arm) were not found; pass --models if they "
                          "live elsewhere."))
        return
    size = (pairs[0][1].size or "").lower()
    paper = PAPER_OVERHEAD.get(size)
    doc.add(Paragraph(
        "Free/baseline ratios. Parameters and FLOPs are analytic (W_post, the 2^H x D "
        "post-sampler table, is shown apart: its forward is a gather); peak memory is "
        "measured by this run's training, on the device named below. The paper states ≈3.6 % "
        "(1.5B) and ≈3.1 % (8B) extra compute and parameters (one block, 1/L), which does "
        "not count W_post nor the exact Eq. 8 backward."))
    multi = len(pairs) > 1
    header = ["quantity", *(f"{f.run}/{f.arm}" if multi else f.arm for _, f in pairs),
              "paper (its scale)"]
    first_rows = overhead_rows(*pairs[0])
    table = []
    for i, row in enumerate(first_rows):
        cells = [row.label]
        for b, f in pairs:
            r = overhead_rows(b, f)[i]
            cells.append(_ratio_text(r.ratio, r.baseline, r.free, r.unit))
        cells.append(paper_overhead_text(size) if row.label in PAPER_ROWS else "")
        table.append(cells)
    doc.add(Table(header, table))
    devices = sorted({f"{c.train_device} x{c.train_world_size}" for b, f in pairs for c in (b, f)
                      if c.train_device})
    if devices:
        doc.add(Paragraph(f"Training measured on: {', '.join(devices)}."))
    measured = {}
    by_key = {(a.run, a.arm): a for a in arms}
    for b, f in pairs:
        measured[(f.run, f.arm)] = measured_ratios(
            b, f, _read_metrics(models_root / b.run / b.arm / "metrics.jsonl"),
            _read_metrics(models_root / f.run / f.arm / "metrics.jsonl"),
            by_key.get((b.run, b.arm)), by_key.get((f.run, f.arm)))
    _measured_table(doc, pairs, measured, multi)
    first = measured[(pairs[0][1].run, pairs[0][1].arm)]
    bars = [(r.label, r.ratio, 1 + paper if paper and r.label in PAPER_ROWS else None)
            for r in first_rows]
    bars += [(m.label, m.ratio, None, m.spread, m.short_note) for m in first
             if m.ratio is not None]
    png = plots.overhead_bars(bars, figures_dir / "overhead.png")
    doc.add(Figure(png, f"Overhead of {pairs[0][1].arm} over the baseline (Free/baseline - 1); "
                        "the paper's 1/L where it states one. Measured times carry their noise "
                        "(2 sd) as error bars; hollow grey bars are measurements too far from "
                        "the analytic ratio to be findings (see the table).", alt="overhead bars"))
    _eval_time_table(doc, arms)


def _measured_table(doc: Document, pairs, measured, multi: bool) -> None:
    doc.add(Paragraph(
        "Measured time per token, Free/baseline (time: wall clock): training from every "
        "step's wall and CPU time (metrics.jsonl; CPU time counts this process's work only, "
        "so other jobs inflate it less); generation from a fixed decode workload that each "
        "arm timed after each generative task, with the same rows, prompt length, new tokens "
        "and batch shape for both arms (like for like; a task's own generation is not: a "
        "Free arm generates n rows per prompt, the baseline one). Results without that "
        "workload fall back on the tasks' timings, marked \"workload differs\" and greyed, "
        "whatever the load. ± is twice the ratio's relative sd: the spread over logging "
        "intervals of training (the first quarter of steps skipped as warm-up), or over "
        "tasks for generation. Load is the machine's 1-minute load average while each arm "
        "ran (baseline / Free). A like-for-like ratio more than "
        f"{100 * RATIO_TOLERANCE:.0f} % from its analytic counterpart is marked unreliable "
        "and greyed: the arms ran at different times on a shared machine, so such a gap "
        "measures the machine, not the model. CPU time on a GPU is host time only."))
    rows, muted = [], set()
    for b, f in pairs:
        for m in measured[(f.run, f.arm)]:
            i = len(rows)
            analytic = "—" if m.analytic is None else f"{m.analytic:.3f}x ({m.analytic_label})"
            rows.append(([f"{f.run}/{f.arm}"] if multi else []) + [
                m.label, measured_text(m), analytic, load_text(m),
                "not recorded" if m.ratio is None else (m.note or "agrees with analytic")])
            if m.note:
                muted.update((i, j) for j in range(len(rows[-1])))
    doc.add(Table((["arm"] if multi else []) + ["measured", "Free/baseline", "analytic",
                                                 "load", "reading"], rows, muted=muted))
    for b, f in pairs:
        differs = [m for m in measured[(f.run, f.arm)]
                   if m.note and m.note.startswith("workload differs")]
        if differs:
            doc.add(Banner(
                f"GENERATION TIMES NOT COMPARABLE: {f.arm}: the results hold no fixed decode "
                "workload, so generation was timed on each arm's own task workload (n rows "
                "per prompt for a Free arm, one for the baseline): "
                + "; ".join(f"{m.label} {m.ratio:.3f}x" for m in differs)
                + " is the workloads' difference, not the model's nor the machine's. Re-run "
                "`ftbench eval` to time the fixed workload."))
        bad = [m for m in measured[(f.run, f.arm)] if m.note and m not in differs]
        if bad:
            # One warning per arm: the table holds each ratio's reason.
            loads = [x for m in bad for x in (m.load_base, m.load_free) if x is not None]
            doc.add(Banner(
                f"UNRELIABLE OVERHEAD: {f.arm}: " + "; ".join(
                    f"{m.label} {m.ratio:.3f}x against {m.analytic:.3f}x analytic" for m in bad)
                + (f" (machine load up to {max(loads):.1f})" if loads else
                   " (machine load not recorded)")
                + ". Not findings: measure the two arms side by side on an idle machine."))


def _eval_time_table(doc: Document, arms: list[ArmResults]) -> None:
    header, rows = eval_time_rows(arms)
    if not rows:
        return
    doc.add(Paragraph("Measured evaluation time per arm and benchmark: the wall time of "
                      "`ftbench eval` for that results file (harness and one-time costs "
                      "included, such as EvalPlus's ground truth for the first arm), the time "
                      "spent in the model (scoring, generation), and what the protocol asked "
                      "for: K Z draws and the Z protocols scored for log-likelihood tasks, n "
                      "samples for generative ones. The ratio is Free/baseline, on model time "
                      "when both arms recorded it: what the protocol costs."),
            Table(header, rows))


def _ratio_text(ratio: float | None, base, free, unit: str) -> str:
    if ratio is None:
        return "not measured"
    return f"{ratio:.3f}x ({_fmt_quantity(base, unit)} → {_fmt_quantity(free, unit)})"


def _fmt_quantity(x, unit: str) -> str:
    if unit == "s":
        return f"{1 / x:,.0f} tok/s"
    if unit == "B":
        return f"{x / 2**20:,.0f} MiB"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{(' ' + unit) if unit else ''}"
    return f"{x:.3g}{(' ' + unit) if unit else ''}"


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by an interrupted run
    return records


def _training_section(doc: Document, curves: dict[str, list[dict]], figures_dir: Path) -> None:
    if curves:
        doc.add(Heading("Training"))
        png = plots.training_curves(curves, figures_dir / "training_curves.png")
        doc.add(Figure(png, "Training cross-entropy by step: faint, each step's batch; bold, "
                            "its running mean (centred). The table's training CE is the mean "
                            "of the last steps, not one batch. Validation: baseline CE; Free "
                            "arms: CE under prior Z, ELBO dashed. The KL is in the latent "
                            "figure below.",
                       alt="training curves"))
        rows = []
        for label, records in curves.items():
            key = "ce" if any("ce" in r for r in records) else "loss"
            final = plots.final_running(records, key)
            vals = [r for r in records if any(k in plots.LIKELIHOOD_KEYS for k in r)]
            val = vals[-1] if vals else {}
            rows.append([label, str(records[-1].get("step", "")),
                         "—" if final is None else
                         f"{final[0]:.4f} ± {final[1]:.4f} (last {final[2]} steps)",
                         ", ".join(f"{k[4:]} {v:.4f}" for k, v in val.items()
                                   if k in plots.LIKELIHOOD_KEYS) or "—"])
        doc.add(Table(["arm", "steps", "training CE: running mean ± sd", "last validation"],
                      rows))


def _latent_section(doc: Document, rows, curves: dict[str, list[dict]],
                    figures_dir: Path) -> None:
    if not rows:
        return
    doc.add(Heading("Free arms: is the latent used?"))
    doc.add(*latent_blocks(rows))
    free_curves = {label: records for label, records in curves.items()
                   if any("kl_bits" in r for r in records)}
    if free_curves:
        # Arms trained before MI was logged: their measured-after-training value, at the end.
        extra = {r.label: (float(free_curves[r.label][-1].get("step", len(free_curves[r.label]))),
                           r.mi_bits)
                 for r in rows if r.label in free_curves and r.mi_bits is not None
                 and not any("val_mi_bits" in x for x in free_curves[r.label])}
        png = plots.latent_diagnostics(curves, figures_dir / "latent.png",
                                       collapse_bits=COLLAPSE_BITS, extra_mi=extra)
        doc.add(Figure(png, "What Z costs and what it carries, in bits per token: the KL (faint "
                            "per step, bold running mean, circles on validation) against each "
                            "arm's κ (dashed, its colour), and the mutual information at "
                            "validation steps (squares). An arm whose KL ends below "
                            f"{COLLAPSE_BITS} bit/token is collapsed; one whose MI does is "
                            "unused, whatever its KL. Below: the spread of the encoder's bit "
                            "logits across positions, and the share of tokens above κ.",
                       alt="latent diagnostics"))
    for label, records in free_curves.items():
        if plots.collapsed(records, COLLAPSE_BITS):
            doc.add(Banner(f"LATENT COLLAPSE: {label} ends with KL < {COLLAPSE_BITS} bit/token; "
                           "its Z carries (almost) nothing and it behaves like a slower "
                           "baseline."))


def _appendix(doc: Document, arms: list[ArmResults], models_root: Path) -> None:
    doc.add(Heading("Appendix: settings and versions"))
    doc.add(*results_blocks(arms))
    versions = next(iter(arms[0].results.values()))["versions"]
    doc.add(Paragraph("Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())))
    for run in dict.fromkeys(a.run for a in arms):
        cfg = models_root / run / "pair.yaml"
        if cfg.is_file():
            doc.add(*config_blocks(run, cfg))


def report_inputs(runs: list[str], results_root: Path, models_root: Path) -> ReportInputs:
    if not runs:
        raise ReportError("name at least one run (a folder under the results root)")
    return ReportInputs(runs, results_root, models_root)
