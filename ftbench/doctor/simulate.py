"""`ftbench doctor --simulate`: a GPU run rehearsed on this machine, judged row by row.

Per arm (ftbench.doctor.rehearsal traces it): the traced peak memory per rank beside the
memory plan, the counted FLOPs per token beside ftbench.model.accounting, every collective
and whether each took device tensors only, whether the step fits the GPU, and a roofline
step time and MFU (ftbench.doctor.roofline); then the Free/baseline step-time ratio beside
the FLOP ratio and the paper's. With --layers K below the config's depth, the model is
traced at K and K+2 layers (same widths, vocabulary, sequence, world size) and the step
time extrapolated to the full depth (each block adds the same work); memory and FLOPs are
judged at K, where the plan and the accounting are evaluated too.
"""

from __future__ import annotations

import time

MEMORY_TOLERANCE = 0.10
FLOPS_TOLERANCE = 0.02
PAPER_TIME_RATIO_1P5B = 1.036
"""Free/baseline training cost at 1.5B that the paper reports."""


def _row(name: str, passed: bool, measured: str, expected: str, **data) -> dict:
    return {"name": name, "passed": bool(passed), "measured": measured, "expected": expected,
            **data}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def simulate(cfg, world: int, nodes: int = 1, gpu: str = "h100", layers: int | None = None,
             arms: list[str] | None = None, log=lambda row: None,
             workers: int | None = None) -> dict:
    """Rehearse every distinct arm of `cfg` at `world` ranks over `nodes` nodes of `gpu`
    GPUs; rows as `ftbench doctor` prints them, and the figures behind them. `arms`:
    names or architectures to trace (default all); `workers`: see rehearse()."""
    from ftbench.doctor.rehearsal import rehearsal_config, rehearse
    from ftbench.doctor.roofline import extrapolate, step_terms, step_time, throughput
    from ftbench.model.accounting import model_cost, recompute_flops_per_token
    from ftbench.training.hardware import gpu_spec
    from ftbench.training.memory_plan import arm_memory, usable_memory

    t0 = time.perf_counter()
    spec = gpu_spec(gpu)
    full_layers = cfg.model.n_layers
    K = layers or full_layers
    if world % nodes:
        raise ValueError(f"--world-size {world} does not split over --nodes {nodes}")
    rehearsal_config(cfg, K)  # a bad depth or dtype fails here, before any process starts
    depths = (K, K + 2) if K < full_layers else (K,)
    traced = rehearse(cfg, world, nodes, depths, arms, workers)
    deeper = {arm: t for (arm, depth), t in traced.items() if depth == K + 2}
    rows, arm_out = [], {}
    for (name, depth), trace in traced.items():
        if depth != K:
            continue
        if "error" in trace:
            rows.append(_row(f"{name}: rehearsal", False, trace["error"], "a traced step",
                             detail=trace.get("traceback", "")))
            log(rows[-1])
            continue
        if trace.get("host_tensor_error"):
            # The step stopped at that collective, as it would on the GPU.
            rows.append(_row(f"{name}: collectives take device tensors only", False,
                             trace["host_tensor_error"], "every tensor of every collective on "
                             "the run's device (NCCL's rule); the step stopped there"))
            log(rows[-1])
            continue
        arch, T = trace["arch"], trace["seq_len"]
        arm_cfg = next(a.model for a in _arms(cfg) if a.name == name)
        model_k = arm_cfg.replace(n_layers=arm_cfg.n_layers - full_layers + K)
        # Memory: traced (training step) vs planned, both at the traced depth.
        plan = arm_memory(model_k, arch, seq_len=T, micro_batch=trace["micro_batch"],
                          world=trace["shard_ranks"], checkpointing=trace["checkpointing"],
                          bf16=True, device_type="cuda", fsdp=True,
                          fused_optimizer=trace["fused_adamw"],
                          grad_accum=trace["grad_accum"])
        traced = trace["memory"]["train_peak"]["total"]
        gap = traced / plan["peak_bytes"] - 1
        rows.append(_row(
            f"{name}: peak memory per rank, traced vs planned ({K} layers)",
            abs(gap) <= MEMORY_TOLERANCE, f"{_gib(traced)} traced ({gap:+.1%})",
            f"{_gib(plan['peak_bytes'])} planned (at its {plan['peak_phase']} phase), "
            f"within {MEMORY_TOLERANCE:.0%}",
            traced_by_category=trace["memory"]["train_peak"],
            validation_peak=trace["memory"]["peak"]["total"], planned=plan))
        # FLOPs: counted (recomputation included) vs accounted.
        tokens = trace["tokens_per_rank"]
        counted = sum(trace["phases"][p]["flops"] for p in ("train", "optimizer")) / tokens
        model_flops = model_cost(model_k, arch, T).train_flops_per_token
        recompute = recompute_flops_per_token(model_k, arch, T, trace["checkpointing"])
        fgap = counted / (model_flops + recompute) - 1
        rows.append(_row(
            f"{name}: training FLOPs per token, counted vs accounted ({K} layers)",
            abs(fgap) <= FLOPS_TOLERANCE, f"{counted:.4g} counted ({fgap:+.2%})",
            f"{model_flops + recompute:.4g} = {model_flops:.4g} model + {recompute:.4g} "
            f"recomputed ({trace['checkpointing']} checkpointing), within "
            f"{FLOPS_TOLERANCE:.0%}", by_op=trace["phases"]["train"]["flops_by_op"]))
        # Collectives on the device.
        colls = trace["collectives"]
        host = [c for c in colls if c["host_tensors"]]
        summary = _collective_summary(colls)
        problem = trace.get("host_tensor_error") or (
            f"{len(host)} collective(s) took a host tensor: "
            + ", ".join(f"{c['op']} ({c['phase']})" for c in host[:5]) if host else "")
        rows.append(_row(
            f"{name}: collectives take device tensors only",
            not problem, problem or f"{len(colls)} collectives, all on the device: "
            + "; ".join(f"{k} x{v['count']} {_gib(v['bytes'])}" for k, v in summary.items()),
            "every tensor of every collective on the run's device (NCCL's rule)",
            collectives=summary))
        # Step time and MFU, extrapolated to the full depth when traced shallower.
        terms = step_terms(trace, spec)
        peak_full = traced
        if name in deeper and "error" not in deeper[name]:
            terms = extrapolate(terms, K, step_terms(deeper[name], spec), K + 2, full_layers)
            peak_full = traced + (full_layers - K) / 2 * (
                deeper[name]["memory"]["train_peak"]["total"] - traced)
        timing = step_time(terms)
        full_cfg = arm_cfg
        rate = throughput(timing, tokens, world, model_cost(full_cfg, arch, T)
                          .train_flops_per_token, spec)
        usable = usable_memory(int(spec.memory_bytes), "cuda")
        rows.append(_row(
            f"{name}: fits a {spec.name} ({full_cfg.n_layers} layers)",
            peak_full <= usable, f"{_gib(peak_full)} per rank"
            + (" (extrapolated from the traces)" if K < full_layers else " (traced)"),
            f"at most {_gib(usable)} usable of {_gib(spec.memory_bytes)}"))
        rows.append(_row(
            f"{name}: estimated step on {world} x {spec.name} ({full_cfg.n_layers} layers)",
            True, f"{timing['step_s'] * 1e3:.1f} ms per step, {rate['tokens_per_s']:,.0f} "
            f"tokens/s, MFU {rate['mfu']:.1%} ({timing['bound_by']}-bound)",
            f"roofline: compute {timing['compute_s'] * 1e3:.1f} ms + memory-bound "
            f"{timing['memory_s'] * 1e3:.1f} ms; collectives {timing['overlapped_comm_s'] * 1e3:.1f}"
            f" ms overlapped + {timing['exposed_comm_s'] * 1e3:.1f} ms exposed",
            timing=timing, throughput=rate))
        for r in rows[-5:]:
            log(r)
        arm_out[name] = {"arch": arch, "trace": {k: v for k, v in trace.items()
                                                  if k != "collectives"},
                         "timing": timing, "throughput": rate,
                         "model_flops_per_token": model_cost(full_cfg, arch, T)
                         .train_flops_per_token, "peak_bytes_full_depth": peak_full}
    base = arm_out.get("baseline")
    free = next((v for v in arm_out.values() if v["arch"] == "free"), None)
    ratio = None
    if base and free:
        ratio = {"time": free["timing"]["step_s"] / base["timing"]["step_s"],
                 "flops": free["model_flops_per_token"] / base["model_flops_per_token"],
                 "paper_1p5b": PAPER_TIME_RATIO_1P5B,
                 "terms": {k: free["timing"][k] / base["timing"][k]
                           for k in ("compute_s", "memory_s", "overlapped_comm_s",
                                     "exposed_comm_s") if base["timing"][k]}}
        rows.append(_row(
            "Free/baseline step time (estimated)", True,
            f"{ratio['time']:.3f} (compute {ratio['terms'].get('compute_s', 0):.3f}, "
            f"memory-bound {ratio['terms'].get('memory_s', 0):.3f})",
            f"FLOP ratio {ratio['flops']:.3f}; the paper's {PAPER_TIME_RATIO_1P5B} at 1.5B",
            ratio=ratio))
        log(rows[-1])
    return {"gpu": spec.name, "world_size": world, "nodes": nodes, "layers_traced": K,
            "layers": full_layers, "rows": rows, "arms": arm_out, "ratio": ratio,
            "passed": all(r["passed"] for r in rows) and bool(rows),
            "seconds": time.perf_counter() - t0}


def _arms(cfg):
    from ftbench.doctor.rehearsal import unique_arms

    return unique_arms(cfg)


def _collective_summary(colls: list[dict]) -> dict:
    out: dict = {}
    for c in colls:
        key = f"{c['op']} {c['dtype']} {c['phase']} over {c['ranks']} ranks" + (
            f" across {c['nodes_spanned']} nodes" if c["nodes_spanned"] > 1 else "")
        s = out.setdefault(key, {"count": 0, "bytes": 0, "ranks": c["ranks"]})
        s["count"] += 1
        s["bytes"] += c["bytes"]
    return out
