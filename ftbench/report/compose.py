"""The report's content, composed once from results/ and models/ (nothing recomputed) and
rendered by ftbench.report.render to Markdown and HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.report import plots
from ftbench.report.collect import HEADLINE, ArmResults, ReportError, banners, collect
from ftbench.report.contamination import contamination_blocks
from ftbench.report.document import (Banner, Bullets, Document, Figure, Heading, Paragraph,
                                     Preformatted, Table)
from ftbench.report.overhead import (PAPER_OVERHEAD, ArmCost, arm_cost, eval_time_rows,
                                     overhead_rows, paper_overhead_text)
from ftbench.report.protocols import between_text, gain_text, protocol_rows
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


def build_report(inp: ReportInputs, figures_dir: Path) -> Document:
    repro_dirs = {run: d for run in inp.runs if (d := find_repro(inp.results_root, run))}
    arms = collect(inp.results_root, inp.runs, allow_empty=bool(repro_dirs))
    figures_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"ftbench report: {', '.join(inp.runs)}")
    if arms:
        _benchmark_sections(doc, arms, inp, figures_dir)
    studies = {run: load_repro(d) for run, d in repro_dirs.items()}  # each file read once
    if len(studies) > 1:
        doc.add(*synthetic_seeds_blocks(list(studies.values())))
    for run, data in studies.items():
        title = "Synthetic task (paper section 4.1)"
        doc.add(*synthetic_blocks(data, title if len(studies) == 1 else f"{title}: {run}"))
    return doc


def _benchmark_sections(doc: Document, arms: list[ArmResults], inp: ReportInputs,
                        figures_dir: Path) -> None:
    for text in banners(arms):
        doc.add(Banner(text))
    costs = {(a.run, a.arm): arm_cost(inp.models_root, a.run, a.arm, a) for a in arms}
    _main_section(doc, arms, figures_dir)
    _protocols_section(doc, arms)
    _seeds_section(doc, arms)
    _replicas_section(doc, arms)
    _overhead_section(doc, arms, costs, figures_dir)
    _training_section(doc, arms, inp.models_root, figures_dir)
    doc.add(*contamination_blocks(inp.models_root, sorted({a.run for a in arms})))
    _appendix(doc, arms, inp.models_root)


def _main_section(doc: Document, arms: list[ArmResults], figures_dir: Path) -> None:
    tasks, labels, cells = main_table(arms)
    suites = {t: next(a.results[t]["suite"] for a in arms if t in a.results) for t in tasks}
    doc.add(Heading("Main comparison"),
            Paragraph("Scores in %. Free arms: absolute gain over the run's baseline in points, "
                      "relative gain, a paired 95 % bootstrap interval of the absolute gain and a "
                      "p-value (exact McNemar for pass/fail items, else paired bootstrap). Cells "
                      "marked (n.s.) are not significant at p < 0.05. The last column is the "
                      "paper's result at the paper's scale and data, **not this run's**."))
    header = ["suite", "benchmark (metric)", *labels, "paper (its scale)"]
    rows, muted, points = [], set(), []
    for i, task in enumerate(tasks):
        row = [suites[task], f"{task} ({HEADLINE[task]})"]
        for j, label in enumerate(labels):
            cell: Cell | None = cells.get((task, label))
            row.append(cell_text(cell))
            if cell is not None and cell.comparison is not None:
                c = cell.comparison
                if not c.significant:
                    muted.add((i, 2 + j))
                points.append({"task": task, "suite": suites[task], "arm": label,
                               "rel_gain": c.rel_gain, "rel_ci_low": c.rel_ci_low,
                               "rel_ci_high": c.rel_ci_high, "significant": c.significant})
        row.append(PAPER_ANCHORS.get(task, ""))
        rows.append(row)
    doc.add(Table(header, rows, muted=muted))
    if points:
        png = plots.relative_gains(points, figures_dir / "relative_gains.png")
        doc.add(Figure(png, "Relative gain of each Free arm over its baseline, per benchmark, "
                            "with the paired 95 % bootstrap interval; faded bars are not "
                            "significant.", alt="relative gains"))


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
                      "items, flagged DISAGREE when its 95 % interval excludes 0."))
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


def _seeds_section(doc: Document, arms: list[ArmResults]) -> None:
    """Runs that differ only by seed: mean ± sd of each arm's score and relative gain."""
    by_arm: dict[str, list[ArmResults]] = {}
    for a in arms:
        by_arm.setdefault(a.arm, []).append(a)
    if len(arms) < 2 or max(len(v) for v in by_arm.values()) < 2:
        return
    baselines = {a.run: a for a in arms if a.arm == "baseline"}
    tasks = sorted({t for a in arms for t in a.results if t in HEADLINE})
    header = ["benchmark", *(f"{name} (n runs)" for name in by_arm), "relative gain"]
    rows = []
    for task in tasks:
        row, gains = [task], []
        for name, group in by_arm.items():
            scores = [g.results[task]["metrics"][HEADLINE[task]]["value"] for g in group
                      if task in g.results]
            row.append(f"{mean_sd_text(scores)} ({len(scores)})" if scores else "—")
            if name != "baseline":
                for g in group:
                    base = baselines.get(g.run)
                    if base and task in base.results and task in g.results:
                        b = base.results[task]["metrics"][HEADLINE[task]]["value"]
                        if b > 0:
                            gains.append(g.results[task]["metrics"][HEADLINE[task]]["value"] / b
                                         - 1)
        row.append(f"{mean_sd_text(gains)} %" if gains else "n/a")
        rows.append(row)
    doc.add(Heading("Across seeds"),
            Paragraph("Each arm's score over the runs given (mean ± sample standard deviation "
                      "across runs, in %), and the Free arms' relative gain over their own "
                      "run's baseline. Spread across training seeds is the noise floor a "
                      "single run's gain must clear."),
            Table(header, rows))


