"""The memory plan against measured peaks (CPU, fp32, fresh subprocesses; see
ftbench.doctor.memory for how the peak is measured) and its planning arithmetic."""

import pytest

from ftbench.config import pair_config_from_dict
from ftbench.doctor.memory import measure_many, step_config
from ftbench.training.memory_plan import (GiB, arm_memory, format_memory_plan, gpus_needed,
                                          max_micro_batch, memory_plan, parse_memory)

# The tolerances come from the errors they must catch, not from what passed. Measured
# fp32 gaps are -2.9 ... +2.5 % (docs/training.md); 5 % leaves room for them and still
# fails a plan that forgets AdamW's two moments where they matter (half of the planned
# peak where parameters and optimizer state dominate: test_prediction_holds_when_state_
# dominates) or a term worth 5 % of any peak. bf16 gaps are -9.3 ... -0.1 %: 12 %.
TOL = 0.05
TOL_BF16 = 0.12
ARCHES = ("baseline", "free")
# (size, checkpointing) at 8 x 256 tokens, where activations dominate: the head phase is the
# peak. Toy without checkpointing is test_prediction_holds_at_toy.
CPU_SIZES = [("toy", True), ("tiny", False), ("tiny", True), ("small", False), ("small", True)]
# Two sequences of 64 at small: parameters and AdamW state (W_post's 16.8M) are the peak.
STATE_DOMINATES = ("small", "free", 2, 64, False)


def _peaks(cases) -> dict:
    """Measured peak bytes per (size, arch, batch, seq, ckpt), all in one subprocess."""
    keys = ("size", "arch", "batch", "seq", "ckpt")
    got = measure_many([dict(zip(keys, case)) for case in cases])
    return {case: r["peak_bytes"] for case, r in zip(cases, got)}


@pytest.fixture(scope="module")
def toy_peaks():
    return _peaks([("toy", arch, 8, 256, False) for arch in ARCHES])


@pytest.fixture(scope="module")
def cpu_size_peaks():
    return _peaks([(size, arch, 8, 256, ckpt) for size, ckpt in CPU_SIZES for arch in ARCHES]
                  + [STATE_DOMINATES])


def _check(peaks, size, arch, batch, seq, ckpt):
    got = peaks[(size, arch, batch, seq, ckpt)]
    cfg = step_config(size, batch, seq, ckpt)
    want = arm_memory(cfg.model, arch, seq_len=seq, micro_batch=batch, checkpointing=ckpt)
    ratio = want["peak_bytes"] / got
    assert abs(ratio - 1) <= TOL, (size, arch, batch, seq, ckpt, got, want["peak_bytes"])
    return ratio


@pytest.mark.parametrize("arch", ARCHES)
def test_prediction_holds_at_toy(toy_peaks, arch):
    _check(toy_peaks, "toy", arch, 8, 256, False)


@pytest.mark.slow
@pytest.mark.parametrize("size,ckpt", CPU_SIZES)
@pytest.mark.parametrize("arch", ARCHES)
def test_prediction_holds_at_cpu_sizes(cpu_size_peaks, size, arch, ckpt):
    _check(cpu_size_peaks, size, arch, 8, 256, ckpt)


@pytest.mark.slow
def test_prediction_holds_when_state_dominates(cpu_size_peaks):
    size, arch, batch, seq, ckpt = STATE_DOMINATES
    want = arm_memory(step_config(size, batch, seq, ckpt).model, arch, seq_len=seq,
                      micro_batch=batch, checkpointing=ckpt)
    _check(cpu_size_peaks, *STATE_DOMINATES)
    # AdamW's moments are half this peak: forgetting them is ten times the tolerance.
    assert want["bytes"]["optimizer"] / want["peak_bytes"] > 2 * TOL


def test_parse_memory():
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("80 GiB") == 80 * GiB
    assert parse_memory(141e9) == 141 * 10**9
    with pytest.raises(ValueError, match="80GB"):
        parse_memory("eighty")


def test_checkpointing_and_sharding_shrink_the_peak():
    cfg = step_config("small", 8, 256, False).model
    kw = dict(seq_len=256, micro_batch=8)
    plain = arm_memory(cfg, "free", **kw)["peak_bytes"]
    assert arm_memory(cfg, "free", checkpointing=True, **kw)["peak_bytes"] < plain
    assert arm_memory(cfg, "free", world=4, **kw)["bytes"]["optimizer"] == pytest.approx(
        arm_memory(cfg, "free", **kw)["bytes"]["optimizer"] / 4)


