"""Training of one arm: resumable, distributed, with per-step metrics.

Every source of randomness is a function of (seed, step, sample): the batch (sampler), the
schedule, and Z (uniforms drawn per sequence from a generator seeded by its global index).
A resumed run and an uninterrupted one therefore take the same steps, and a sharded run
sees the same Z per sequence as a single process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ftbench.config.schema import PairConfig
from ftbench.data.sampler import BatchSampler
from ftbench.diagnostics.latent_info import LatentInfoAccumulator
from ftbench.model.accounting import model_cost
from ftbench.model.factory import build_model, init_weights, param_seed
from ftbench.objective import free_transformer_loss, lm_loss, nats_to_bits
from ftbench.training.arms import Arm
from ftbench.training.checkpoint import Checkpointer
from ftbench.training.distributed import (DistContext, all_reduce_mean, checkpoint_policy,
                                          parallelize)
from ftbench.training.hardware import PeakMemory, load_average, peak_flops
from ftbench.training.pair_record import validation_window, weight_digests, write_init_digests
from ftbench.training.schedule import lr_at
from ftbench.training.snapshots import Snapshotter
from ftbench.training.trackers import TrackerSet, open_trackers


class TrainingError(RuntimeError):
    pass


@dataclass
class ArmResult:
    arm: str
    steps: int
    final_val: dict
    tokens_per_s: float
    mfu: float | None
    peak_memory_bytes: int | None
    wall_s: float
    model: torch.nn.Module = field(repr=False, default=None)
    cpu_s_per_token: float | None = None
    """Median over steady steps of this process's CPU time per token it trained: less
    sensitive than wall time to other jobs on a CPU machine (on a GPU it is host time)."""
    load_avg: float | None = None
    """Mean 1-minute load average over the steps: how busy the machine was."""


def autocast_dtype(cfg: PairConfig, device: torch.device) -> torch.dtype | None:
    if cfg.run.dtype == "bfloat16" or (cfg.run.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _per_row(seed: int, tag: str, rows: range, draw, device: torch.device) -> torch.Tensor:
    """draw(generator) for each row, each from its own generator seeded by the global row
    id: the same values for a row whatever the world size or micro-batch."""
    return torch.stack([draw(torch.Generator().manual_seed(param_seed(seed, f"{tag}/{row}")))
                        for row in rows]).to(device)


def z_uniforms(seed: int, tag: str, rows: range, T: int, H: int,
               device: torch.device) -> torch.Tensor:
    """(len(rows), T, H) U(0,1) draws of the posterior's bits."""
    return _per_row(seed, tag, rows, lambda g: torch.rand(T, H, generator=g), device)


def z_prior_codes(seed: int, tag: str, rows: range, T: int, n_codes: int,
                  device: torch.device) -> torch.Tensor:
    """(len(rows), T) uniform codes."""
    return _per_row(seed, tag, rows, lambda g: torch.randint(0, n_codes, (T,), generator=g),
                    device)


def forward_loss(model, arm: Arm, batch: torch.Tensor, cfg: PairConfig, z_tag: str,
                 first_row: int, amp: torch.dtype | None) -> dict:
    """The arm's objective on one micro-batch; the model fuses the head with the
    cross-entropy, so the (B, T, V) logits never exist."""
    x, y = batch[:, :-1], batch[:, 1:]
    device = batch.device
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        if arm.arch == "free":
            u = z_uniforms(cfg.run.seed, z_tag, range(first_row, first_row + len(batch)),
                           x.shape[1], arm.model.latent_bits, device)
            out = model(x, z_uniform_BTH=u, targets_BT=y)
            return free_transformer_loss(out.ce, out.kl_BT, arm.kappa_nats)
        return lm_loss(model(x, targets_BT=y).ce)


def micro_rows(cfg: PairConfig, ctx: DistContext) -> tuple[int, int]:
    """(sequences per rank per step, sequences per micro-batch)."""
    r = cfg.run
    if r.batch_size % (ctx.world * r.grad_accum):
        raise TrainingError(
            f"run.batch_size={r.batch_size} does not split into {ctx.world} rank(s) x "
            f"run.grad_accum={r.grad_accum} equal micro-batches; choose a batch size that is "
            f"a multiple of {ctx.world * r.grad_accum}")
    per_rank = r.batch_size // ctx.world
    return per_rank, per_rank // r.grad_accum


