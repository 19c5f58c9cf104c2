"""Rehearse a GPU run on this machine: the real training step of each arm, traced on fake
tensors as one rank of a fake process group of N ranks.

For each arm the rehearsal builds the model exactly as `train-pair` does
(`build_arm_model`: meta build, activation checkpointing, FSDP2 units with bf16 mixed
precision over the run's mesh, name-seeded init; `make_optimizer`), then runs one whole
step through the loop's own functions: `train_step` (every micro-batch's forward and
backward, clipping, the metric all-reduce), the optimiser step, and one validation
micro-batch (`validation_sums`). Tensors are fake (torch's FakeTensorMode: shapes, dtypes
and devices, no data, no arithmetic), so the paper's 1.5B and 8B shapes run on a CPU; the
process group is torch's fake backend, so FSDP2 shards, gathers and reduces as rank 0 of N
would. Every rank holds shards and micro-batches of one size (FSDP2 pads uneven shards),
so rank 0 stands for all of them. A world of one is traced as a rank of a sharded run
(FSDP2 over a group of one, as a one-GPU check of a multi-GPU run does); `train-pair` on
a single device does not shard, and keeps plain autocast's bf16 weight copies instead.

What is recorded (ftbench.doctor.tracing): peak memory per rank by category, FLOPs of
matmuls and attention, bytes moved by memory-bound ops, and every collective with its
bytes, dtype, ranks and whether a host tensor was in it. NCCL's device rule is enforced
(ftbench.training.device_rule): a host tensor in a collective fails the rehearsal, as it
would fail the first GPU step.

Fake tensors live on the CPU device (initialisation ops do not run on fake CUDA tensors
without a GPU); what depends on the device is asked for as on a GPU: the Binary Mapper's
backward takes its CUDA tiles, and the memory plan is the CUDA one. Each arm runs in a
fresh process: the fake process group and the device rule stay out of the caller.
"""

from __future__ import annotations

import dataclasses
import time
import traceback

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class RehearsalSpec:
    config: dict
    """The resolved pair config (ftbench.config.loader.to_dict)."""
    arm: str
    world: int
    nodes: int = 1
    layers: int | None = None
    """Decoder layers traced (None: the config's); widths, vocabulary, sequence and world
    size stay as configured."""


def unique_arms(cfg) -> list:
    """One arm per distinct model: the Free arms of a kappa grid are the same model, so
    one of them stands for all."""
    from ftbench.training.arms import pair_arms

    seen, arms = set(), []
    for arm in pair_arms(cfg, cfg.model.vocab_size):
        key = (arm.arch, arm.model)
        if key not in seen:
            seen.add(key)
            arms.append(arm)
    return arms


def rehearsal_config(cfg, layers: int | None = None):
    """The run as a GPU runs it: bf16 (run.dtype auto), at `layers` decoder layers."""
    from ftbench.config.loader import pair_config_from_dict, to_dict

    data = to_dict(cfg)
    if data["run"]["dtype"] in ("auto", "bfloat16"):
        data["run"]["dtype"] = "bfloat16"
    else:
        raise ValueError(f"run.dtype={data['run']['dtype']!r}: the rehearsal traces bf16 GPU "
                         "runs (run.dtype auto or bfloat16)")
    if layers is not None:
        if layers < 2 or layers % 2:
            raise ValueError(f"--layers {layers}: give an even number >= 2 (the Free "
                             "model injects its latent half-way)")
        data["model"]["n_layers"] = layers
    data["run"]["trackers"] = []
    return pair_config_from_dict(data)