def test_max_batch_is_the_largest_that_fits():
    cfg = step_config("small", 8, 256, False).model
    usable = 4 * GiB
    b = max_micro_batch(cfg, "free", 256, usable, device_type="cpu")
    assert b >= 1
    assert arm_memory(cfg, "free", seq_len=256, micro_batch=b)["peak_bytes"] <= usable
    assert arm_memory(cfg, "free", seq_len=256, micro_batch=b + 1)["peak_bytes"] > usable


@pytest.mark.parametrize("size", ["1.5b", "8b"])
def test_large_presets_say_how_many_gpus(size):
    cfg = pair_config_from_dict({"size": size, "data": {"seq_len": 4096},
                                 "run": {"batch_size": 256}})
    plan = memory_plan(cfg, world_size=8, device_memory="80GB")
    free = plan["arms"]["free-k0p5"]
    for key in ("no_checkpointing", "checkpointing"):
        assert free[key]["gpus_needed"] is not None and free[key]["gpus_needed"] >= 1
    # Checkpointing never needs more devices than not checkpointing.
    assert free["checkpointing"]["gpus_needed"] <= free["no_checkpointing"]["gpus_needed"]
    lines = format_memory_plan(plan)
    assert any("free-k0p5" in l and "peak" in l for l in lines)
    assert any("device(s)" in l for l in lines)


def test_8b_does_not_fit_one_80gb_gpu():
    cfg = pair_config_from_dict({"size": "8b", "data": {"seq_len": 4096}})
    usable = int(80e9 * 0.9 - GiB)
    # 16 bytes per parameter alone is ~129 GB.
    assert gpus_needed(cfg.model, "free", 4096, usable, checkpointing=True) > 1


# bf16 (slow on CPU: no fast bf16 matmul, so toy only): FSDP2's MixedPrecisionPolicy on a
# one-rank group (bf16 gathered weights and residual stream over fp32 masters) and plain
# autocast on one device (bf16 weight copies, fp32 residual stream).
BF16_CASES = [("toy", arch, 8, 256, ckpt, fsdp) for arch in ARCHES for ckpt in (False, True)
              for fsdp in (True, False) if fsdp or not ckpt]


@pytest.mark.slow
def test_prediction_holds_in_bf16_with_and_without_fsdp():
    keys = ("size", "arch", "batch", "seq", "ckpt", "fsdp")
    got = measure_many([dict(zip(keys, case), dtype="bfloat16") for case in BF16_CASES])
    for case, measured in zip(BF16_CASES, got):
        size, arch, batch, seq, ckpt, fsdp = case
        cfg = step_config(size, batch, seq, ckpt)
        want = arm_memory(cfg.model, arch, seq_len=seq, micro_batch=batch, checkpointing=ckpt,
                          bf16=True, fsdp=fsdp)
        assert want["mixed_precision_policy"] == fsdp
        ratio = want["peak_bytes"] / measured["peak_bytes"]
        assert abs(ratio - 1) <= TOL_BF16, (case, measured["peak_bytes"], want["peak_bytes"])


@pytest.mark.slow
def test_prediction_holds_for_adamw_under_fsdp():
    """Two sequences of 64 at small under FSDP2 (one rank): with optim.fused false the
    optimiser step is the peak, with AdamW's foreach temporary over DTensor parameters;
    fused AdamW (the default) updates in place, and the peak moves to the backward."""
    spec = {"size": "small", "arch": "free", "batch": 2, "seq": 64, "ckpt": False,
            "fsdp": True}
    foreach, fused = measure_many([dict(spec, fused=False), spec])
    cfg = step_config("small", 2, 64, False)
    want = arm_memory(cfg.model, "free", seq_len=64, micro_batch=2, fsdp=True,
                      fused_optimizer=False)
    assert want["peak_phase"] == "optimizer" and want["bytes"]["adamw_temporary"] > 0
    # Measured +5.0 %: the plan counts foreach's temporary as one tensor the size of all
    # parameters. An overcount errs toward refusing a run, never toward an OOM, so the
    # plan may exceed by a point more than TOL here but must not fall below.
    ratio = want["peak_bytes"] / foreach["peak_bytes"]
    assert 1 <= ratio <= 1 + TOL + 0.01, (foreach, want)
    want = arm_memory(cfg.model, "free", seq_len=64, micro_batch=2, fsdp=True)
    assert want["peak_phase"] != "optimizer" and want["bytes"]["adamw_temporary"] == 0
    assert fused["peak_bytes"] < foreach["peak_bytes"]


