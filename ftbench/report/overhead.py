"""What the latent costs: the Free arms against their run's baseline, from files only.

Parameters and FLOPs are analytic (ftbench.model.accounting on the exported config);
training tokens/s and peak memory are what train-pair measured (config.json "summary");
generation tokens/s is what the code tasks measured (results "generation"). Measured
ratios are only as comparable as the runs: the table says where they ran.
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
    """Tokens/s over every code task of the arm (total new tokens / total seconds)."""
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
    """Free/baseline, each row analytic or measured. Throughput rows are inverted into
    time per token so that every ratio above 1 is a cost."""
    def inv(x):
        return None if not x else 1.0 / x

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
        OverheadRow("training time / token (measured)", inv(base.train_tokens_per_s),
                    inv(free.train_tokens_per_s), "s", True),
        OverheadRow("training peak memory (measured)", base.peak_memory_bytes,
                    free.peak_memory_bytes, "B", True),
        OverheadRow("generation time / token (measured)", inv(base.gen_tokens_per_s),
                    inv(free.gen_tokens_per_s), "s", True),
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