@torch.no_grad()
def validate(model, arm: Arm, val: np.ndarray, cfg: PairConfig, ctx: DistContext,
             amp: torch.dtype | None) -> dict:
    """Comparable likelihood bounds only: the baseline's CE; for a Free model, CE under
    prior Z and the ELBO (posterior CE + unhinged KL). Posterior CE alone is not a
    likelihood (the encoder saw the targets) and is not reported as one.

    Free models also get what the latent carries, not only what it costs: the mutual
    information estimate of ftbench.diagnostics.latent_info (val_mi_bits, an upper bound
    per token; val_mi_content_bits, beyond the position) and the spread of the encoder's
    bit logits across positions (val_logit_std).

    Runs in the training's micro-batches (a step's per-rank batch would not fit where
    training needs run.grad_accum), one forward at a time; Z is drawn per global row, so
    the figures do not depend on the world size or the micro-batch."""
    keys, means, latent = validation_sums(model, arm, val, cfg, ctx, amp, cfg.run.val_batches)
    out = {f"val_{k}": v for k, v in zip(keys, means.tolist())}
    if latent is not None:
        info = latent.result()
        out.update(val_mi_bits=info.mi_bits, val_logit_std=info.logit_std)
        if info.mi_content_bits is not None:
            out["val_mi_content_bits"] = info.mi_content_bits
    return out


@torch.no_grad()
def validation_sums(model, arm: Arm, val: np.ndarray, cfg: PairConfig, ctx: DistContext,
                    amp: torch.dtype | None, batches: int,
                    micro_batches: int | None = None):
    """validate()'s device work: (keys, their global means as one device tensor, the
    latent accumulator with every rank's sums). Reads nothing back to the host, so it
    also runs on fake tensors (ftbench.doctor.rehearsal); `micro_batches` stops early."""
    model.eval()
    T = cfg.data.seq_len
    n_windows = (len(val) - 1) // T
    if n_windows < 1:
        raise TrainingError("the validation split is shorter than one sequence; raise "
                            "data.train_tokens or data.val_fraction")
    per_rank, micro = micro_rows(cfg, ctx)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    latent = LatentInfoAccumulator() if arm.arch == "free" else None
    done = 0
    for b in range(batches):
        for m in range(0, per_rank, micro):
            if micro_batches is not None and done >= micro_batches:
                break
            done += 1
            first = b * cfg.run.batch_size + ctx.rank * per_rank + m
            rows = range(first, first + micro)
            batch = torch.from_numpy(np.stack([validation_window(val, k, T)
                                               for k in rows])).to(ctx.device)
            x, y = batch[:, :-1], batch[:, 1:]
            with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
                if arm.arch == "free":
                    u = z_uniforms(cfg.run.seed, "val-post", rows, T, arm.model.latent_bits,
                                   ctx.device)
                    post = model(x, z_uniform_BTH=u, targets_BT=y)
                    latent.add(post.latent_logits_BTH)
                    kl = post.kl_BT.float().mean()
                    values = {"elbo": post.ce + kl, "kl_bits": kl / math.log(2)}
                    del post
                    z_prior = z_prior_codes(cfg.run.seed, "val-prior", rows, T,
                                            arm.model.n_codes, ctx.device)
                    values["ce_prior"] = model(x, latent="fixed", z_BT=z_prior,
                                               targets_BT=y).ce
                else:
                    values = {"ce": model(x, targets_BT=y).ce}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v.float() * len(rows)
            count += len(rows)
    model.train()
    keys = sorted(sums)
    # Every rank scores as many rows: the mean of the ranks' means is the global mean.
    means = all_reduce_mean(torch.stack([sums[k] for k in keys]) / count, ctx)
    if latent is not None:
        # Sums from every rank (their mean: the estimate uses ratios of sums only).
        latent.load_tensors([None if t is None else all_reduce_mean(t, ctx)
                             for t in latent.tensors()])
    return keys, means, latent