def rehearse_arm(spec: RehearsalSpec) -> dict:
    """Trace one step of one arm in this process (which it leaves with a fake process
    group and the device rule installed: use `rehearse` for a fresh process per arm)."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from ftbench.config.loader import pair_config_from_dict
    from ftbench.data.sampler import BatchSampler
    from ftbench.doctor.tracing import OpLog, memory_tracker
    from ftbench.model import binary_mapper
    from ftbench.training import device_rule
    from ftbench.training.distributed import (DistContext, checkpoint_policy, device_mesh,
                                              shard_ranks)
    from ftbench.training.loop import (autocast_dtype, build_arm_model, make_optimizer,
                                       micro_rows, train_step, validation_sums)

    t0 = time.perf_counter()
    cfg = pair_config_from_dict(spec.config)
    arm = next(a for a in unique_arms(cfg) if a.name == spec.arm)
    if spec.world % spec.nodes:
        raise ValueError(f"--world-size {spec.world} does not split over --nodes {spec.nodes}")
    per_node = spec.world // spec.nodes
    rule = device_rule.install()
    # The mapper's backward asks for the device's tiles: a GPU's, as the run will.
    cuda_tiles = binary_mapper.MapperTiles.for_device_type("cuda")
    binary_mapper.MapperTiles.for_device_type = staticmethod(lambda device_type: cuda_tiles)
    if not dist.is_initialized():
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=spec.world)
    # At one rank the model is sharded over a group of one: modules made on the meta
    # device cannot be moved onto fake tensors unless FSDP2 owns their parameters.
    ctx = DistContext(0, spec.world, 0, torch.device("cpu"), ranks_per_node=per_node,
                      one_rank_fsdp=spec.world == 1)
    # Outside fake mode: building a mesh reads real tensors.
    ctx = dataclasses.replace(ctx, mesh=device_mesh(ctx, cfg.run.shard_ranks))
    shard = shard_ranks(spec.world, per_node, cfg.run.shard_ranks)
    amp = autocast_dtype(cfg, torch.device("cuda"))
    per_rank, micro = micro_rows(cfg, ctx)
    T, V = cfg.data.seq_len, arm.model.vocab_size
    tokens = (np.arange(2 * (T + 1) * 8, dtype=np.int64) * 7919) % V
    log = OpLog(host_check=rule.is_host, node_of=lambda r: r // per_node)
    out = {"arm": arm.name, "arch": arm.arch, "world_size": spec.world, "nodes": spec.nodes,
           "shard_ranks": shard, "layers": arm.model.n_layers, "micro_batch": micro,
           "grad_accum": cfg.run.grad_accum, "seq_len": T, "vocab_size": V,
           "tokens_per_rank": per_rank * T, "checkpointing": checkpoint_policy(cfg.run),
           "compile": cfg.run.compile, "fused_adamw": cfg.optim.fused}
    error = None
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_arm_model(arm, cfg, ctx)
        optim = make_optimizer(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        # AdamW's moments exist from the first step on; make them before tracing, so the
        # traced step is a steady one.
        for p in params:
            p.grad = torch.zeros_like(p)
        optim.step()
        optim.zero_grad(set_to_none=True)
        batch = BatchSampler(tokens, T, cfg.run.batch_size, cfg.run.seed).batch(
            0, ctx.rank, ctx.world).to(ctx.device)
        tracker = memory_tracker(model, optim)
        tracker.track_inputs((batch,))
        try:
            with tracker, log:
                log.new_phase("train")
                train_step(model, arm, batch, cfg, ctx, 0, amp, params)
                log.new_phase("optimizer", same_step=True)
                optim.step()
                optim.zero_grad(set_to_none=True)
                train_peak = _snapshot(tracker)
                tracker.reset_mod_stats()  # validation calls the model again
                log.new_phase("validation")
                validation_sums(model, arm, tokens, cfg, ctx, amp, batches=1, micro_batches=1)
        except RuntimeError as e:
            if device_rule.NCCL_MESSAGE not in str(e):
                raise
            error = str(e)
            train_peak = _snapshot(tracker)
        peak = _snapshot(tracker)
    out["memory"] = {"train_peak": train_peak, "peak": peak}
    out["phases"] = {name: dataclasses.asdict(c) for name, c in log.phases.items()}
    out["collectives"] = [dict(dataclasses.asdict(c), bus_bytes=c.bus_bytes,
                               nodes_spanned=log.nodes_spanned(c)) for c in log.collectives]
    out["host_tensor_error"] = error
    out["trace_seconds"] = time.perf_counter() - t0
    return out


def _snapshot(tracker) -> dict:
    """{category: bytes} of the tracker's peak, the 'Total' included."""
    snap = tracker.get_tracker_snapshot("peak")
    (per_device,) = snap.values()
    return {str(k).split(".")[-1].lower(): int(v) for k, v in per_device.items()}


def _run_in_fresh_process(spec: RehearsalSpec) -> dict:
    try:
        return rehearse_arm(spec)
    except Exception as e:  # reported, not raised: the other arms still run
        return {"arm": spec.arm, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


def rehearse(cfg, world: int, nodes: int = 1, depths: tuple = (None,),
             arms: list[str] | None = None, workers: int | None = None) -> dict:
    """Trace every distinct arm of `cfg` at each depth in `depths` (None: the config's),
    each in a fresh process, `workers` at a time (default: one per core, at most 4; 0:
    in this process, for one trace).
    Returns {(arm name, depth): trace}."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from ftbench.config.loader import to_dict

    specs = []
    for depth in depths:
        c = rehearsal_config(cfg, depth)
        for arm in unique_arms(c):
            if arms is None or arm.name in arms or arm.arch in arms:
                specs.append(RehearsalSpec(to_dict(c), arm.name, world, nodes, depth))
    if workers == 0:  # in this process (one trace only: it keeps the fake group it makes)
        if len(specs) != 1:
            raise ValueError("workers=0 traces in this process, one arm at one depth only")
        return {(specs[0].arm, specs[0].layers): _run_in_fresh_process(specs[0])}
    workers = workers or max(1, min(4, os.cpu_count() or 1, len(specs)))
    # A fresh process per trace (max_tasks_per_child): each installs its own fake group.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = {(s.arm, s.layers): pool.submit(_run_in_fresh_process, s) for s in specs}
        return {key: f.result() for key, f in futures.items()}


