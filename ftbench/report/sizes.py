"""The view across sizes: runs of one recipe at several model sizes, each benchmark's
baseline score and each Free arm's gain over its own run's baseline against the arm's
training compute.

A point is one arm of one run. Its x is the arm's training FLOPs: the analytic FLOPs per
token of the exported model (ftbench.model.accounting, no recomputation) times the tokens
it trained on (the steps its export records x run.batch_size x data.seq_len). Gains are
paired within a run, item by item, by the same procedure as the main table
(ftbench.report.stats.compare): a gain is never taken between runs.

Runs are put on one axis only when their recorded configurations are equal once what a
size changes is set aside (the model's shape, the steps the token budget gives, the
learning-rate schedule that goes with a shape, and how a step is computed) and what only
names a run (seed, name, folders). Runs that differ in anything else (data, tokenizer,
sequence length, batch, optimiser) get no cross-size view: a banner names the keys that
differ, so a recipe change is never read as a size effect. Runs of one size that differ
only in their seed are separate points at one x, never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftbench.report.collect import HEADLINE, SUITE_ORDER, ArmResults, item_outcomes
from ftbench.report.overhead import read_model_meta
from ftbench.report.replica_groups import IGNORED, _flatten

# What may differ between the rungs of a ladder. Any "model." key is a shape; the steps
# follow from the token budget and the shape (data.tokens_per_param); the peak LR and its
# warmup follow the shape in the family the presets take (GPT-3, Table 2.1); the rest
# changes how a step is computed or what is logged, not what is trained.
SIZE_KEYS = IGNORED | {
    "size", "run.steps", "optim.lr", "optim.warmup_steps", "run.grad_accum",
    "run.activation_checkpointing", "run.checkpoint_policy", "run.compile", "run.shard_ranks",
    "run.eval_every", "run.val_batches", "run.snapshot_every", "run.matched_control",
    "latent.kappas_bits", "optim.fused",
}
SIZE_PREFIXES = ("model.",)


@dataclass(frozen=True)
class RunShape:
    run: str
    size: str
    seed: int | None
    steps: int
    tokens: int
    params: int
    """The baseline's parameters."""
    lr: float | None


@dataclass(frozen=True)
class SizePoint:
    run: str
    size: str
    seed: int | None
    arm: str
    kappa_bits: float | None
    task: str
    suite: str
    train_flops: float
    """This arm's training FLOPs (model FLOPs x tokens trained)."""
    score: float
    """The arm's headline score, a fraction."""
    diff: float | None = None
    """Free arms: score - the run's baseline score, with its paired interval."""
    ci_low: float | None = None
    ci_high: float | None = None
    rel_gain: float | None = None
    rel_ci_low: float | None = None
    rel_ci_high: float | None = None
    p_value: float | None = None
    significant: bool | None = None


@dataclass
class SizeView:
    shapes: list[RunShape]
    points: list[SizePoint]
    refused: str | None = None
    """Why the runs are not put on one axis (None: they are)."""


def _is_size_key(key: str) -> bool:
    return key in SIZE_KEYS or key.startswith(SIZE_PREFIXES)


def recipe(pair_config: dict) -> dict:
    """A run's recorded configuration without what a size (or a seed, or a name) changes."""
    return {k: v for k, v in _flatten(pair_config).items() if not _is_size_key(k)}


def differing_keys(recipes: dict[str, dict]) -> list[str]:
    runs = list(recipes)
    first = recipes[runs[0]]
    keys = set()
    for run in runs[1:]:
        other = recipes[run]
        keys |= {k for k in set(first) | set(other) if first.get(k) != other.get(k)}
    return sorted(keys)


def arm_train_flops(meta: dict) -> tuple[float, int]:
    """(training FLOPs, training tokens) of an exported arm, from its config.json."""
    from ftbench.model.accounting import model_cost
    from ftbench.model.config import ModelConfig

    pair = meta.get("pair_config") or {}
    seq = (pair.get("data") or {}).get("seq_len")
    batch = (pair.get("run") or {}).get("batch_size")
    steps = meta.get("steps") or (pair.get("run") or {}).get("steps")
    if not (seq and batch and steps):
        raise ValueError("config.json lacks data.seq_len, run.batch_size or the steps")
    cost = model_cost(ModelConfig(**meta["model"]), meta["arch"], seq)
    tokens = int(steps) * int(batch) * int(seq)
    return cost.train_flops_per_token * tokens, tokens


