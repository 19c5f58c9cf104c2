"""The rows of `ftbench doctor`: each check measures one thing and says whether it is in
the range this machine should give.

Ranges are stated with each row (and why); a row that cannot run (no compiler, no second
rank) fails with the reason, it is never skipped and counted as passed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Row:
    name: str
    passed: bool
    measured: str
    expected: str
    seconds: float = 0.0
    detail: str = ""
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tiny_pair(vocab=96, d=64, layers=2, H=8, seq=32):
    from ftbench.config import pair_config_from_dict

    return pair_config_from_dict({
        "size": "toy",
        "model": {"vocab_size": vocab, "d_model": d, "n_layers": layers, "n_heads": 4,
                  "n_kv_heads": 2, "ffn_hidden": 4 * d, "latent_bits": H,
                  "max_seq_len": max(64, seq)},
        "data": {"seq_len": seq}, "latent": {"kappas_bits": [0.5]},
        "run": {"batch_size": 4, "steps": 10}})


# ---- rows ---------------------------------------------------------------------------

def check_device(nproc: int) -> Row:
    import torch.distributed as dist

    dev = _device()
    if dev.type == "cuda":
        name = torch.cuda.get_device_name()
        backend_ok = dist.is_nccl_available()
        backend = "nccl"
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16 (no bf16!)"
        n_dev = torch.cuda.device_count()
        ok = backend_ok and torch.cuda.is_bf16_supported() and n_dev >= 1
        where = f"{n_dev} x {name}"
    else:
        backend, backend_ok = "gloo", dist.is_gloo_available()
        dtype = "float32"
        ok = backend_ok
        where = f"cpu, {torch.get_num_threads()} threads"
    return Row("device / dtype / backend", ok,
               f"{where}; {dtype}; {backend} {'available' if backend_ok else 'MISSING'}; "
               f"torch {torch.__version__}",
               "cuda+bf16+nccl on GPUs, cpu+fp32+gloo on CPUs",
               figures={"device": dev.type, "dtype": dtype, "backend": backend,
                        "backend_available": backend_ok, "torch": torch.__version__})


BF16_LOSS_TOL = 5e-3
BF16_GRAD_TOL = 3e-2


def check_bf16() -> Row:
    """fp32 vs bf16 autocast on the same weights, batch and Z, both arms.

    bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per op); through a few
    layers and a softmax, measured on CPU: loss 1.5e-5 / 7e-6 relative (baseline / Free),
    gradient (all parameters as one vector) 4e-3 relative L2. Ranges: loss < 5e-3,
    gradient < 3e-2 and cosine > 0.99, room for GPU kernels that round differently. A
    wrong cast (G, the KL or the loss in bf16; fp16 overflow) shows up as NaN or 10x."""
    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import DistContext
    from ftbench.training.loop import build_arm_model, forward_loss

    dev = _device()
    cfg = _tiny_pair()
    ctx = DistContext(device=dev)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (4, cfg.data.seq_len + 1), generator=g).to(dev)
    figures, ok = {}, True
    for arm in pair_arms(cfg, cfg.model.vocab_size):
        model = build_arm_model(arm, cfg, ctx)
        res = {}
        for amp in (None, torch.bfloat16):
            model.zero_grad(set_to_none=True)
            loss = forward_loss(model, arm, tokens, cfg, "doctor/bf16", 0, amp)["loss"]
            loss.backward()
            grad = torch.cat([p.grad.flatten().float() for p in model.parameters()
                              if p.grad is not None])
            res[amp] = (float(loss.detach()), grad)
        (l32, g32), (l16, g16) = res[None], res[torch.bfloat16]
        loss_rel = abs(l16 - l32) / abs(l32)
        grad_rel = float((g16 - g32).norm() / g32.norm())
        cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
        figures[arm.name] = {"loss_fp32": l32, "loss_bf16": l16, "loss_rel": loss_rel,
                             "grad_rel": grad_rel, "grad_cos": cos}
        ok &= (math.isfinite(l16) and loss_rel < BF16_LOSS_TOL and grad_rel < BF16_GRAD_TOL
               and cos > 0.99)
    m = "; ".join(f"{k}: loss {v['loss_rel']:.1e}, grad {v['grad_rel']:.1e} (cos "
                  f"{v['grad_cos']:.4f})" for k, v in figures.items())
    return Row("bf16 autocast vs fp32 (both arms)", ok, m,
               f"loss rel < {BF16_LOSS_TOL:g}, grad rel < {BF16_GRAD_TOL:g}, cos > 0.99",
               figures=figures)


COMPILE_TOL = 1e-4


def check_compile() -> Row:
    """torch.compile (inductor) of one decoder block, the unit that run.compile compiles
    (every block and the encoder block share its code), forward and backward against
    eager. Compiled kernels reorder float sums, so agreement is to ~1e-7 relative, not
    bitwise; the range is 1e-4. One block, not a whole model: the first compile of a
    model's blocks took over 3 minutes on a busy 2-core CPU (one block: ~50 s cold,
    ~12 s from inductor's on-disk cache)."""
    from ftbench.model.blocks import AttentionMask, Block, Rotary

    dev = _device()
    cfg = _tiny_pair().model
    torch.manual_seed(0)
    block = Block(cfg).to(dev)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.05)
    T = 32
    rope = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_base).to(dev)(
        torch.arange(T, device=dev)[None].expand(2, T), T - 1)
    mask = AttentionMask.build(None, None, T, dev)
    x = torch.randn(2, T, cfg.d_model, device=dev, requires_grad=True)

    def run(module):
        x.grad = None
        block.zero_grad(set_to_none=True)
        y = module(x, rope, mask)
        (y.float() ** 2).mean().backward()
        grads = torch.cat([x.grad.flatten()] + [p.grad.flatten() for p in block.parameters()])
        return y.detach(), grads

    y_e, g_e = run(block)
    t0 = time.perf_counter()
    y_c, g_c = run(torch.compile(block))
    tc = time.perf_counter() - t0
    out_rel = float((y_c - y_e).norm() / y_e.norm())
    grad_rel = float((g_c - g_e).norm() / g_e.norm())
    ok = out_rel < COMPILE_TOL and grad_rel < COMPILE_TOL
    return Row("torch.compile vs eager (one block, fwd+bwd)", ok,
               f"output rel {out_rel:.1e}, grad rel {grad_rel:.1e}; compile + first step "
               f"{tc:.1f} s", f"both < {COMPILE_TOL:g}",
               figures={"out_rel": out_rel, "grad_rel": grad_rel, "compile_step_s": tc})