def _replicas_section(doc: Document, arms: list[ArmResults]) -> None:
    rows = []
    for a in arms:
        for task, reps in sorted(a.replicas.items()):
            if task not in a.results or task not in HEADLINE:
                continue
            runs = [a.results[task], *reps]
            values = [r["metrics"][HEADLINE[task]]["value"] for r in runs]
            seeds = ", ".join(str(r["seed"]) + (f" (few-shot {r['fewshot_seed']})"
                                                if r.get("fewshot_seed") else "") for r in runs)
            rows.append([f"{a.run}/{a.arm}", task, seeds, mean_sd_text(values),
                         f"{100 * min(values):.1f} – {100 * max(values):.1f}"])
    if rows:
        doc.add(Heading("Spread over Z draws and sampling seeds"),
                Paragraph("The same trained arm evaluated with several `--seed` values: for "
                          "Free arms this redraws Z (and tokens, when sampled at a temperature); "
                          "the few-shot examples change only with `--fewshot-seed`, shown in "
                          "brackets. Scores in %: mean ± standard deviation, and range."),
                Table(["arm", "benchmark", "seeds", "mean ± sd", "range"], rows))


def _overhead_section(doc: Document, arms: list[ArmResults],
                      costs: dict[tuple[str, str], ArmCost | None], figures_dir: Path) -> None:
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
        "post-sampler table, is shown apart: its forward is a gather); time and memory are "
        "measured by this run's training and code generation, on the device named below. "
        "Throughputs are shown as time per token, so a ratio above 1 is a cost. The paper "
        "states ≈3.6 % (1.5B) and ≈3.1 % (8B) extra compute and parameters (one block, 1/L), "
        "which does not count W_post nor the exact Eq. 8 backward."))
    header = ["quantity", *(f"{f.run}/{f.arm}" if len(pairs) > 1 else f.arm for _, f in pairs),
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
    bars = [(r.label, r.ratio, 1 + paper if paper and r.label in PAPER_ROWS else None)
            for r in first_rows]
    png = plots.overhead_bars(bars, figures_dir / "overhead.png")
    doc.add(Figure(png, f"Overhead of {pairs[0][1].arm} over the baseline (Free/baseline - 1); "
                        "the paper's 1/L where it states one.", alt="overhead bars"))
    _eval_time_table(doc, arms)


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


def _training_section(doc: Document, arms: list[ArmResults], models_root: Path,
                      figures_dir: Path) -> None:
    curves = {}
    for a in arms:
        records = _read_metrics(models_root / a.run / a.arm / "metrics.jsonl")
        if records:
            curves[a.arm if len({x.run for x in arms}) == 1 else f"{a.run}/{a.arm}"] = records
    if not curves:
        return
    doc.add(Heading("Training"))
    png = plots.training_curves(curves, figures_dir / "training_curves.png")
    doc.add(Figure(png, "Training cross-entropy and validation (baseline CE; Free: CE under "
                        "prior Z) by step; Free arms: KL in bits per token with κ dashed.",
                   alt="training curves"))
    rows, collapsed = [], []
    for label, records in curves.items():
        last = records[-1]
        vals = [r for r in records if any(k.startswith("val_") for k in r)]
        val = vals[-1] if vals else {}
        kl = last.get("kl_bits")
        if any("kl_bits" in r for r in records) and plots.collapsed(records, COLLAPSE_BITS):
            collapsed.append(label)
        rows.append([label, str(last.get("step", "")), f"{last.get('ce', float('nan')):.4f}",
                     ", ".join(f"{k[4:]} {v:.4f}" for k, v in val.items()
                               if k.startswith("val_")) or "—",
                     "—" if kl is None else f"{kl:.3f} (κ {last.get('kappa_bits')})"])
    doc.add(Table(["arm", "steps", "final training CE", "last validation", "KL bits/token"],
                  rows))
    if any("kl_bits" in r for records in curves.values() for r in records):
        png = plots.latent_diagnostics(curves, figures_dir / "latent.png",
                                       collapse_bits=COLLAPSE_BITS)
        doc.add(Figure(png, "Latent diagnostics: KL per token against κ; an arm whose KL "
                            f"ends below {COLLAPSE_BITS} bit/token is flagged as collapsed.",
                       alt="latent diagnostics"))
    for label in collapsed:
        doc.add(Banner(f"LATENT COLLAPSE: {label} ends with KL < {COLLAPSE_BITS} bit/token; its "
                       "Z carries (almost) nothing and it behaves like a slower baseline."))


def _appendix(doc: Document, arms: list[ArmResults], models_root: Path) -> None:
    doc.add(Heading("Appendix: settings and versions"))
    items = []
    for a in arms:
        for task, r in sorted(a.results.items()):
            items.append(f"`{a.run}/{a.arm}/{task}`: n={r['n_items']}, limit={r['limit']}, "
                         f"protocol={json.dumps(r['protocol'])}, harness={r['harness']}, "
                         f"data={r['data'].get('mode')}, seed={r['seed']}, "
                         f"wall {r['wall_s']:.0f} s")
    doc.add(Bullets(items))
    versions = next(iter(arms[0].results.values()))["versions"]
    doc.add(Paragraph("Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())))
    for run in dict.fromkeys(a.run for a in arms):
        cfg = models_root / run / "pair.yaml"
        if cfg.is_file():
            doc.add(Paragraph(f"Configuration of run `{run}` (models/{run}/pair.yaml):"),
                    Preformatted(cfg.read_text()))


def report_inputs(runs: list[str], results_root: Path, models_root: Path) -> ReportInputs:
    if not runs:
        raise ReportError("name at least one run (a folder under the results root)")
    return ReportInputs(runs, results_root, models_root)