def size_view(arms: list[ArmResults], models_root: Path, n_boot: int = 10_000,
              frame=None) -> SizeView | None:
    """The cross-size view of `arms`, or None when they hold fewer than two sizes (or a
    run's baseline record is missing: the main table says so)."""
    from ftbench.model.accounting import model_cost
    from ftbench.model.config import ModelConfig
    from ftbench.report.frame import frame_from_arms, headline_scores
    from ftbench.report.stats import compare, paired_arrays

    by_run: dict[str, dict[str, ArmResults]] = {}
    for a in arms:
        by_run.setdefault(a.run, {})[a.arm] = a
    metas: dict[tuple[str, str], dict] = {}
    for run, run_arms in by_run.items():
        for name in run_arms:
            meta = read_model_meta(models_root, run, name)
            if meta is None or not isinstance(meta.get("pair_config"), dict):
                return None
            metas[(run, name)] = meta
        if "baseline" not in run_arms:
            return None
    sizes = {metas[(run, "baseline")]["pair_config"].get("size") for run in by_run}
    if len(sizes) < 2:
        return None
    shapes = []
    for run in by_run:
        meta = metas[(run, "baseline")]
        pair = meta["pair_config"]
        _, tokens = arm_train_flops(meta)
        cfg = ModelConfig(**meta["model"])
        shapes.append(RunShape(
            run=run, size=str(pair.get("size")), seed=meta.get("seed"),
            steps=int(meta.get("steps") or pair["run"]["steps"]), tokens=tokens,
            params=model_cost(cfg, "baseline", pair["data"]["seq_len"]).params_total,
            lr=(pair.get("optim") or {}).get("lr")))
    shapes.sort(key=lambda s: (s.params, s.run))
    recipes = {run: recipe(metas[(run, "baseline")]["pair_config"]) for run in by_run}
    keys = differing_keys(recipes)
    if keys:
        return SizeView(shapes, [], refused=(
            "the runs differ in more than size and seed: " + ", ".join(keys[:8])
            + (", ..." if len(keys) > 8 else "") + " (per run: " + "; ".join(
                f"{run}: " + ", ".join(f"{k}={recipes[run].get(k)!r}" for k in keys[:3])
                for run in by_run) + ")"))
    scores = headline_scores(frame_from_arms(arms, models_root) if frame is None else frame)
    points = []
    for shape in shapes:
        run_arms = by_run[shape.run]
        base = run_arms["baseline"]
        for name, arm in run_arms.items():
            meta = metas[(shape.run, name)]
            flops, _ = arm_train_flops(meta)
            for task, r in arm.results.items():
                if task not in HEADLINE or (shape.run, name, task) not in scores:
                    continue
                point = dict(run=shape.run, size=shape.size, seed=shape.seed, arm=name,
                             kappa_bits=meta.get("kappa_bits"), task=task,
                             suite=r["suite"], train_flops=flops,
                             score=scores[(shape.run, name, task)])
                if meta.get("arch") == "free":
                    if task not in base.results:
                        continue
                    b, o = paired_arrays(item_outcomes(base.results[task]), item_outcomes(r))
                    c = compare(b, o, n_boot=n_boot)
                    point.update(diff=c.diff, ci_low=c.ci_low, ci_high=c.ci_high,
                                 rel_gain=c.rel_gain, rel_ci_low=c.rel_ci_low,
                                 rel_ci_high=c.rel_ci_high, p_value=c.p_value,
                                 significant=c.significant)
                elif name != "baseline":
                    continue  # the matched control is a baseline of its own: not a point
                points.append(SizePoint(**point))
    return SizeView(shapes, points)


def tasks_in_order(points: list[SizePoint]) -> list[str]:
    return sorted({p.task for p in points},
                  key=lambda t: (SUITE_ORDER[next(p.suite for p in points if p.task == t)], t))