FSDP_LOSS_TOL = 2e-6
FSDP_BF16_LOSS_TOL = 5e-3


def check_fsdp_and_reshard(nproc: int) -> list[Row]:
    """Three rows from one launch, all through the training loop:
    - FSDP2 on `nproc` ranks vs one process in fp32 (losses of 4 steps, both arms). 2e-6
      is ~8 ulp of a loss near 3.9; measured gaps are 0-1 ulp. fp32 on any device: the
      tolerance is fp32's.
    - A checkpoint written by those ranks at step 2 resumed by one process (state
      bit-identical after loading; losses of steps 3-4 as the uninterrupted run's).
    - bf16 with FSDP2's MixedPrecisionPolicy on `nproc` ranks vs one rank (3 steps): the
      ranks' bf16 gradients of half batches, summed in fp32, against one bf16 gradient of
      the whole batch. bf16 keeps 8 significant bits (2^-9 ~ 2e-3 relative rounding), and
      AdamW's normalised update turns a rounding of the gradient into one of the step, so
      the losses agree to about that: the range is the bf16 row's loss tolerance, 5e-3
      relative (measured on CPU: 1.6e-5). A gradient that misses a rank's half of the
      batch changes the step's direction and shows at once."""
    from ftbench.doctor.parity import (ARMS, compare_states, loaded_state, losses, run_local,
                                       spawn, train_phase)

    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftbench-doctor-") as d:
        root = Path(d)
        st = root / "states"
        bf16 = dict(dtype="bfloat16", steps=3)
        try:
            spawn(nproc, [(train_phase, dict(root=root, run="sharded")),
                          (train_phase, dict(root=root, run="reshard", stop_after=2)),
                          (loaded_state, dict(root=root, run="reshard", out=st / "saved")),
                          (train_phase, dict(root=root, run="sharded-bf16", **bf16))])
            run_local([(train_phase, dict(root=root, run="single")),
                       (loaded_state, dict(root=root, run="reshard", out=st / "loaded")),
                       (train_phase, dict(root=root, run="reshard"))], like_world=nproc)
            spawn(1, [(train_phase, dict(root=root, run="single-bf16", **bf16))],
                  like_world=nproc)
        except Exception as e:  # noqa: BLE001  (a failed launch is a failed row)
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            return [Row(f"FSDP2 {nproc} ranks vs 1 process", False, msg, "runs", 0,
                        traceback.format_exc()[-2000:]),
                    Row(f"resume {nproc} ranks -> 1", False, "not run (launch failed)", "runs"),
                    Row(f"FSDP2 bf16 {nproc} ranks vs 1", False, "not run (launch failed)",
                        "runs")]
        dt = time.perf_counter() - t0
        gaps = {a: max(abs(x - y) for x, y in zip(losses(root, "sharded", a),
                                                   losses(root, "single", a))) for a in ARMS}
        rows.append(Row(f"FSDP2 {nproc} ranks vs 1 process (both arms, 4 steps)",
                        all(g < FSDP_LOSS_TOL for g in gaps.values()),
                        ", ".join(f"{a} max |dloss| {g:.1e}" for a, g in gaps.items()),
                        f"< {FSDP_LOSS_TOL:g}", dt / 3, figures=gaps))
        state_gap = {a: compare_states(torch.load(st / "saved" / f"{a}.pt"),
                                       torch.load(st / "loaded" / f"{a}.pt")) for a in ARMS}
        resume_gap = {a: max(abs(x - y) for x, y in zip(losses(root, "reshard", a),
                                                         losses(root, "single", a)))
                      for a in ARMS}
        n_steps = {a: len(losses(root, "reshard", a)) for a in ARMS}
        ok = (all(v == 0.0 for v in state_gap.values())
              and all(g < FSDP_LOSS_TOL for g in resume_gap.values())
              and all(n == 4 for n in n_steps.values()))
        rows.append(Row(f"save at {nproc} ranks, resume at 1 (both arms)", ok,
                        ", ".join(f"{a}: state diff {state_gap[a]:g}, |dloss| "
                                  f"{resume_gap[a]:.1e}" for a in ARMS),
                        f"state diff 0 (bit-identical), |dloss| < {FSDP_LOSS_TOL:g}", dt / 3,
                        figures={"state_gap": state_gap, "loss_gap": resume_gap}))
        rel = {a: max(abs(x - y) / abs(y) for x, y in zip(losses(root, "sharded-bf16", a),
                                                          losses(root, "single-bf16", a)))
               for a in ARMS}
        rows.append(Row(f"FSDP2 bf16 mixed precision, {nproc} ranks vs 1 (both arms, 3 steps)",
                        all(g < FSDP_BF16_LOSS_TOL for g in rel.values()),
                        ", ".join(f"{a} max |dloss|/loss {g:.1e}" for a, g in rel.items()),
                        f"< {FSDP_BF16_LOSS_TOL:g}", dt / 3, figures=rel))
    return rows