def test_plan_errors_and_hints_a_run_can_use():
    """A batch that does not split over the ranks is a plan error, not a traceback; the
    dry run's hint names a grad_accum that divides the rank's batch (64 sequences per
    rank here, too many without checkpointing)."""
    import re

    from ftbench.training.memory_plan import MemoryPlanError, accum_that_fits, check_fits

    cfg = pair_config_from_dict({"size": "1.5b", "data": {"seq_len": 4096},
                                 "run": {"batch_size": 128}})
    with pytest.raises(MemoryPlanError, match="not divisible by world_size=3"):
        check_fits(cfg, 3, "80GB", "cuda")
    assert accum_that_fits(64, 5) == 16 and accum_that_fits(64, 64) == 1
    assert accum_that_fits(6, 4) == 2 and accum_that_fits(7, 3) == 7
    lines = format_memory_plan(memory_plan(cfg, 2, "80GB"))
    hints = [l for l in lines if "does NOT fit" in l]
    assert hints
    for line in hints:
        accum, largest = map(int, re.search(r"grad_accum=(\d+)\); largest micro-batch (\d+)",
                                            line).groups())
        assert 64 % accum == 0 and 64 // accum <= largest < 64 // accum * 2, line


# A wide FFN, a small vocabulary and many tokens (as 1.5B at 16 x 4,096 tokens per rank,
# scaled down): a block's backward is the peak, not the loss.
WIDE_FFN = {"vocab_size": 512, "d_model": 128, "ffn_hidden": 2048, "n_heads": 4,
            "n_kv_heads": 2, "latent_bits": 8}


@pytest.mark.slow
def test_prediction_holds_where_a_block_backward_is_the_peak():
    cases = [(arch, ckpt) for arch in ARCHES for ckpt in (True, False)]
    got = measure_many([{"size": "tiny", "arch": arch, "batch": 8, "seq": 1024, "ckpt": ckpt,
                         "layers": 2, "overrides": WIDE_FFN} for arch, ckpt in cases])
    for (arch, ckpt), measured in zip(cases, got):
        cfg = step_config("tiny", 8, 1024, ckpt, layers=2, overrides=WIDE_FFN)
        want = arm_memory(cfg.model, arch, seq_len=1024, micro_batch=8, checkpointing=ckpt)
        assert want["peak_phase"] == "block_backward"
        ratio = want["peak_bytes"] / measured["peak_bytes"]
        assert abs(ratio - 1) <= TOL, (arch, ckpt, measured["peak_bytes"], want["peak_bytes"])


# The plan against the rehearsal (ftbench doctor --simulate) at 8 ranks: FSDP2's bf16
# MixedPrecisionPolicy, full checkpointing, a block's backward the peak. D 256 beside F 768
# (the presets' F/D is 3.2) and 8 x 256 tokens per rank, so the D-wide tensors a block
# rebuilds weigh as they do at 125m-760m. Each RMSNorm there keeps fp32 internals (its
# input upcast and the normalised product, 8 bytes per element besides its bf16 output):
# counted as a bf16 input and output instead, the plan falls 7.9 % (baseline) and 16.1 %
# (Free: its readout and injection norms besides) below the trace at this shape, so the
# plan may not fall below the trace at all: a peak above the plan is an out-of-memory risk.
# Above it, the doctor's tolerance (10 %): the plan errs high by 6.3 / 7.3 % here (it
# counts two gradients of the residual stream and two gathered blocks at every block's
# backward; the trace's peak is the first block's, with one).
REHEARSED_SHAPE = {"vocab_size": 512, "d_model": 256, "n_layers": 2, "n_heads": 4,
                   "n_kv_heads": 2, "ffn_hidden": 768, "latent_bits": 8, "max_seq_len": 256}
ABOVE_TRACE = 0.10


def test_plan_is_at_or_above_the_rehearsal_at_8_ranks():
    from ftbench.doctor.rehearsal import rehearsal_config, rehearse, unique_arms

    cfg = pair_config_from_dict({
        "size": "toy", "model": REHEARSED_SHAPE,
        "data": {"sources": [{"kind": "synthetic"}], "seq_len": 256,
                 "tokenizer": {"kind": "char"}},
        "latent": {"kappas_bits": [0.5]},
        "run": {"name": "plan-vs-rehearsal", "batch_size": 64,
                "activation_checkpointing": True}})
    models = {a.name: a.model for a in unique_arms(rehearsal_config(cfg))}
    traced = rehearse(cfg, 8, 1, (None,), workers=2)
    assert {t["arch"] for t in traced.values()} == {"baseline", "free"}, traced
    for (name, _), t in traced.items():
        assert "error" not in t, t.get("traceback")
        assert t["micro_batch"] == 8 and t["shard_ranks"] == 8
        plan = arm_memory(models[name], t["arch"], seq_len=256, micro_batch=8, world=8,
                          checkpointing="full", bf16=True, device_type="cuda", fsdp=True)
        got = t["memory"]["train_peak"]["total"]
        assert got <= plan["peak_bytes"] <= got * (1 + ABOVE_TRACE), (
            name, got / 2**20, plan["peak_bytes"] / 2**20, plan["bytes"])