class MetricsLog:
    """metrics.jsonl, one JSON object per line; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, ctx: DistContext, resume_step: int):
        self.path, self.ctx = path, ctx
        if ctx.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if path.is_file():
                for line in path.read_text().splitlines():
                    try:
                        if json.loads(line).get("step", 0) <= resume_step:
                            kept.append(line)
                    except json.JSONDecodeError:
                        break  # a torn last line from a crash
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(l + "\n" for l in kept))
            tmp.replace(path)

    def has(self, step: int) -> bool:
        """Whether a line for `step` is on disk (rank 0; the others answer False)."""
        if not self.ctx.is_main or not self.path.is_file():
            return False
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step") == step:
                    return True
            except json.JSONDecodeError:
                break
        return False

    def write(self, record: dict) -> None:
        if self.ctx.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def build_arm_model(arm: Arm, cfg: PairConfig, ctx: DistContext) -> torch.nn.Module:
    """Meta build, parallelize, materialise, init from the pair seed (shared weights match)."""
    model = build_model(arm.model, arm.arch, device="meta")
    model = parallelize(model, ctx, activation_checkpointing=checkpoint_policy(cfg.run),
                        compile=cfg.run.compile, param_dtype=autocast_dtype(cfg, ctx.device),
                        shard_ranks=cfg.run.shard_ranks)
    model = model.to_empty(device=ctx.device)
    init_weights(model, cfg.run.seed)
    return model.train()


def make_optimizer(model: torch.nn.Module, cfg: PairConfig) -> torch.optim.Optimizer:
    # Norm gains and zeta are not decayed; matrices and embeddings are.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # Fused: one kernel per tensor instead of foreach's passes and its temporary the size
    # of the parameters; torch runs it over FSDP2's sharded parameters too.
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2),
                             fused=True if o.fused else None)


def train_step(model, arm: Arm, batch: torch.Tensor, cfg: PairConfig, ctx: DistContext,
               step: int, amp: torch.dtype | None, params: list) -> tuple[list[str], torch.Tensor]:
    """Forward and backward over the rank's micro-batches, then gradient clipping; returns
    the loss terms' names and one device tensor of their global means followed by the
    gradient norm, made by one all-reduce. Nothing is read back to the host (the caller
    does, once, before the optimiser step), so the step also runs on fake tensors."""
    r = cfg.run
    per_rank, micro = micro_rows(cfg, ctx)
    totals: dict[str, torch.Tensor] = {}
    for m in range(r.grad_accum):
        mb = batch[m * micro:(m + 1) * micro]
        first_row = step * r.batch_size + ctx.rank * per_rank + m * micro
        losses = forward_loss(model, arm, mb, cfg, f"train/{step}", first_row, amp)
        (losses["loss"] / r.grad_accum).backward()
        for k, v in losses.items():  # on the device: no sync per micro-batch
            totals[k] = totals.get(k, 0.0) + v.detach().float() / r.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    keys = list(totals)
    means = all_reduce_mean(torch.stack([totals[k] for k in keys]), ctx)
    return keys, torch.cat([means, grad_norm.detach().float().reshape(1)])


def train_arm(arm: Arm, cfg: PairConfig, train_tokens: np.ndarray, val_tokens: np.ndarray,
              arm_dir: Path, ctx: DistContext, fingerprint: dict,
              log: Callable[[str], None] = print, stop_after: int | None = None) -> ArmResult:
    """Train (or resume) one arm to cfg.run.steps; `stop_after` interrupts on purpose
    (tests of resume) right after that step's checkpoint would be due."""
    t_start = time.perf_counter()
    r = cfg.run
    model = build_arm_model(arm, cfg, ctx)
    optim = make_optimizer(model, cfg)
    ckpt = Checkpointer(arm_dir / "checkpoints", ctx, fingerprint)
    step = 0
    latest = ckpt.latest()
    pending = None
    if latest is None and ctx.is_main:
        write_init_digests(arm_dir, weight_digests(model), ctx.world)
    if latest is not None:
        step = ckpt.load(latest, model, optim)
        pending = ckpt.record(latest)
        log(f"{arm.name}: resumed from {latest} (step {step})")
    metrics = MetricsLog(arm_dir / "metrics.jsonl", ctx, step)
    trackers = _open_trackers(arm, cfg, arm_dir, ctx, step)
    sampler = BatchSampler(train_tokens, cfg.data.seq_len, r.batch_size, r.seed)
    amp = autocast_dtype(cfg, ctx.device)
    per_rank, micro = micro_rows(cfg, ctx)
    val = {}
    if pending is not None and not _agreed(ctx, metrics.has(step)):
        # The run stopped between this checkpoint and its metrics line (in validation):
        # finish that step's record now.
        val = _finish_step(step, pending, model, arm, val_tokens, cfg, ctx, amp, metrics,
                           trackers) or val
    flops_per_token = model_cost(arm.model, arm.arch, cfg.data.seq_len).train_flops_per_token
    # The pair's baseline (the preset's depth, this arm's vocabulary): the analytic ratio the
    # report sets beside the measured Free/baseline time ratio.
    baseline_flops = model_cost(cfg.model.replace(vocab_size=arm.model.vocab_size), "baseline",
                                cfg.data.seq_len).train_flops_per_token
    peak = peak_flops(ctx.device, amp)
    memory = PeakMemory(ctx.device)
    tokens_per_step = r.batch_size * cfg.data.seq_len
    params = [p for p in model.parameters() if p.requires_grad]
    progress = _progress(ctx, step, r.steps, arm.name)
    snapshot = Snapshotter(arm, cfg, arm_dir, ctx)
    rates, cpu_per_token, loads = [], [], []
    while step < r.steps:
        t0, c0 = time.perf_counter(), time.process_time()
        lr = lr_at(step, cfg.optim, r.steps)
        for group in optim.param_groups:
            group["lr"] = lr
        host_batch = sampler.batch(step, ctx.rank, ctx.world)
        # What this rank was fed, as a digest in the step's record (rank 0's is the one
        # written): the arms of a pair must show the same digest at every step.
        batch_digest = hashlib.sha1(host_batch.numpy().tobytes()).hexdigest()[:16]
        batch = host_batch.to(ctx.device)
        keys, reduced = train_step(model, arm, batch, cfg, ctx, step, amp, params)
        *values, grad_norm = reduced.tolist()  # the step's one sync
        metrics_now = dict(zip(keys, values))
        loss_global = metrics_now["loss"]
        if not math.isfinite(loss_global) or not math.isfinite(grad_norm):
            raise TrainingError(
                f"{arm.name}: non-finite loss ({loss_global}) or grad norm ({grad_norm}) "
                f"at step {step}. Nothing was written for this step; checkpoints up to "
                f"{ckpt.latest() or 'none'} are intact. Lower optim.lr or check the data.")
        optim.step()
        optim.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        rate = tokens_per_step / dt
        rates.append(rate)
        # CPU time counts only this process's work, so other jobs on the machine inflate it
        # far less than wall time; with the load average it tells a measurement from noise.
        cpu = (time.process_time() - c0) / (per_rank * cfg.data.seq_len)
        cpu_per_token.append(cpu)
        load = load_average()
        if load is not None:
            loads.append(load)
        record = {"step": step, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": rate,
                  "cpu_s_per_token": cpu, "load_avg": load,
                  "mfu": flops_per_token * rate / peak / ctx.world if peak else None,
                  "peak_memory_bytes": memory.peak(),
                  "train_flops_per_token": flops_per_token,
                  "flop_ratio_vs_baseline": flops_per_token / baseline_flops,
                  "batch_sha1": batch_digest}
        record.update(metrics_now)
        if arm.arch == "free":
            record["kl_bits"] = nats_to_bits(record.pop("kl_nats"))
            record["kappa_bits"] = arm.kappa_bits
        # Before the checkpoint: a run stopped between the two redoes this step from the
        # checkpoint before and writes the snapshot again, so none goes missing.
        snapshot(model, step)
        if step % r.checkpoint_every == 0 or step == r.steps:
            # Before validation: a validation that fails (out of memory, a killed job)
            # resumes from here, and the step's record travels with the checkpoint.
            ckpt.save(step, model, optim, record=record)
        val = _finish_step(step, record, model, arm, val_tokens, cfg, ctx, amp, metrics,
                           trackers) or val
        progress(step, record)
        if stop_after is not None and step >= stop_after:
            break
    progress(None, None)
    trackers.close()
    steady = rates[len(rates) // 4:] or rates  # skip warm-up steps in the summary
    tps = float(np.median(steady)) if steady else 0.0
    cpu_steady = cpu_per_token[len(cpu_per_token) // 4:] or cpu_per_token
    return ArmResult(arm.name, step, val, tps,
                     flops_per_token * tps / peak / ctx.world if peak and tps else None,
                     memory.peak(), time.perf_counter() - t_start, model,
                     cpu_s_per_token=float(np.median(cpu_steady)) if cpu_steady else None,
                     load_avg=float(np.mean(loads)) if loads else None)


def _finish_step(step: int, record: dict, model, arm: Arm, val_tokens: np.ndarray,
                 cfg: PairConfig, ctx: DistContext, amp, metrics: "MetricsLog",
                 trackers: TrackerSet) -> dict:
    """Validate when due, then write the step's metrics line; returns the validation's."""
    val = {}
    if step % cfg.run.eval_every == 0 or step == cfg.run.steps:
        val = validate(model, arm, val_tokens, cfg, ctx, amp)
        record.update(val)
    metrics.write(record)
    trackers.log(step, record)
    if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
        trackers.flush()  # a resume restarts here: every step up to it is on disk
    return val


def _agreed(ctx: DistContext, value: bool) -> bool:
    """Rank 0's value on every rank (only rank 0 reads metrics.jsonl)."""
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=ctx.host_group)
    return bool(box[0])


def _open_trackers(arm: Arm, cfg: PairConfig, arm_dir: Path, ctx: DistContext,
                   resume_step: int) -> TrackerSet:
    """run.trackers for this arm, on rank 0 only (the records are already global means)."""
    if not ctx.is_main or not cfg.run.trackers:
        return TrackerSet([])
    config = {"arm": arm.name, "arch": arm.arch, "kappa_bits": arm.kappa_bits,
              "arm_model": dataclasses.asdict(arm.model),
              # As pair.yaml records it: the tokenizer's vocabulary, not the preset's.
              "pair_config": dataclasses.asdict(dataclasses.replace(
                  cfg, model=cfg.model.replace(vocab_size=arm.model.vocab_size)))}
    return open_trackers(cfg.run.trackers, arm_dir, resume_step, name=f"{cfg.run.name}/{arm.name}",
                         group=cfg.run.name, config=config)


def _progress(ctx: DistContext, start: int, total: int, name: str):
    """A tqdm bar on a terminal; plain lines (about every 10 %) otherwise, e.g. in CI logs."""
    if not ctx.is_main:
        return lambda step, record: None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)

        def update(step, record):
            if step is None:
                bar.close()
                return
            bar.update(1)
            post = {"loss": f"{record['loss']:.3f}"}
            if "kl_bits" in record:
                post["kl"] = f"{record['kl_bits']:.3f}b"
            bar.set_postfix(post)
        return update
    every = max(1, total // 10)
    t_start = time.monotonic()

    def lines(step, record):
        if step is not None and (step % every == 0 or step == total):
            extra = f" kl {record['kl_bits']:.3f} bits" if "kl_bits" in record else ""
            vals = " ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith("val_"))
            elapsed = time.monotonic() - t_start
            # A log has no live bar: each line says how long it took and how long is left.
            done = step - start
            eta = elapsed / done * (total - step) if done > 0 else None
            parts = [f"{name}: step {step}/{total} loss {record['loss']:.4f}{extra}",
                     f"{record['tokens_per_s']:.0f} tok/s", vals,
                     f"[elapsed {_clock(elapsed)}, ETA {_clock(eta)}]"]
            print(" ".join(p for p in parts if p), file=sys.stderr, flush=True)
    return lines


def _clock(seconds: float | None) -> str:
    """h:mm:ss (or m:ss), '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