def timed_step(size: str, layers: int, batch: int, seq: int, steps: int) -> dict:
    """Interleaved training steps of both arms at `size` with `layers` layers: median
    step time, tokens/s, MFU, and the analytic FLOP ratio beside the measured time ratio."""
    from ftbench.doctor.memory import step_config
    from ftbench.model.accounting import model_cost
    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import DistContext
    from ftbench.training.hardware import _cpu_matmul_peak, load_average, peak_flops
    from ftbench.training.loop import (autocast_dtype, build_arm_model, forward_loss,
                                       make_optimizer)

    dev = _device()
    cfg = step_config(size, batch, seq, False, layers=layers)
    ctx = DistContext(device=dev)
    amp = autocast_dtype(cfg, dev)
    arms = pair_arms(cfg, cfg.model.vocab_size)[:2]
    state = {}
    for arm in arms:
        m = build_arm_model(arm, cfg, ctx)
        state[arm.name] = (arm, m, make_optimizer(m, cfg))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), generator=g).to(dev)

    def step(name, i):
        arm, m, opt = state[name]
        loss = forward_loss(m, arm, tokens, cfg, f"doctor/{i}", 0, amp)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for name in state:  # warm-up: allocations, optimiser state, kernel selection
        step(name, 0)
    times = {name: [] for name in state}
    cpu = {name: [] for name in state}
    for i in range(steps):
        # Interleaved, so that load from other jobs hits both arms alike.
        for name in state:
            t0, c0 = time.perf_counter(), time.process_time()
            step(name, i + 1)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    peak = peak_flops(dev, amp)
    threads = torch.get_num_threads()
    # A wall-clock peak taken while other jobs hold the cores is too low, and a CPU-time
    # MFU against it exceeds 100 %: the CPU-time MFU takes a CPU-time peak.
    peak_cpu_time = _cpu_matmul_peak(threads, cpu_time=True) if dev.type == "cpu" else None
    out = {"size": size, "layers": cfg.model.n_layers, "batch": batch, "seq": seq,
           "device": dev.type, "peak_flops": peak, "peak_flops_cpu_time": peak_cpu_time,
           "threads": threads,
           "load_avg": load_average(), "arms": {}}
    for arm in arms:
        t, c = statistics.median(times[arm.name]), statistics.median(cpu[arm.name])
        flops = model_cost(arm.model, arm.arch, seq).train_flops_per_token
        tps = batch * seq / t
        # CPU time spread over the threads: what the step took when it had the cores, so
        # a figure judged on it does not move with the machine's other jobs.
        busy_s = c / threads
        out["arms"][arm.name] = {"step_s": t, "step_cpu_s": c, "tokens_per_s": tps,
                                 "flops_per_token": flops,
                                 "mfu": flops * tps / peak if peak else None,
                                 "mfu_cpu_time": (flops * batch * seq / busy_s
                                                  / peak_cpu_time
                                                  if peak_cpu_time and busy_s > 0 else None)}
    b, f = out["arms"]["baseline"], out["arms"]["free-k0p5"]
    out["time_ratio"] = f["step_s"] / b["step_s"]
    out["cpu_time_ratio"] = f["step_cpu_s"] / b["step_cpu_s"] if b["step_cpu_s"] > 0 else None
    out["flop_ratio"] = f["flops_per_token"] / b["flops_per_token"]
    return out


