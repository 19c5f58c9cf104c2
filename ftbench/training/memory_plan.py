"""Peak memory per rank of a training step, predicted from the config alone.

The model counts what is alive at each phase of a step, in bytes, and takes the largest:

- static, alive all step: fp32 parameters and the two AdamW moments (sharded 1/W under
  FSDP2).
- forward and backward, on top: the units FSDP2 holds gathered (the root: embeddings,
  final norm, head; W_post's unit through the backward, see distributed.parallelize; two
  decoder blocks, the one computing and the one prefetched), in bf16 under FSDP2's
  MixedPrecisionPolicy, which bf16 runs on several ranks use, and the fp32 input of the
  reduce-scatter of the block whose backward just finished; on one device, plain bf16
  autocast instead keeps a bf16 copy of every matmul weight for the backward.
  - head phase (the start of the backward): every activation that autograd saved, the
    fused head + cross-entropy's transient (one chunk's fp32 logits and the log-sum-exp's
    temporary, 8 x chunk x V bytes; the fp32 weight-gradient accumulator; the gradient for
    the hidden states) and the head's weight gradient.
  - block-backward phase: a block's backward (the last one; under checkpointing any one,
    rebuilt first): every saved activation, the residual stream's gradient and the
    SwiGLU's two F-wide gradients, the peak where the FFN is wide and the vocabulary's
    chunk small (1.5B at 16 x 4,096 tokens per rank).
  - mapper phase (the Binary Mapper's backward, half-way): the first half's and the
    encoder's activations, gradients so far, W_post's dense gradient and the mapper's
    scratch (MapperTiles: codes x tokens fp32 and a (2^H_hi, 1 + H_lo, tokens) sum; under
    plain bf16 autocast also a bf16 copy of W_post for the GEMM).
- optimiser phase: all gradients; AdamW runs fused, in place (with optim.fused off, its
  foreach path over FSDP2's DTensors needs a temporary the size of the sharded parameters).

Saved activations per token and decoder block, in elements (read off what the ops save
for backward, with SDPA's flash kernel): the block input and its norm (2D), q and k
before and after RoPE (2D + 2Dkv), v (Dkv), the attention output and its contiguous
copy for wo (2D), the residual sum and its norm (2D), and the SwiGLU's gate, up, SiLU
and product (4F): 9D + 3Dkv + 4F. bf16 runs save them in 2 bytes, except the residual
stream (block input, residual sum), which stays fp32 under plain autocast. Under the
MixedPrecisionPolicy (FSDP2, bf16 stream) the plan follows what the rehearsal traces
(ftbench doctor --simulate): each norm keeps fp32 internals, 10 bytes per element
(_norm_saved), and attention keeps q and k after RoPE only: 2 x 10 D + 2 (3D + 2Dkv + 4F)
bytes a block. The encoder block saves about as much plus the norm of
its queries (D); the injection block saves X + R and its norm (2D) beyond a block; the
encoder readout, its norm and input (2D). With activation checkpointing a block keeps
its input only, and one block's activations are rebuilt at a time.

Checked against measured peaks (tests/training/test_memory_plan.py; tests/gpu): on CPU
within a few percent at toy, tiny and small, both arms, with and without checkpointing,
in fp32 and in bf16 with and without FSDP2; on an H200 at the 1.5B shape (2 layers and
all 28). CUDA also needs its context and allocator slack, reserved as 1 GiB + 10 % of the
device.
"""

from __future__ import annotations

import re

from ftbench.config.schema import PairConfig
from ftbench.model.accounting import model_cost
from ftbench.model.config import ModelConfig

