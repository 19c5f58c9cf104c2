"""`ftbench train-pair`: every arm of a pair from one config, resumable as a whole."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from ftbench.config.loader import dump_pair_config
from ftbench.config.schema import PairConfig
from ftbench.data.budget import check_repetition, planned_tokens
from ftbench.data.mirror import resolve_data_dir
from ftbench.data.pipeline import data_directory, open_prepared, prepare_for_run, prepared_index
from ftbench.model.accounting import model_cost
from ftbench.training.arms import Arm, pair_arms
from ftbench.training.checkpoint import ACCEPTED_RUN, CheckpointError, fingerprint_differs
from ftbench.training.distributed import DistContext, init_distributed, wait_for_main
from ftbench.training.export import CONFIG, save_pretrained
from ftbench.training.loop import train_arm
from ftbench.training.pair_record import read_init_digests, validation_digest
from ftbench.training.trackers import require_trackers


def run_dir(cfg: PairConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def arm_fingerprint(cfg: PairConfig, arm: Arm, data_key: str) -> dict:
    """What a checkpoint must agree with to be resumed: anything that changes the steps."""
    def h(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run = dataclasses.asdict(cfg.run)
    for free_to_change in FREE_TO_CHANGE:
        run.pop(free_to_change)
    # Checkpoints and exports written while grad_accum was part of the fingerprint (and
    # timeout_minutes did not exist) carry this hash: they resume at the same grad_accum.
    legacy = {k: v for k, v in dataclasses.asdict(cfg.run).items()
              if k not in FREE_TO_CHANGE or k == "grad_accum"}
    return {"arm": arm.name, "model": h(dataclasses.asdict(arm.model)), "kappa_bits": arm.kappa_bits,
            "optim": h({k: v for k, v in dataclasses.asdict(cfg.optim).items()
                        if k not in OPTIM_FREE_TO_CHANGE}),
            "run": h(run), "data": data_key,
            ACCEPTED_RUN: [h(legacy)]}


# grad_accum splits the same global batch (Z is drawn per global row), so a run may resume
# on other hardware with another split; checkpointing, compile and sharding change how a
# step is computed, not what it computes; snapshots only read the weights.
FREE_TO_CHANGE = ("checkpoint_every", "eval_every", "val_batches", "out_dir", "compile",
                  "activation_checkpointing", "matched_control", "trackers", "grad_accum",
                  "timeout_minutes", "checkpoint_policy", "shard_ranks", "snapshot_every")
# How AdamW runs (fused or foreach) changes rounding, not the run.
OPTIM_FREE_TO_CHANGE = ("fused",)


def dry_run(cfg: PairConfig, vocab_size: int | None = None, world_size: int = 1,
            device_memory: int | str | None = None) -> dict:
    """Resolved config, data budget, per-arm parameters and FLOPs, and the memory plan per
    rank at `world_size` (with `device_memory`, whether it fits); trains nothing. Raises
    ValueError for a world size or device memory the plan cannot use."""
    from ftbench.training.memory_plan import memory_plan

    from ftbench.data.budget import plan_figures

    index = prepared_index(cfg)
    vocab, vocab_from = ((vocab_size, "the caller") if vocab_size
                         else known_vocab(cfg, index))
    arms = pair_arms(cfg, vocab)
    tokens_per_step = cfg.run.batch_size * cfg.data.seq_len
    out = {"config": dataclasses.asdict(cfg), "tokens_per_step": tokens_per_step,
           "total_tokens": tokens_per_step * cfg.run.steps, "vocab_size": vocab,
           "vocab_from": vocab_from,
           "data": plan_figures(cfg, index), "arms": {}}
    for arm in arms:
        cost = model_cost(arm.model, arm.arch, cfg.data.seq_len)
        # fp32 weights + grads + two AdamW moments; activations are not included.
        out["arms"][arm.name] = {
            "arch": arm.arch, "kappa_bits": arm.kappa_bits, "params": cost.params_total,
            "params_post_sampler": cost.params_post_sampler,
            "train_flops_per_token": cost.train_flops_per_token,
            "state_memory_bytes": 16 * cost.params_total,
            "train_flops_total": cost.train_flops_per_token * tokens_per_step * cfg.run.steps,
        }
    out["memory_plan"] = memory_plan(cfg, world_size, device_memory, vocab_size=vocab)
    return out


def known_vocab(cfg: PairConfig, index: dict | None) -> tuple[int, str]:
    """The vocabulary the arms will have, and where it comes from: the prepared tokenizer
    (`index`, the prepared data's), else the one the config asks for."""
    if index:
        return index["vocab_size"], "the prepared tokenizer"
    if cfg.data.tokenizer.kind == "bpe":
        # What `ftbench info --size` assumes too; the trained BPE can come out smaller.
        return cfg.data.tokenizer.vocab_size, ("data.tokenizer.vocab_size (until the "
                                               "tokenizer is trained)")
    return cfg.model.vocab_size, "the preset (until the tokenizer is trained)"


def recorded_config(cfg: PairConfig, vocab_size: int) -> PairConfig:
    """The config as trained: model.vocab_size is the tokenizer's, not the preset's.

    Every arm is built with the tokenizer's vocabulary (pair_arms), so recording the
    preset's value would state a model that was never trained (8192 for the toy run,
    whose tokenizer has 4096 tokens) and a parameter count a third too high.
    """
    return dataclasses.replace(cfg, model=cfg.model.replace(vocab_size=vocab_size))


PAIR_YAML_HEADER = ("# The resolved config of this run, as trained: model.vocab_size is the "
                    "size of the\n# tokenizer in data/<key>/ (data.tokenizer.vocab_size is "
                    "what was asked of it).\n")


def _new_dirs(path: Path) -> list[Path]:
    """path and its missing parents, outermost last: what mkdir(parents=True) creates."""
    created = []
    while not path.exists():
        created.append(path)
        path = path.parent
    return created


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the empty folders a failed run created; anything with files stays (a data
    build that failed half-way resumes from its complete parts)."""
    if not created:
        return
    for d in sorted((p for p in created[0].rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
    for d in created:
        try:
            d.rmdir()
        except OSError:
            return


def train_pair(cfg: PairConfig, *, log: Callable[[str], None] = print,
               ctx: DistContext | None = None, device_memory: int | str | None = None) -> dict:
    """Train every arm not yet exported; return a summary per arm.

    Before any work, every arm's memory plan is held against the device's memory
    (`device_memory`, else a GPU's own; CPU runs without it are not checked): an arm that
    would not fit stops the run with MemoryPlanError. A run that fails leaves no empty
    models/<run>/ behind (only folders this call created and that stayed empty are
    removed).
    """
    from ftbench.training.memory_plan import check_fits

    ctx = ctx or init_distributed(cfg.run.timeout_minutes)
    root = run_dir(cfg)
    planned = planned_tokens(cfg)
    check_repetition(cfg, planned, "plans")  # before any work: a wrong budget fails at once
    vocab, _ = known_vocab(cfg, prepared_index(cfg))
    check_fits(cfg, ctx.world, device_memory, ctx.device, vocab, ctx.ranks_per_node)
    resolve_data_dir(cfg.data.data_dir)  # a missing mirror is an error even when data is built
    require_trackers(cfg.run.trackers)  # a missing dashboard package, before hours of data prep
    created = _new_dirs(root) if ctx.is_main else []
    try:
        return _train_pair(cfg, root, planned, log, ctx)
    except BaseException:
        _remove_if_empty(created)
        raise


def _train_pair(cfg: PairConfig, root: Path, planned: int, log: Callable[[str], None],
                ctx: DistContext) -> dict:
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        data = prepare_for_run(cfg, log=log)
    wait_for_main(ctx)  # building shards can take hours: not under the device timeout
    if not ctx.is_main:  # the build is complete now; every rank memory-maps the same files
        data = open_prepared(data_directory(cfg.data, cfg.run.seed, planned, root / "data"))
    check_repetition(cfg, data.meta["train"]["tokens"])
    arms = pair_arms(cfg, data.tokenizer.vocab_size)
    fingerprints = {arm.name: arm_fingerprint(cfg, arm, data.meta["key"]) for arm in arms}
    done = {arm.name: meta for arm in arms
            if (meta := _finished(root / arm.name, fingerprints[arm.name], cfg, data.meta["key"]))}
    # After the checks: a refused run leaves the old pair.yaml in place, and so does a rerun
    # that has nothing left to train (its settings may name another mirror).
    recorded = recorded_config(cfg, data.tokenizer.vocab_size)
    if ctx.is_main and len(done) < len(arms):
        tmp = root / "pair.yaml.tmp"
        tmp.write_text(PAIR_YAML_HEADER + dump_pair_config(recorded))
        tmp.replace(root / "pair.yaml")
    torch.manual_seed(cfg.run.seed)
    summary = {}
    for arm in arms:
        arm_dir = root / arm.name
        fingerprint = fingerprints[arm.name]
        if arm.name in done:
            log(f"{arm.name}: already trained ({arm_dir / CONFIG}); skipping")
            summary[arm.name] = done[arm.name].get("summary", {})
            continue
        result = train_arm(arm, cfg, data.train, data.val, arm_dir, ctx, fingerprint, log=log)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        state = get_model_state_dict(result.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        info = {"tokens_per_s": result.tokens_per_s, "mfu": result.mfu,
                "peak_memory_bytes": result.peak_memory_bytes, "wall_s": result.wall_s,
                "final_val": result.final_val, "world_size": ctx.world,
                "device": str(ctx.device)}
        if ctx.is_main:
            save_pretrained(state, arm.model, arm.arch, data.tokenizer, arm_dir, extra={
                "arm": arm.name, "kappa_bits": arm.kappa_bits, "steps": result.steps,
                "seed": cfg.run.seed, "data_key": data.meta["key"], "fingerprint": fingerprint,
                "summary": info, "matched": matched_record(arm_dir, data, cfg),
                "pair_config": dataclasses.asdict(recorded)})
            log(f"{arm.name}: exported to {arm_dir} "
                f"({', '.join(f'{k} {v:.4f}' for k, v in result.final_val.items())})")
        wait_for_main(ctx)  # writing and hashing the weights (32 GB at 8B) on rank 0
        summary[arm.name] = info
        del result
    return summary


def matched_record(arm_dir: Path, data, cfg: PairConfig) -> dict:
    """What this arm was given, for the report's matched-pair checks (ftbench.report.pairing)."""
    init = read_init_digests(arm_dir)
    return {"init_sha1": init["sha1"] if init else None,
            "init_world_size": init["world_size"] if init else None,
            "tokenizer_sha256": data.tokenizer.fingerprint(),
            "val_windows_sha1": validation_digest(data.val, cfg.data.seq_len,
                                                  cfg.run.val_batches * cfg.run.batch_size)}


def _finished(arm_dir: Path, fingerprint: dict, cfg: PairConfig, data_key: str) -> dict | None:
    """The export's metadata if this arm was already trained with these settings; None if
    it was not trained; an error (nothing overwritten) if it was trained otherwise."""
    exported = arm_dir / CONFIG
    if not exported.is_file():
        return None
    meta = json.loads(exported.read_text())
    if "fingerprint" in meta:
        differ = fingerprint_differs(meta["fingerprint"], fingerprint)
    else:  # exports from before fingerprints were recorded: steps and data
        differ = [k for k, same in (("steps", meta.get("steps") == cfg.run.steps),
                                    ("data", meta.get("data_key") == data_key)) if not same]
    if not differ:
        return meta
    raise CheckpointError(
        f"{arm_dir} holds an arm trained with other settings (differs in: {', '.join(differ)}); "
        f"nothing was overwritten. Use a new run.name, or delete {arm_dir} to train it again.")