def timed_step_verdict(r: dict) -> tuple[bool, float | None, list[float]]:
    """(passed, time ratio / FLOP ratio, MFUs) as judged: on a CPU from process CPU time,
    which other jobs on shared cores do not stretch as they stretch wall time; on a GPU,
    a dedicated device, from synchronised wall time."""
    on_cpu = r["device"] == "cpu"
    key = "mfu_cpu_time" if on_cpu else "mfu"
    mfus = [a[key] for a in r["arms"].values() if a.get(key) is not None]
    ratio = r["cpu_time_ratio"] if on_cpu else r["time_ratio"]
    rel = ratio / r["flop_ratio"] if ratio is not None else None
    ok = bool(mfus) and all(0.005 < m <= 1.0 for m in mfus) and rel is not None \
        and 0.5 < rel < 1.5
    return ok, rel, mfus


def check_timed_step(size: str, layers: int, batch: int, seq: int, steps: int) -> Row:
    """Tokens/s and MFU are reported, not judged against a target on CPU (shared cores
    make them noisy): the row checks that MFU is a plausible fraction (0.5 %..100 %) and
    that the measured Free/baseline time ratio is within 0.5x..1.5x of the analytic FLOP
    ratio. Above: a slow path (the Eq. 8 GEMM in fp32 on a GPU, a dense 2^H tensor).
    Below: the Free model's extra FLOPs run faster than the baseline's average, which is
    expected when they are one large GEMM (the Eq. 8 backward at 2^16 codes) beside the
    baseline's small ones (measured at small x 2 layers on CPU: 0.73x); far below, work
    is being skipped. On a CPU both are judged on the process's CPU time, not wall time,
    so the verdict does not depend on the machine's other jobs (timed_step_verdict). See
    benchmarks/bench_training.py."""
    r = timed_step(size, layers, batch, seq, steps)
    b, f = r["arms"]["baseline"], r["arms"]["free-k0p5"]
    ok, _, mfus = timed_step_verdict(r)
    on_cpu = r["device"] == "cpu"
    mfu_s = (f"MFU {100 * mfus[0]:.1f} % / {100 * mfus[1]:.1f} %" if len(mfus) == 2
             else "MFU n/a")
    ratio = r["cpu_time_ratio"] if on_cpu else r["time_ratio"]
    how = " (CPU time; load {:.1f})".format(r["load_avg"]) if on_cpu and r["load_avg"] \
        is not None else (" (CPU time)" if on_cpu else "")
    ratio_s = f"{ratio:.3f}x" if ratio is not None else "n/a"
    return Row(f"timed step, {size} x {r['layers']} layers, {batch} x {seq} tokens", ok,
               f"baseline {b['tokens_per_s']:.0f} tok/s, free {f['tokens_per_s']:.0f} tok/s "
               f"(wall); {mfu_s}{how}; Free/baseline time {ratio_s} vs FLOPs "
               f"{r['flop_ratio']:.3f}x",
               "MFU 0.5-100 %; time ratio within 0.5-1.5x of the FLOP ratio", figures=r)