GiB = 2**30
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str | int | float) -> int:
    """'80GB', '80 GiB', '141e9' -> bytes. GB is 10^9 as vendors print it; GiB is 2^30."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"device memory {text!r}: expected a number with a unit, e.g. 80GB, "
                         "80GiB or 141e9 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def usable_memory(device_memory: int, device_type: str = "cuda") -> int:
    """What tensors may use: CUDA keeps ~1 GiB for its context and the allocator leaves
    slack (fragmentation), reserved here as 10 % of the device."""
    if device_type == "cuda":
        return max(0, int(device_memory * 0.9 - GiB))
    return int(device_memory * 0.9)


def _block_act(cfg: ModelConfig, a: int = 4, r: int | None = None,
               mixed: bool = False) -> int:
    """Bytes a block saves per token: its input and residual sum at `r` bytes (the
    residual stream's dtype), everything else at `a`. `mixed`: FSDP2's bf16
    MixedPrecisionPolicy, where each norm's fp32 internals dominate (see _norm_saved)."""
    D, Dkv, F = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_hidden
    r = a if r is None else r
    if mixed:
        # Two norms (attention's, the SwiGLU's); attention keeps q and k after RoPE (the
        # rotation's products save only the tables), v, the attention output and its
        # contiguous copy for wo (3D + 2Dkv); the SwiGLU its gate, up, SiLU and product.
        return 2 * _norm_saved(D, a) + (3 * D + 2 * Dkv + 4 * F) * a
    return 2 * D * r + (7 * D + 3 * Dkv + 4 * F) * a


def _norm_saved(D: int, a: int) -> int:
    """Bytes an RMSNorm of a bf16 stream keeps per token under the MixedPrecisionPolicy.
    F.rms_norm computes in fp32: its backward keeps the input upcast to fp32 and the fp32
    normalised product (4 + 4 bytes), and the matmul after it keeps its bf16 output (a);
    the bf16 input itself is kept by no one (a residual add saves nothing). These fp32
    internals are why counting a norm as a bf16 input and output (2a) is short: by 6 bytes
    per element, two norms a block, and three more in the Free model (encoder readout,
    the injection's X + R, the encoder's queries). A fused CUDA kernel that keeps only the
    fp32 input and its rstd saves 4 bytes less: the plan errs high there."""
    return (8 + a) * D


def _block_params(cfg: ModelConfig) -> int:
    D, Dkv, F = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_hidden
    return 2 * D * D + 2 * D * Dkv + 3 * D * F + 2 * D


def _selective_saved(cfg: ModelConfig, a: int, r: int) -> int:
    """Bytes a block keeps per token under selective checkpointing: its input (the
    checkpoint's) and the outputs of its matmuls and attention: q, k, v, the attention
    output, wo, the SwiGLU's gate and up and w2 (4D + 2Dkv + 2F)."""
    D, Dkv, F = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_hidden
    return D * r + (4 * D + 2 * Dkv + 2 * F) * a


def arm_memory(cfg: ModelConfig, arch: str, *, seq_len: int, micro_batch: int, world: int = 1,
               checkpointing: bool | str = False, bf16: bool = False,
               device_type: str = "cpu", fsdp: bool | None = None,
               fused_optimizer: bool = True, grad_accum: int = 1) -> dict:
    """Predicted peak bytes per rank of one training step of one arm, by component.
    `world`: the ranks each parameter is sharded over (all ranks, or one node's under
    HSDP). `fsdp`: whether FSDP2 wraps the model (default: on more than one rank).
    `checkpointing`: False/"none", True/"full" or "selective" (see
    ftbench.training.distributed.parallelize). `fused_optimizer`: AdamW's fused kernel,
    which updates in place (the foreach path needs a temporary the size of the
    parameters). `grad_accum`: micro-batches per step (run.grad_accum); from the second
    on, the gradients of the earlier ones are alive through the forward and backward."""
    policy = {True: "full", False: "none"}.get(checkpointing, checkpointing)
    from ftbench.model.binary_mapper import MapperTiles
    from ftbench.model.linear_cross_entropy import chunk_tokens

    cost = model_cost(cfg, arch, seq_len)
    P = cost.params_total
    D, V, L, H = cfg.d_model, cfg.vocab_size, cfg.n_layers, cfg.latent_bits
    N = micro_batch * seq_len
    sharded = world > 1 if fsdp is None else fsdp
    mixed = bf16 and sharded  # FSDP2's MixedPrecisionPolicy: bf16 weights, bf16 stream
    a = 2 if bf16 else 4  # bytes of a saved activation
    r = 2 if mixed else 4  # the residual stream's: fp32 under plain autocast
    free = arch == "free"

    params = 4 * P / world
    grads = 4 * P / world
    optimizer = 8 * P / world
    gathered = reduce_scatter = 0.0
    if sharded:
        root = cost.params_embedding + D
        post = cost.params_post_sampler + (cost.params_encoder - _block_params(cfg) if free else 0)
        # FSDP2 reduce-scatters a unit's gradients in fp32 (reduce_dtype) while the next
        # block's backward runs: that unit's unsharded gradient, cast to fp32, is alive
        # beside the next block's rebuilt activations (a decoder block's: the units of the
        # block phase).
        reduce_scatter = 4 * _block_params(cfg)
        gathered = (2 if mixed else 4) * (root + post + 2 * _block_params(cfg)) + reduce_scatter
    # Plain autocast (bf16 on one device) keeps a bf16 copy of every matmul weight.
    autocast_copies = 2 * (P - cost.params_embedding - cost.params_post_sampler
                           + V * D) if bf16 and not mixed else 0.0

    block = _block_act(cfg, a, r, mixed) * N
    if policy == "full":
        blocks_saved = (L + (1 if free else 0)) * D * N * r
        recompute = block
    elif policy == "selective":
        kept = _selective_saved(cfg, a, r) * N
        blocks_saved = (L + (1 if free else 0)) * kept
        recompute = max(0, block - kept)
    else:
        blocks_saved = (L + (1 if free else 0)) * block
        recompute = 0.0
    if mixed:
        # Each block keeps its own bf16 copy of the rotary tables for the micro-batch
        # (cos and sin, head_dim / 2 wide each) until its backward: at full depth a
        # sixteenth of the checkpointed stream at head_dim D / 16.
        blocks_saved += (L + (1 if free else 0)) * cfg.head_dim * N * a
    free_extra = (cfg.d_model * 7 + H) * N * a if free else 0.0  # encoder q-norm, injection, readout
    injection_extra = 0.0
    if free and mixed:
        # Alive from the forward to the decoder's backward, as the rehearsal traces them:
        # the encoder readout's norm (fp32 internals, _norm_saved), X + R for the
        # injection's keys and values (a), and the sampler's H-wide logits, log-sigmoids
        # and bits (7 fp32 tensors). The encoder block's query norm is rebuilt with its
        # block under checkpointing, after the decoder's backward; without checkpointing
        # it is alive too.
        norms = 2 if policy == "none" else 1
        free_extra = (norms * _norm_saved(D, a) + D * a + 28 * H) * N
        # The injection block's backward rebuilds one norm more (of X + R), but by then the
        # upper blocks (L/2 - 1 of them) have let their saved inputs go: the larger of the
        # two moments is the block phase's (the injection block's at 2 layers, the last
        # block's at the presets' depths).
        per_block = {"full": (D * r + cfg.head_dim * a) * N,
                     "selective": _selective_saved(cfg, a, r) * N}.get(policy, block)
        injection_extra = max(0.0, _norm_saved(D, a) * N - (L // 2 - 1) * per_block)
    # The head's weight gradient until its unit reduce-scatters at the end of the backward:
    # in the unsharded parameters' dtype, bf16 under the MixedPrecisionPolicy (the fp32
    # copy for the reduction is made after the blocks' backward, when their activations
    # are gone).
    head_grad = (2 if mixed else 4) * V * D
    # The fused head + cross-entropy (ftbench.model.linear_cross_entropy) holds one chunk
    # at a time: its fp32 logits and the log-sum-exp's temporary (the low-precision logits
    # and gradient never coexist with both), plus the fp32 weight-gradient accumulator and
    # the gradient for the hidden states kept for the backward.
    c = min(N, chunk_tokens(V))
    head_transient = 8 * c * V + 4 * V * D + a * N * D
    head_phase = blocks_saved + free_extra + head_transient + head_grad
    if bf16:
        # In bf16 each chunk's weight gradient comes out of an fp32-output GEMM before it
        # is added into the accumulator (4VD beside it, with the chunk's logits), and the
        # backward scales the accumulator into a new fp32 tensor and casts that to the
        # weight's dtype (4VD + 2VD beside it): the head's gradient is one of these.
        head_transient = 4 * V * D + max(4 * V * D + 8 * c * V, 6 * V * D) + a * N * D
        head_phase = blocks_saved + free_extra + head_transient
        if mixed:  # the final norm's fp32 internals, until its backward
            head_phase += _norm_saved(D, a) * N
    # A block's backward (rebuilt first under checkpointing): its saved activations, the
    # gradient of the residual stream and the SwiGLU's gradients (gate and up, 2F).
    block_phase = (blocks_saved + free_extra + injection_extra + recompute + 2 * D * N * a
                   + 2 * cfg.ffn_hidden * N * a + head_grad)

    scratch = 0.0
    mapper_phase = 0.0
    if free:
        t = MapperTiles.for_device_type(device_type)
        ct = min(t.tokens, N)
        H_lo = H // 2
        n_lo, n_hi = 2**H_lo, 2 ** (H - H_lo)
        hi_per_tile = max(1, min(n_hi, t.codes // n_lo))
        scratch = 4 * ct * (hi_per_tile * n_lo + n_hi * (1 + H_lo) + n_lo)
        if bf16 and not mixed:  # the GEMM's bf16 copy of W_post, made once per backward
            scratch += 2 * cost.params_post_sampler
        half = L // 2
        per_block = {"full": D * r, "selective": _selective_saved(cfg, a, r)}.get(
            policy, _block_act(cfg, a, r, mixed))
        acts_lower = (half + 1) * per_block * N
        # The upper blocks' gradients, reduced so far; when accumulating they are part
        # of `accumulated` below.
        grads_upper = (0 if grad_accum > 1 else 4 * (L - half) * _block_params(cfg) / world) \
            + head_grad
        mapper_phase = acts_lower + free_extra + grads_upper + 4 * cost.params_post_sampler \
            + scratch
    # Gathered units and autocast's copies live from the forward through the backward;
    # by the optimiser step FSDP2 has resharded and autograd has let the copies go. AdamW's
    # foreach path over DTensors makes a temporary the size of the sharded parameters
    # (sqrt of the second moment); the fused kernel updates in place.
    # With several micro-batches a step, each backward adds into the gradients of the
    # ones before (FSDP2: the sharded gradients, 1/W; one device: every parameter's
    # fp32 .grad), so from the second micro-batch on they are alive all through the
    # forward and backward, not only at the optimiser step.
    accumulated = grads if grad_accum > 1 else 0.0
    compute = gathered + autocast_copies + accumulated
    foreach_temp = 4 * P / world if sharded and not fused_optimizer else 0.0
    # No block has finished its backward at the head: no reduce-scatter is in flight.
    phases = {"head": head_phase + compute - reduce_scatter,
              "block_backward": block_phase + compute,
              "mapper": mapper_phase + compute if free else 0.0,
              "optimizer": grads + foreach_temp}
    peak_phase = max(phases, key=phases.get)
    static = params + optimizer
    return {
        "arch": arch, "params": P, "world_size": world, "micro_batch": micro_batch,
        "seq_len": seq_len, "grad_accum": grad_accum, "checkpointing": policy, "bf16": bf16,
        "mixed_precision_policy": mixed,
        "bytes": {"parameters": params, "gradients": grads, "optimizer": optimizer,
                  "fsdp_gathered": gathered, "autocast_weight_copies": autocast_copies,
                  "activations": blocks_saved + free_extra + injection_extra + recompute,
                  "loss_transient": head_transient, "mapper_scratch": scratch,
                  "adamw_temporary": foreach_temp, "accumulated_gradients": accumulated},
        "phases": phases, "peak_phase": peak_phase,
        "peak_bytes": int(static + phases[peak_phase]),
    }


def _fits(cfg, arch, seq_len, b, world, ckpt, bf16, device_type, usable, per_rank=None) -> bool:
    # Micro-batches of b sequences out of a rank's per_rank accumulate gradients.
    accum = -(-per_rank // b) if per_rank else 1
    return arm_memory(cfg, arch, seq_len=seq_len, micro_batch=b, world=world,
                      checkpointing=ckpt, bf16=bf16, device_type=device_type,
                      grad_accum=accum)["peak_bytes"] <= usable


def max_micro_batch(cfg: ModelConfig, arch: str, seq_len: int, usable: int, *, world: int = 1,
                    checkpointing: bool = False, bf16: bool = False,
                    device_type: str = "cuda", per_rank: int | None = None) -> int:
    """Largest per-device batch (sequences) whose predicted peak fits; 0 if none does.
    `per_rank`: the sequences a rank takes per step, when known: a smaller micro-batch
    accumulates gradients, which the plan counts."""
    args = (cfg, arch, seq_len)
    rest = (world, checkpointing, bf16, device_type, usable, per_rank)
    if not _fits(*args, 1, *rest):
        return 0
    lo, hi = 1, 2
    while hi <= 1 << 20 and _fits(*args, hi, *rest):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(*args, mid, *rest) else (lo, mid)
    return lo


def gpus_needed(cfg: ModelConfig, arch: str, seq_len: int, usable: int, *,
                checkpointing: bool, bf16: bool = True, limit: int = 4096) -> int | None:
    """Fewest ranks (1, 2, 4, 8, then multiples of 8) at which one sequence per device
    fits, accumulating gradients over micro-batches (a rank with one sequence a step needs
    no more than that); None if even `limit` does not (the unsharded parts alone are too
    large)."""
    worlds = [1, 2, 4] + list(range(8, limit + 1, 8))
    for w in worlds:
        if _fits(cfg, arch, seq_len, 1, w, checkpointing, bf16, "cuda", usable, 2):
            return w
    return None


def memory_plan(cfg: PairConfig, world_size: int = 1, device_memory: int | str | None = None,
                device_type: str | None = None, vocab_size: int | None = None,
                ranks_per_node: int | None = None) -> dict:
    """Peak memory per rank for every arm of a resolved pair config at `world_size`, by
    component, with and without activation checkpointing; with `device_memory` (bytes or
    '80GB'), the largest per-device batch that fits and the ranks a 1-sequence micro-batch
    needs. Device type: cuda when a device memory is given, else this machine's.
    `vocab_size`: the prepared tokenizer's, when known (default: the config's).
    `ranks_per_node`: where the job spans nodes, run.shard_ranks 0 shards within one
    (HSDP), so each rank holds a node's share of the weights, not the job's."""
    import torch

    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import shard_ranks

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if device_type is None:
        device_type = "cuda" if device_memory is not None or torch.cuda.is_available() else "cpu"
    bf16 = cfg.run.dtype == "bfloat16" or (cfg.run.dtype == "auto" and device_type == "cuda")
    T = cfg.data.seq_len
    if cfg.run.batch_size % world_size:
        raise ValueError(f"run.batch_size={cfg.run.batch_size} is not divisible by "
                         f"world_size={world_size}")
    per_rank = cfg.run.batch_size // world_size
    micro = max(1, per_rank // cfg.run.grad_accum)
    shard = shard_ranks(world_size, ranks_per_node, cfg.run.shard_ranks)
    policy = cfg.run.checkpoint_policy
    mem = parse_memory(device_memory) if device_memory is not None else None
    usable = usable_memory(mem, device_type) if mem is not None else None
    out = {"size": cfg.size, "world_size": world_size, "device_type": device_type,
           "dtype": "bfloat16" if bf16 else "float32", "seq_len": T, "micro_batch": micro,
           "grad_accum": cfg.run.grad_accum, "shard_ranks": shard,
           "checkpoint_policy": policy,
           "device_memory": mem, "usable_memory": usable,
           "run_checkpointing": cfg.run.activation_checkpointing, "arms": {}}
    for arm in pair_arms(cfg, vocab_size or cfg.model.vocab_size):
        row = {}
        for ckpt in ("none", policy):
            key = "checkpointing" if ckpt != "none" else "no_checkpointing"
            est = arm_memory(arm.model, arm.arch, seq_len=T, micro_batch=micro,
                             world=shard, checkpointing=ckpt, bf16=bf16,
                             device_type=device_type, fsdp=world_size > 1,
                             fused_optimizer=cfg.optim.fused, grad_accum=cfg.run.grad_accum)
            if usable is not None:
                est["max_micro_batch"] = max_micro_batch(
                    arm.model, arm.arch, T, usable, world=shard, checkpointing=ckpt,
                    bf16=bf16, device_type=device_type, per_rank=per_rank)
                est["fits"] = est["peak_bytes"] <= usable
                est["gpus_needed"] = gpus_needed(arm.model, arm.arch, T, usable,
                                                 checkpointing=ckpt, bf16=bf16)
                est["one_sequence_bytes"] = arm_memory(
                    arm.model, arm.arch, seq_len=T, micro_batch=1, world=shard,
                    checkpointing=ckpt, bf16=bf16, device_type=device_type,
                    grad_accum=per_rank)["peak_bytes"]
            row[key] = est
        out["arms"][arm.name] = row
    return out


def _fmt(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_memory_plan(d: dict) -> list[str]:
    """Lines for --dry-run: per arm, the peak and its parts, with and without checkpointing."""
    lines = [f"memory plan per rank: {d['world_size']} rank(s), {d['device_type']} "
             f"{d['dtype']}, micro-batch {d['micro_batch']} x {d['seq_len']} tokens"
             + (f", device {_fmt(d['device_memory'])} ({_fmt(d['usable_memory'])} usable)"
                if d.get("device_memory") else "")]
    for name, row in d["arms"].items():
        for key, label in (("no_checkpointing", "no ckpt"), ("checkpointing", "ckpt")):
            e = row[key]
            b = e["bytes"]
            mark = " <- this run" if (key == "checkpointing") == d["run_checkpointing"] else ""
            lines.append(
                f"  {name:16s} {label:8s} peak {_fmt(e['peak_bytes']):>10s}  (params "
                f"{_fmt(b['parameters'])}, grads {_fmt(b['gradients'])}, AdamW "
                f"{_fmt(b['optimizer'])}, activations {_fmt(b['activations'])}, loss "
                f"{_fmt(b['loss_transient'])}"
                + (f", mapper scratch {_fmt(b['mapper_scratch'])}" if b["mapper_scratch"] else "")
                + (f", FSDP gathered {_fmt(b['fsdp_gathered'])}" if b["fsdp_gathered"] else "")
                + (f", bf16 weight copies {_fmt(b['autocast_weight_copies'])}"
                   if b["autocast_weight_copies"] else "")
                + f"; peak at {e['peak_phase']}){mark}")
            if "max_micro_batch" in e:
                fit = "fits" if e["fits"] else "does NOT fit"
                need = e["gpus_needed"]
                hint = ""
                if not e["fits"] and e["max_micro_batch"]:
                    per_rank = d["micro_batch"] * d.get("grad_accum", 1)
                    accum = accum_that_fits(per_rank, e["max_micro_batch"])
                    hint = f" (set run.grad_accum={accum})"
                lines.append(f"  {'':16s} {'':8s} {fit}{hint}; largest micro-batch "
                             f"{e['max_micro_batch']} sequences; 1 sequence per device needs "
                             f"{need if need else 'more than 4096'} device(s)")
    return lines


def accum_that_fits(per_rank: int, max_micro_batch: int) -> int:
    """The smallest run.grad_accum that splits a rank's sequences into equal micro-batches
    of at most `max_micro_batch`."""
    return next(k for k in range(1, per_rank + 1)
                if per_rank % k == 0 and per_rank // k <= max_micro_batch)


class MemoryPlanError(ValueError):
    """A run whose planned peak exceeds the device's memory."""


def run_fits(plan: dict) -> dict:
    """The run's own setting (checkpointing or not) per arm: {arm: estimate}, for the arms
    that do not fit (empty: all fit, or no device memory given)."""
    key = "checkpointing" if plan["run_checkpointing"] else "no_checkpointing"
    return {name: row[key] for name, row in plan["arms"].items()
            if row[key].get("fits") is False}


def device_memory_of(device) -> int | None:
    """A GPU's memory in bytes; None for a CPU (its RAM is shared with everything else)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def check_fits(cfg: PairConfig, world_size: int, device_memory: int | str | None, device,
               vocab_size: int | None = None, ranks_per_node: int | None = None) -> dict | None:
    """Hold every arm's planned peak against the device's memory (`device_memory`, else a
    GPU's own); MemoryPlanError, naming what does not fit and a setting that would, if
    any arm does not. None when there is nothing to check against (CPU, no memory given)."""
    import torch

    device = torch.device(device)
    if device_memory is None:
        device_memory = device_memory_of(device)
        if device_memory is None:
            return None
    try:
        plan = memory_plan(cfg, world_size, device_memory, device_type=device.type,
                           vocab_size=vocab_size, ranks_per_node=ranks_per_node)
    except ValueError as e:  # a batch that does not split over the ranks
        raise MemoryPlanError(str(e)) from None
    bad = run_fits(plan)
    if bad:
        raise MemoryPlanError("\n".join(refusal_lines(plan, bad, cfg)))
    return plan


def refusal_lines(plan: dict, bad: dict, cfg: PairConfig) -> list[str]:
    """What does not fit, its largest components, and what would fit instead."""
    per_rank = cfg.run.batch_size // plan["world_size"]
    lines = [f"the run does not fit: {_fmt(plan['usable_memory'])} usable of "
             f"{_fmt(plan['device_memory'])} per device, {plan['world_size']} rank(s), "
             f"micro-batch {plan['micro_batch']} x {plan['seq_len']} tokens "
             f"(run.batch_size {cfg.run.batch_size} / {plan['world_size']} rank(s) / "
             f"run.grad_accum {cfg.run.grad_accum}); nothing was written"]
    for name, e in bad.items():
        parts = sorted(((v, k) for k, v in e["bytes"].items() if v), reverse=True)
        lines.append(f"  {name}: plans {_fmt(e['peak_bytes'])} at its {e['peak_phase']} phase; "
                     + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for v, k in parts[:4]))
    worst = min(bad.values(), key=lambda e: e["max_micro_batch"])
    fit = worst["max_micro_batch"]
    if fit:
        accum = accum_that_fits(per_rank, fit)
        lines.append(f"fix: --set run.grad_accum={accum} (micro-batch {per_rank // accum} "
                     f"sequences; the largest that fits is {fit}); same global batch, same run")
    else:
        need = worst.get("gpus_needed")
        lines.append(f"no micro-batch fits: one sequence per device needs "
                     f"{_fmt(worst['one_sequence_bytes'])} usable"
                     + (f"; shard over {need} devices" if need and need > plan["world_size"]
                        else "") + " or use a device with more memory")
    if not cfg.run.activation_checkpointing:
        with_ckpt = [row["checkpointing"] for row in plan["arms"].values()]
        if all(e["fits"] for e in with_ckpt):
            lines.append("or: --set run.activation_checkpointing=true (every arm then fits "
                         "at this micro-batch)")
    return lines


# Model-FLOPs utilisation assumed by the GPU-hour estimate where the rehearsal has no figure
# for the size: what ftbench's 1.5B recipe reaches (the rehearsal's roofline for full
# checkpointing on 8 x H100: 41 %; a measured 1.5B step on one H200 without
# checkpointing: 39 %; benchmarks/README.md).
ASSUMED_MFU = 0.40
# The rehearsal's roofline MFU on H100 SXM per size and arm (baseline, Free, the (L+1)-layer
# control), model FLOPs: `ftbench doctor --simulate --size S --world-size 8 --layers 2
# --gpu h100` on the shipped configs. These widths are memory-bound (norms, RoPE, SwiGLU's
# pointwise ops and the optimiser at HBM bandwidth weigh more beside smaller matmuls), so
# they reach less than the 1.5B shape's 41 %. A roofline is an upper bound on speed.
ROOFLINE_GPU = "H100 SXM 80GB"
ROOFLINE_MFU = {
    "125m": {"baseline": 0.257, "free": 0.261, "control": 0.258},
    "350m": {"baseline": 0.306, "free": 0.306, "control": 0.306},
    "760m": {"baseline": 0.369, "free": 0.368, "control": 0.369},
}


def _arm_kind(name: str, arch: str) -> str:
    return "free" if arch == "free" else "control" if name.endswith("-control") else "baseline"


def compute_plan(cfg: PairConfig, dry: dict, *, gpu: str = "h100", mfu: float | None = None,
                 world_size: int = 1) -> dict:
    """Tokens, FLOPs, disk and estimated GPU-hours of every arm and of the whole grid, from
    a dry run's figures (`dry`: ftbench.training.pair.dry_run's dict). GPU-hours are model
    FLOPs / (the GPU's datasheet bf16 peak x MFU): an estimate, not a measurement. MFU:
    `mfu` if given; else the rehearsal's roofline figure for the size on the GPU it was
    computed for (ROOFLINE_MFU); else ASSUMED_MFU."""
    import numpy as np

    from ftbench.data.shards import token_dtype
    from ftbench.training.checkpoint import KEEP
    from ftbench.training.hardware import gpu_spec

    if mfu is not None and not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    spec = gpu_spec(gpu)
    roofline = ROOFLINE_MFU.get(cfg.size) if spec.name == ROOFLINE_GPU else None
    source = ("given" if mfu is not None else "roofline" if roofline is not None
              else "assumed")
    steps = cfg.run.steps
    tokens = dry["tokens_per_step"] * steps
    # The training loop's own schedule (no snapshot at the last step: that is the export).
    from ftbench.training.snapshots import snapshot_interval, snapshot_steps

    snapshot_every, snapshots = snapshot_interval(cfg), len(snapshot_steps(cfg))
    gpu_dtype_bytes = 4 if cfg.run.dtype == "float32" else 2  # auto: bf16 on a GPU
    arms = {}
    for name, a in dry["arms"].items():
        arm_mfu = (mfu if mfu is not None else roofline[_arm_kind(name, a["arch"])]
                   if roofline is not None else ASSUMED_MFU)
        flops = a["train_flops_per_token"] * tokens
        arms[name] = {
            "tokens": tokens, "train_flops": flops, "mfu": arm_mfu,
            "gpu_hours": flops / (spec.bf16_flops * arm_mfu) / 3600,
            # fp32 master weights and AdamW's two moments per kept checkpoint.
            "checkpoint_bytes": KEEP * 12 * a["params"],
            "export_bytes": 4 * a["params"],
            "snapshot_bytes": snapshots * gpu_dtype_bytes * a["params"]}
    token_bytes = np.dtype(token_dtype(dry["vocab_size"])).itemsize
    planned = dry["data"]["tokens_planned"]
    # Validation holds val_fraction of the documents: about that share of the tokens more.
    shard_bytes = token_bytes * planned / (1 - cfg.data.val_fraction)
    total_flops = sum(a["train_flops"] for a in arms.values())
    gpu_hours = sum(a["gpu_hours"] for a in arms.values())
    return {"gpu": spec.name, "peak_bf16_flops": spec.bf16_flops, "mfu_source": source,
            "world_size": world_size, "steps": steps, "tokens_per_arm": tokens,
            "arms": arms, "grid_train_flops": total_flops, "grid_gpu_hours": gpu_hours,
            "grid_wall_hours": gpu_hours / world_size,
            "shard_bytes": shard_bytes, "token_bytes": token_bytes,
            "snapshots_per_arm": snapshots, "snapshot_every": snapshot_every,
            "grid_disk_bytes": shard_bytes + sum(a["checkpoint_bytes"] + a["export_bytes"]
                                                 + a["snapshot_bytes"] for a in arms.values())}


def format_compute_plan(c: dict) -> list[str]:
    """Lines for --dry-run: FLOPs, disk and the GPU-hour estimate per arm and for the grid."""
    def gb(n: float) -> str:
        return f"{n / 1e9:,.1f} GB"

    lines = [f"compute and disk: {c['steps']:,} steps, {c['tokens_per_arm']:,} tokens per arm; "
             f"shards {gb(c['shard_bytes'])} ({c['token_bytes']} bytes per token, "
             "validation included); snapshots "
             + (f"{c['snapshots_per_arm']} per arm (every {c['snapshot_every']:,} steps)"
                if c["snapshots_per_arm"] else "none")]
    for name, a in c["arms"].items():
        lines.append(f"  {name:16s} train FLOPs {a['train_flops']:.3e}  est. "
                     f"{a['gpu_hours']:,.1f} GPU-hours (MFU {100 * a['mfu']:.1f} %)  checkpoints {gb(a['checkpoint_bytes'])}"
                     f", export {gb(a['export_bytes'])}, snapshots {gb(a['snapshot_bytes'])}")
    lines.append(f"  grid: {len(c['arms'])} arms, {c['grid_train_flops']:.3e} FLOPs, est. "
                 f"{c['grid_gpu_hours']:,.1f} GPU-hours on {c['gpu']} ({c['grid_wall_hours']:,.1f} "
                 f"hours on {c['world_size']} GPU(s)), disk {gb(c['grid_disk_bytes'])}")
    mfus = sorted({round(100 * a["mfu"], 1) for a in c["arms"].values()})
    why = {"given": "as given (--mfu)",
           "roofline": "the rehearsal's roofline for this size on this GPU (`ftbench doctor "
                       "--simulate`; an upper bound on speed)",
           "assumed": "assumed: the 1.5B recipe's; `ftbench doctor --simulate` rehearses "
                      "this size for a roofline figure"}[c["mfu_source"]]
    lines.append(f"  GPU-hours are an ESTIMATE, not a measurement: model FLOPs at MFU "
                 f"{' / '.join(f'{m:g}' for m in mfus)} % of the {c['gpu']}'s datasheet bf16 "
                 f"peak ({c['peak_bf16_flops'] / 1e12:,.0f} TFLOP/s), {why}; --gpu, --mfu")
    return lines
