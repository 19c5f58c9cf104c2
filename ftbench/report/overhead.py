"""What the latent costs: the Free arms against their run's baseline, from files only.

Parameters and FLOPs are analytic (ftbench.model.accounting on the exported config); peak
memory is what train-pair measured (config.json "summary"); training time per token, wall
and CPU, with the machine's load, is what every step logged (metrics.jsonl); generation
time per token is what the generative tasks measured (results "generation").

Arms train one after the other, so a measured time ratio also holds whatever else the
machine did meanwhile. Each measured ratio carries its noise (the spread over logging
intervals, or over tasks) and the load, and is set against its analytic counterpart: one
that disagrees by more than RATIO_TOLERANCE is marked unreliable, not shown as a finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.model.accounting import model_cost
from ftbench.model.config import ModelConfig
from ftbench.report.collect import ArmResults, ReportError

# The paper's stated overhead (one extra block: 1/L), "compute and parameters".
PAPER_OVERHEAD = {"1.5b": 1 / 28, "8b": 1 / 32}


@dataclass(frozen=True)
class ArmCost:
    run: str
    arm: str
    arch: str
    size: str | None
    kappa_bits: float | None
    seed: int | None
    steps: int | None
    params_total: int
    params_post_sampler: int
    train_flops_per_token: float
    forward_flops_per_token: float
    decode_flops_per_token: float
    train_tokens_per_s: float | None
    peak_memory_bytes: int | None
    train_device: str | None
    train_world_size: int | None
    gen_tokens_per_s: float | None
    gen_device: str | None


@dataclass(frozen=True)
class OverheadRow:
    label: str
    baseline: float | None
    free: float | None
    unit: str
    measured: bool

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0) or self.free is None:
            return None
        return self.free / self.baseline


def read_model_meta(models_root: Path, run: str, arm: str) -> dict | None:
    path = models_root / run / arm / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path} is not readable ({e}); re-export the arm with "
                          "`ftbench train-pair`") from None


def _generation_speed(results: ArmResults | None) -> tuple[float | None, str | None]:
    """Tokens/s over every generative task of the arm (total new tokens / total seconds):
    the tasks' own workloads, which differ between arms (n rows per prompt for a Free arm);
    measured_ratios compares the fixed decode workload instead where it was timed."""
    if results is None:
        return None, None
    gens = [r["generation"] for r in results.results.values() if r.get("generation")]
    tokens, seconds = sum(g["new_tokens"] for g in gens), sum(g["seconds"] for g in gens)
    if not gens or seconds <= 0:
        return None, None
    return tokens / seconds, gens[0].get("device")


def arm_cost(models_root: Path, run: str, arm: str,
             results: ArmResults | None = None) -> ArmCost | None:
    meta = read_model_meta(models_root, run, arm)
    if meta is None:
        return None
    cfg = ModelConfig(**meta["model"])
    seq = (meta.get("pair_config") or {}).get("data", {}).get("seq_len") or cfg.max_seq_len
    cost = model_cost(cfg, meta["arch"], seq)
    summary = meta.get("summary") or {}
    gen_speed, gen_device = _generation_speed(results)
    return ArmCost(run=run, arm=arm, arch=meta["arch"],
                   size=(meta.get("pair_config") or {}).get("size"), kappa_bits=meta.get("kappa_bits"),
                   seed=meta.get("seed"), steps=meta.get("steps"),
                   params_total=cost.params_total, params_post_sampler=cost.params_post_sampler,
                   train_flops_per_token=cost.train_flops_per_token,
                   forward_flops_per_token=cost.forward_flops_per_token,
                   decode_flops_per_token=cost.decode_flops_per_token,
                   train_tokens_per_s=summary.get("tokens_per_s"),
                   peak_memory_bytes=summary.get("peak_memory_bytes"),
                   train_device=summary.get("device"), train_world_size=summary.get("world_size"),
                   gen_tokens_per_s=gen_speed, gen_device=gen_device)


def overhead_rows(base: ArmCost, free: ArmCost) -> list[OverheadRow]:
    """Free/baseline: the analytic rows and the measured peak memory. Measured times, which
    depend on the machine's load, are in measured_ratios with their noise."""
    return [
        OverheadRow("parameters, total", base.params_total, free.params_total, "", False),
        OverheadRow("parameters without W_post", base.params_total,
                    free.params_total - free.params_post_sampler, "", False),
        OverheadRow("training FLOPs / token", base.train_flops_per_token,
                    free.train_flops_per_token, "FLOP", False),
        OverheadRow("prefill FLOPs / token", base.forward_flops_per_token,
                    free.forward_flops_per_token, "FLOP", False),
        OverheadRow("decode FLOPs / token", base.decode_flops_per_token,
                    free.decode_flops_per_token, "FLOP", False),
        OverheadRow("training peak memory (measured)", base.peak_memory_bytes,
                    free.peak_memory_bytes, "B", True),
    ]