MEMORY_TOL = 0.20


def check_memory(size: str, layers: int, batch: int, seq: int) -> Row:
    """Measured peak of two training steps (a fresh subprocess for both arms, see
    ftbench.doctor.memory) against the memory plan; also the Free/baseline memory ratio."""
    from ftbench.doctor.memory import measure_many, step_config
    from ftbench.training.memory_plan import arm_memory

    cfg = step_config(size, batch, seq, False, layers=layers)
    dev = _device()
    figures, ok = {}, True
    arches = ("baseline", "free")
    peaks = measure_many([{"size": size, "arch": arch, "batch": batch, "seq": seq,
                           "ckpt": False, "layers": layers} for arch in arches])
    for arch, peak in zip(arches, peaks):
        got = peak["peak_bytes"]
        want = arm_memory(cfg.model, arch, seq_len=seq, micro_batch=batch,
                          bf16=dev.type == "cuda", device_type=dev.type)["peak_bytes"]
        figures[arch] = {"measured": got, "predicted": want, "ratio": want / got}
        ok &= abs(want / got - 1) <= MEMORY_TOL
    figures["free_over_baseline"] = figures["free"]["measured"] / figures["baseline"]["measured"]
    return Row(f"peak memory vs plan, {size} x {cfg.model.n_layers} layers", ok,
               "; ".join(f"{a}: {v['measured'] / 2**20:.0f} MiB measured, "
                         f"{v['predicted'] / 2**20:.0f} MiB planned ({100 * (v['ratio'] - 1):+.1f} %)"
                         for a, v in figures.items() if isinstance(v, dict))
               + f"; Free/baseline memory {figures['free_over_baseline']:.2f}x",
               f"plan within ±{100 * MEMORY_TOL:.0f} % of measured", figures=figures)


# ---- driver -------------------------------------------------------------------------

def _timed(fn: Callable, *args) -> list[Row]:
    t0 = time.perf_counter()
    try:
        rows = fn(*args)
    except Exception as e:  # noqa: BLE001  (a check that crashes is a failed row)
        name = getattr(fn, "__name__", "check").replace("check_", "")
        rows = Row(name, False, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                   "runs", detail=traceback.format_exc()[-2000:])
    rows = rows if isinstance(rows, list) else [rows]
    dt = time.perf_counter() - t0
    for r in rows:
        r.seconds = r.seconds or dt
    return rows


def run_doctor(size: str = "small", nproc: int = 2, layers: int = 2,
               batch: int | None = None, seq: int | None = None, steps: int = 3,
               log: Callable[[Row], None] | None = None) -> dict:
    """Every row in turn; `log` sees each row as it completes."""
    if nproc < 2:
        raise ValueError("--nproc must be >= 2: the FSDP and resharding rows compare "
                         f"{nproc} rank(s) with one process")
    if layers < 2 or layers % 2:
        raise ValueError(f"--layers must be even and >= 2 (the Free model's encoder reads "
                         f"layer L/2), got {layers}")
    gpu = torch.cuda.is_available()
    batch = batch or (8 if gpu else 4)
    seq = seq or (2048 if gpu else 128)
    t0 = time.perf_counter()
    rows: list[Row] = []
    plan = [(check_device, nproc), (check_bf16,), (check_compile,),
            (check_fsdp_and_reshard, nproc), (check_timed_step, size, layers, batch, seq, steps),
            (check_memory, size, layers, batch, seq)]
    for fn, *args in plan:
        for row in _timed(fn, *args):
            rows.append(row)
            if log:
                log(row)
    return {"passed": all(r.passed for r in rows), "seconds": time.perf_counter() - t0,
            "size": size, "nproc": nproc, "rows": [r.as_dict() for r in rows]}
