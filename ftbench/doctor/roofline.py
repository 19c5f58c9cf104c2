"""A step time from a traced step (ftbench.doctor.rehearsal) and a GPU's datasheet.

The model, stated so that every figure can be redone by hand:
- compute: the traced matmul and attention FLOPs at the GPU's dense bf16 peak;
- memory-bound ops (norms, RoPE, SiLU, softmax, casts, the optimiser): the bytes each
  reads and writes, at the HBM bandwidth; they share the GPU with compute, so the two add;
- collectives: ring algorithms (an all-gather or reduce-scatter moves (n-1)/n of the full
  tensor per rank, an all-reduce twice that) over NVLink when the group stays in one node
  and over the network when it spans nodes, plus a fixed latency each;
- overlap: FSDP2 issues gathers ahead (prefetch) and reduce-scatters as the backward
  goes, so collectives overlap compute, except the ones nothing can hide: those issued
  before the step's first matmul (but the last of them, the prefetch that runs during the
  first block) and those after its last matmul (the final reduce-scatters, the gradient
  norm and the metric all-reduces).
  step = max(compute + memory, overlapped collectives) + exposed collectives.

Datasheet peaks are upper bounds: measured kernels reach perhaps 60-80 % of the matmul peak
and of HBM bandwidth, so real step times are longer and real MFU lower (ftbench's analytic
MFU on an H200 measured 39 % at the 1.5B shape). Ratios between arms are what this is for.
"""

from __future__ import annotations

from ftbench.training.hardware import GPUSpec

NVLINK_LATENCY_S = 10e-6
NETWORK_LATENCY_S = 20e-6
STEP_PHASES = ("train", "optimizer")


def step_terms(trace: dict, spec: GPUSpec) -> dict:
    """The additive terms of one traced step, in seconds (and FLOPs, bytes)."""
    flops = sum(trace["phases"].get(p, {}).get("flops", 0.0) for p in STEP_PHASES)
    memory = sum(trace["phases"].get(p, {}).get("memory_bytes", 0.0) for p in STEP_PHASES)
    colls = [c for c in trace["collectives"] if c["phase"] in STEP_PHASES]
    before = [c for c in colls if not c["after_compute"]]
    after = [c for c in colls if c["after_compute"] and not c["before_compute"]]
    exposed_ids = {id(c) for c in before[:-1] + after}
    overlapped = exposed = 0.0
    network_bytes = nvlink_bytes = 0.0
    for c in colls:
        if c["nodes_spanned"] > 1:
            t = c["bus_bytes"] / spec.network_bytes_per_s + NETWORK_LATENCY_S
            network_bytes += c["bus_bytes"]
        else:
            t = c["bus_bytes"] / spec.nvlink_bytes_per_s + NVLINK_LATENCY_S
            nvlink_bytes += c["bus_bytes"]
        if id(c) in exposed_ids:
            exposed += t
        else:
            overlapped += t
    return {"flops": flops, "memory_bytes": memory, "compute_s": flops / spec.bf16_flops,
            "memory_s": memory / spec.hbm_bytes_per_s, "overlapped_comm_s": overlapped,
            "exposed_comm_s": exposed, "nvlink_bus_bytes": nvlink_bytes,
            "network_bus_bytes": network_bytes, "collectives": len(colls)}


def extrapolate(terms_a: dict, layers_a: int, terms_b: dict, layers_b: int,
                layers: int) -> dict:
    """Every term is linear in the depth (each block adds the same work): the terms at
    `layers` from traces at two depths."""
    f = (layers - layers_a) / (layers_b - layers_a)
    return {k: terms_a[k] + f * (terms_b[k] - terms_a[k]) for k in terms_a}


def step_time(terms: dict) -> dict:
    gpu = terms["compute_s"] + terms["memory_s"]
    step = max(gpu, terms["overlapped_comm_s"]) + terms["exposed_comm_s"]
    bound = ("compute" if terms["compute_s"] >= max(terms["memory_s"],
                                                    terms["overlapped_comm_s"])
             else "memory" if terms["memory_s"] >= terms["overlapped_comm_s"]
             else "communication")
    return dict(terms, step_s=step, gpu_busy_s=gpu, bound_by=bound,
                comm_hidden=terms["overlapped_comm_s"] <= gpu)


def throughput(timing: dict, tokens_per_rank: int, world: int, model_flops_per_token: float,
               spec: GPUSpec) -> dict:
    """Tokens/s over the job and MFU (model FLOPs, recomputation excluded)."""
    per_rank = tokens_per_rank / timing["step_s"]
    return {"tokens_per_s": per_rank * world, "tokens_per_s_per_gpu": per_rank,
            "mfu": model_flops_per_token * per_rank / spec.bf16_flops}