def paper_overhead_text(size: str | None) -> str:
    """The paper's stated 1/L, for the run's size if the paper trained it."""
    size = (size or "").lower()
    if size in PAPER_OVERHEAD:
        return f"{size}: +{100 * PAPER_OVERHEAD[size]:.1f} % (1/L)"
    return "1.5b: +3.6 %, 8b: +3.1 % (1/L; the paper's sizes)"


def protocol_cost_text(result: dict) -> str:
    p = result["protocol"]
    if p.get("arch") != "free":
        n = p.get("n_samples")
        return f"n={n}" if n else "1 pass"
    if "z_draws" in p:
        return f"K={p['z_draws']}, {'+'.join(p.get('protocols') or [p.get('z_protocol')])}"
    return f"n={p.get('z_samples', 1)}"


def eval_time_rows(arms: list[ArmResults]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per benchmark, each arm's wall time (and settings), and per Free
    arm its ratio to its run's baseline."""
    multi = len({a.run for a in arms}) > 1
    labels = [f"{a.run}/{a.arm}" if multi else a.arm for a in arms]
    tasks = sorted({t for a in arms for t in a.results})
    bases = {a.run: a for a in arms if a.arm == "baseline"}
    rows = []
    for task in tasks:
        row = [task]
        for a in arms:
            r = a.results.get(task)
            if r is None:
                row.append("—")
                continue
            model_s = r.get("model_s")
            text = f"{r['wall_s']:.0f} s" + (f" (model {model_s:.1f} s)" if model_s is not None
                                             else "") + f"; {protocol_cost_text(r)}"
            base = bases.get(a.run)
            b = base.results.get(task) if base is not None and a.arm != "baseline" else None
            if b is not None:
                # The model's share when both have it: wall time also holds one-time costs
                # paid by whichever arm ran first (EvalPlus's ground truth, caches).
                use_model = bool(model_s and b.get("model_s"))
                ours, theirs = ((model_s, b["model_s"]) if use_model
                                else (r["wall_s"], b["wall_s"]))
                if theirs > 0:
                    text += f"; {ours / theirs:.2f}x ({'model' if use_model else 'wall'})"
            row.append(text)
        rows.append(row)
    total = ["all benchmarks"]
    for a in arms:
        secs = sum(r["wall_s"] for r in a.results.values())
        model = [r["model_s"] for r in a.results.values() if r.get("model_s") is not None]
        total.append(f"{secs:.0f} s" + (f" (model {sum(model):.1f} s)" if model else ""))
    rows.append(total)
    return ["evaluation time", *labels], rows


# ---------------------------------------------------------------------------------------
# Measured time ratios, with their noise

# A measured ratio further than this from its analytic counterpart is not shown as a
# finding; within it, FLOPs and time agree as well as a small model on a CPU allows.
RATIO_TOLERANCE = 0.10


@dataclass(frozen=True)
class Timing:
    """Time per token over a run's steady steps, split into `intervals` consecutive
    intervals (the first quarter of the steps is warm-up and skipped, as in training's
    summary). Spreads are relative: sd of the intervals' medians over their mean."""
    wall_s_per_token: float
    wall_spread: float | None
    cpu_s_per_token: float | None
    cpu_spread: float | None
    load_avg: float | None
    load_max: float | None
    intervals: int


def _median_spread(chunks: list[list[float]]) -> tuple[float | None, float | None]:
    import statistics

    meds = [statistics.median(c) for c in chunks if c]
    if not meds:
        return None, None
    mid = statistics.median(meds)
    spread = statistics.stdev(meds) / statistics.fmean(meds) if len(meds) > 1 else None
    return mid, spread


def training_timing(records: list[dict], n_intervals: int = 10) -> Timing | None:
    """From metrics.jsonl records (tokens_per_s; cpu_s_per_token and load_avg where the
    run logged them)."""
    steps = [r for r in records if isinstance(r.get("tokens_per_s"), (int, float))
             and r["tokens_per_s"] > 0]
    steady = steps[len(steps) // 4:] or steps
    if not steady:
        return None
    n = max(1, min(n_intervals, len(steady) // 3 or 1))
    size = -(-len(steady) // n)
    chunks = [steady[i:i + size] for i in range(0, len(steady), size)]
    wall, wall_spread = _median_spread([[1 / r["tokens_per_s"] for r in c] for c in chunks])
    cpu, cpu_spread = _median_spread([[r["cpu_s_per_token"] for r in c
                                       if isinstance(r.get("cpu_s_per_token"), (int, float))]
                                      for c in chunks])
    loads = [r["load_avg"] for r in steady if isinstance(r.get("load_avg"), (int, float))]
    return Timing(wall, wall_spread, cpu, cpu_spread,
                  sum(loads) / len(loads) if loads else None, max(loads) if loads else None,
                  len(chunks))


@dataclass(frozen=True)
class MeasuredRatio:
    label: str
    ratio: float | None
    spread: float | None
    """Relative sd of the ratio (the two arms' spreads combined); None when unknown."""
    analytic: float | None
    analytic_label: str
    load_base: float | None
    load_free: float | None
    note: str | None
    """Why the ratio is not a finding ("unreliable: ..."), or None."""

    @property
    def reliable(self) -> bool:
        return self.ratio is not None and self.note is None

    @property
    def short_note(self) -> str | None:
        """The figure's label for a ratio that is not a finding: "unreliable: load X"."""
        if self.note is None:
            return None
        if self.note.startswith("workload differs"):
            return "workload differs"
        known = [x for x in (self.load_base, self.load_free) if x is not None]
        return f"unreliable: load {max(known):.1f}" if known else "unreliable: load not recorded"


def judge(ratio: float, spread: float | None, analytic: float | None,
          loads: list[float | None]) -> str | None:
    """None when the measurement agrees with the analytic ratio (within RATIO_TOLERANCE);
    otherwise the reason it is not a finding, with the machine load."""
    if analytic is None or analytic <= 0:
        return None
    dev = ratio / analytic - 1
    if abs(dev) <= RATIO_TOLERANCE:
        return None
    known = [x for x in loads if x is not None]
    load = f"load {max(known):.1f}" if known else "load not recorded"
    if spread is None:
        return f"unreliable: {100 * dev:+.0f} % off analytic, no spread recorded, {load}"
    if abs(dev) > 2 * spread:
        return (f"unreliable: {100 * dev:+.0f} % off analytic, beyond its noise "
                f"(±{200 * spread:.0f} %), {load}")
    return (f"unreliable: noise ±{200 * spread:.0f} % exceeds ±{100 * RATIO_TOLERANCE:.0f} %, "
            f"{load}")


def _combine(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a * a + b * b) ** 0.5


WORKLOAD_DIFFERS = ("workload differs: task timings (a Free arm generates n rows per "
                    "prompt, the baseline one, so batch fills and stops differ), not a like-"
                    "for-like time; re-run `ftbench eval` to time the fixed decode workload")


def _workload_shape(w: dict) -> tuple:
    return tuple(w.get(k) for k in ("rows", "batch_size", "prompt_tokens", "new_tokens"))


def _generation_ratios(base: ArmResults | None, free: ArmResults | None):
    """Per task, time per generated token Free / baseline, with the loads and whether it is
    like for like: (ratios, loads, True) from the fixed decode workload both arms timed
    with one shape (results' generation.workload); (ratios, loads, False) from the tasks'
    own generation when a file lacks it; ([], [], None) when nothing was timed."""
    if base is None or free is None:
        return [], [], None
    pairs = []
    for task, r in sorted(free.results.items()):
        g, b = r.get("generation"), (base.results.get(task) or {}).get("generation")
        if g and b:
            pairs.append((g, b))
    workloads = [(g.get("workload"), b.get("workload")) for g, b in pairs]
    if pairs and all(fw and bw and _workload_shape(fw) == _workload_shape(bw)
                     and fw.get("seconds", 0) > 0 and bw.get("seconds", 0) > 0
                     for fw, bw in workloads):
        ratios = [(fw["seconds"] / fw["generated"]) / (bw["seconds"] / bw["generated"])
                  for fw, bw in workloads]
        loads = [x.get("load_avg") for fw, bw in workloads for x in (fw, bw)]
        return ratios, loads, True
    ratios, loads = [], []
    for g, b in pairs:
        if g.get("seconds", 0) <= 0 or b.get("seconds", 0) <= 0:
            continue
        if not g.get("new_tokens") or not b.get("new_tokens"):
            continue
        ratios.append((g["seconds"] / g["new_tokens"]) / (b["seconds"] / b["new_tokens"]))
        loads += [x.get("load_avg") for x in (g, b)]
    return ratios, loads, (False if ratios else None)


def _workload_ratio(base: ArmResults, free: ArmResults) -> float:
    """Free/baseline time per token over every task's fixed workload (totals)."""
    def per_token(arm: ArmResults) -> float:
        ws = [r["generation"]["workload"] for r in arm.results.values()
              if (r.get("generation") or {}).get("workload")]
        return sum(w["seconds"] for w in ws) / sum(w["generated"] for w in ws)
    return per_token(free) / per_token(base)


def measured_ratios(base: ArmCost, free: ArmCost, base_records: list[dict],
                    free_records: list[dict], base_results: ArmResults | None = None,
                    free_results: ArmResults | None = None) -> list[MeasuredRatio]:
    """Training wall and CPU time per token (from metrics.jsonl, falling back to the
    export's summary without a spread) and generation time per token (results), each
    against its analytic counterpart and judged."""
    train_flops = free.train_flops_per_token / base.train_flops_per_token
    decode_flops = free.decode_flops_per_token / base.decode_flops_per_token
    # "time" is wall-clock time; the labels are those earlier reports used.
    wall_label = "training time / token (measured)"
    cpu_label = "training CPU time / token (measured)"
    tb, tf = training_timing(base_records), training_timing(free_records)
    out = []
    if tb and tf:
        loads = [tb.load_avg, tf.load_avg]
        ratio = tf.wall_s_per_token / tb.wall_s_per_token
        spread = _combine(tb.wall_spread, tf.wall_spread)
        out.append(MeasuredRatio(wall_label, ratio, spread, train_flops, "training FLOPs",
                                 *loads, judge(ratio, spread, train_flops, loads)))
        if tb.cpu_s_per_token and tf.cpu_s_per_token:
            ratio = tf.cpu_s_per_token / tb.cpu_s_per_token
            spread = _combine(tb.cpu_spread, tf.cpu_spread)
            out.append(MeasuredRatio(cpu_label, ratio, spread, train_flops, "training FLOPs",
                                     *loads, judge(ratio, spread, train_flops, loads)))
        else:
            out.append(MeasuredRatio(cpu_label, None, None, train_flops, "training FLOPs",
                                     *loads, None))
    else:
        ratio = (base.train_tokens_per_s / free.train_tokens_per_s
                 if base.train_tokens_per_s and free.train_tokens_per_s else None)
        out.append(MeasuredRatio(wall_label, ratio, None, train_flops, "training FLOPs",
                                 None, None,
                                 None if ratio is None else
                                 judge(ratio, None, train_flops, [])))
    per_task, gen_loads, like = _generation_ratios(base_results, free_results)
    if like:
        ratio = _workload_ratio(base_results, free_results)
    else:
        ratio = (base.gen_tokens_per_s / free.gen_tokens_per_s
                 if base.gen_tokens_per_s and free.gen_tokens_per_s else None)
    spread = None
    if len(per_task) > 1:
        import statistics
        spread = statistics.stdev(per_task) / statistics.fmean(per_task)
    loads = [x for x in gen_loads if x is not None]
    if ratio is None:
        note = None
    elif like:
        note = judge(ratio, spread, decode_flops, loads)
    else:
        # Different workloads: the gap is not the model's, and not the machine's either.
        note = WORKLOAD_DIFFERS
    label = ("generation time / token (measured, fixed workload)" if like else
             "generation time / token (measured)")
    # gen_loads alternates free, baseline.
    free_loads = [x for x in gen_loads[0::2] if x is not None]
    base_loads = [x for x in gen_loads[1::2] if x is not None]
    out.append(MeasuredRatio(label, ratio, spread, decode_flops, "decode FLOPs",
                             max(base_loads) if base_loads else None,
                             max(free_loads) if free_loads else None, note))
    return out


def measured_text(m: MeasuredRatio) -> str:
    if m.ratio is None:
        return "not recorded"
    return f"{m.ratio:.3f}x" + ("" if m.spread is None else f" ± {2 * m.spread * m.ratio:.3f}")


def load_text(m: MeasuredRatio) -> str:
    vals = [m.load_base, m.load_free]
    if all(v is None for v in vals):
        return "not recorded"
    if m.load_free is None:
        return f"{m.load_base:.1f}"
    return " / ".join("?" if v is None else f"{v:.1f}" for v in vals)