def free_arms(points: list[SizePoint]) -> list[str]:
    """Free arm names, by κ."""
    kappas = {p.arm: p.kappa_bits for p in points if p.diff is not None}
    return sorted(kappas, key=lambda a: (kappas[a] is None, kappas[a] or 0, a))


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def gain_text(p: SizePoint) -> str:
    """'+2.0 pts [-1.0, +5.0]; +10.0 % [-5.0, +25.0]' (the n.s. mark as in the main table)."""
    rel = ("rel. n/a" if p.rel_gain is None else
           f"{_pct(p.rel_gain, True)} % [{_pct(p.rel_ci_low, True)}, "
           f"{_pct(p.rel_ci_high, True)}]")
    mark = "" if p.significant else " (n.s.)"
    return (f"{_pct(p.diff, True)} pts [{_pct(p.ci_low, True)}, {_pct(p.ci_high, True)}]; "
            f"{rel}{mark}")


def size_table(view: SizeView) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """(header, rows, muted cells): one row per benchmark and run, smallest run first."""
    arms = free_arms(view.points)
    header = ["benchmark", "run (size)", "baseline params", "tokens", "training FLOPs "
              "(baseline)", "baseline score %", *(f"{a}: gain" for a in arms)]
    by_key = {(p.task, p.run, p.arm): p for p in view.points}
    rows, muted = [], set()
    for task in tasks_in_order(view.points):
        for shape in view.shapes:
            base = by_key.get((task, shape.run, "baseline"))
            if base is None:
                continue
            row = [task, f"{shape.run} ({shape.size}" + (f", seed {shape.seed}" if shape.seed
                                                         else "") + ")",
                   f"{shape.params:,}", f"{shape.tokens:,}", f"{base.train_flops:.3e}",
                   _pct(base.score)]
            for j, arm in enumerate(arms):
                p = by_key.get((task, shape.run, arm))
                row.append("—" if p is None else gain_text(p))
                if p is not None and not p.significant:
                    muted.add((len(rows), 6 + j))
            rows.append(row)
    return header, rows, muted


def size_blocks(arms: list[ArmResults], models_root: Path, figures_dir: Path,
                frame=None) -> list:
    """The report's section across sizes: nothing for runs of one size."""
    from ftbench.report.document import Banner, Figure, Heading, Paragraph, Table

    view = size_view(arms, models_root, frame=frame)
    if view is None:
        return []
    blocks: list = [Heading("Across sizes")]
    if view.refused:
        return blocks + [Banner("NO CROSS-SIZE VIEW: " + view.refused + ". A gain across "
                                "sizes is read only between runs of one recipe; train the "
                                "sizes with the same config (`--set size=...`) or report "
                                "them apart.")]
    if not view.points:
        return blocks + [Paragraph("No benchmark result common to the runs' arms.")]
    from ftbench.report.size_plots import gains_vs_compute

    png = gains_vs_compute(view.points, figures_dir / "sizes.png")
    runs = ", ".join(f"{s.run} ({s.size}, {s.params:,} parameters, {s.tokens:,} tokens)"
                     for s in view.shapes)
    blocks += [
        Paragraph("Runs of one recipe at several sizes (" + runs + "): they differ only in "
                  "the model's shape, the steps, the learning-rate schedule that goes with a "
                  "shape and the seed. Per benchmark, the baseline's score and each Free "
                  "arm's gain over its own run's baseline, in points and relative, with the "
                  "main table's paired 95 % intervals, against the arm's training FLOPs "
                  "(analytic model FLOPs per token x tokens trained; log scale). Runs of "
                  "one size with other seeds are separate points, never averaged."),
        Figure(png, "Across sizes, per benchmark: the baseline's score (left), each Free "
                    "arm's gain in points (middle) and relative to the baseline (right), "
                    "with paired 95 % intervals; hollow markers: the interval holds 0. "
                    "x: training FLOPs of the arm (log).", alt="gains across sizes"),
    ]
    header, rows, muted = size_table(view)
    blocks.append(Table(header, rows, muted=muted))
    return blocks
