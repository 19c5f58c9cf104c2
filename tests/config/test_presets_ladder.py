"""The ladder between small and 1.5b (125m, 350m, 760m): parameter counts written out term
by term from the shapes (ftbench/model/accounting.py's conventions), the token rule's steps
by hand, and the shipped configs fitting one 80 GB GPU with their compute plan."""

import json
import math

import pytest
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.config.loader import (dump_pair_config, load_pair_config, pair_config_from_dict,
                                   size_config_path)
from ftbench.model import get_preset
from ftbench.model.accounting import model_cost
from ftbench.model.config import ConfigError

runner = CliRunner()
V = 50_304  # the ladder's BPE

# GPT-3 Table 2.1 shapes, GQA with a quarter of the heads as KV heads.
# block matmuls: q and o 2D^2, k and v 2 D d_kv, SwiGLU 3 D F.
LADDER = {
    # D 768, 12 heads of 64, 3 KV heads (d_kv 192), F 2432
    "125m": dict(D=768, L=12, block=2 * 768**2 + 2 * 768 * 192 + 3 * 768 * 2432,  # 7,077,888
                 params=50_304 * 768 + 12 * (7_077_888 + 2 * 768) + 768,          # 123,587,328
                 steps=4_715),
    # D 1024, 16 heads of 64, 4 KV heads (d_kv 256), F 3200
    "350m": dict(D=1024, L=24, block=2 * 1024**2 + 2 * 1024 * 256 + 3 * 1024 * 3200,  # 12,451,840
                 params=50_304 * 1024 + 24 * (12_451_840 + 2 * 1024) + 1024,          # 350,405,632
                 steps=13_367),
    # D 1536, 16 heads of 96, 4 KV heads (d_kv 384), F 4864
    "760m": dict(D=1536, L=24, block=2 * 1536**2 + 2 * 1536 * 384 + 3 * 1536 * 4864,  # 28,311,552
                 params=50_304 * 1536 + 24 * (28_311_552 + 2 * 1536) + 1536,          # 756,819,456
                 steps=28_871),
}


def shipped(size: str, overrides: tuple[str, ...] = ()):
    return load_pair_config(size_config_path(size), overrides=list(overrides))


NOMINAL = {"125m": 125e6, "350m": 350e6, "760m": 760e6}


def test_the_hand_figures_are_what_they_say():
    assert LADDER["125m"]["block"] == 7_077_888 == 12 * 768**2  # GPT-3's 12 D^2 per block
    assert LADDER["760m"]["block"] == 28_311_552 == 12 * 1536**2
    assert LADDER["350m"]["block"] == 12_451_840
    assert LADDER["125m"]["params"] == 123_587_328
    assert LADDER["350m"]["params"] == 350_405_632
    assert LADDER["760m"]["params"] == 756_819_456
    # 20 tokens per parameter over 128 x 4,096 = 524,288 tokens per step, rounded up.
    assert 4_714 * 524_288 < 20 * 123_587_328 <= 4_715 * 524_288
    assert 13_366 * 524_288 < 20 * 350_405_632 <= 13_367 * 524_288
    assert 28_870 * 524_288 < 20 * 756_819_456 <= 28_871 * 524_288


@pytest.mark.parametrize("size", list(LADDER))
def test_ladder_parameters_equal_the_hand_count(size):
    hand = LADDER[size]
    cfg = get_preset(size).replace(vocab_size=V)
    cfg.validate("free")
    base, free = model_cost(cfg, "baseline"), model_cost(cfg, "free")
    assert base.params_total == hand["params"]
    assert base.params_blocks == hand["L"] * (hand["block"] + 2 * hand["D"])
    # The paper's Free Transformer unchanged: one more block, zeta, readout norm, a D x 16
    # readout, and W_post with 2^16 rows.
    D = hand["D"]
    assert free.params_encoder == hand["block"] + 2 * D + D + D + D * 16
    assert free.params_post_sampler == 65_536 * D
    assert abs(base.params_total / NOMINAL[size] - 1) < 0.05


@pytest.mark.parametrize("size", list(LADDER))
def test_shipped_config_reads_each_token_once_at_twenty_per_parameter(size):
    cfg = shipped(size)
    assert cfg.run.steps == LADDER[size]["steps"]
    assert (cfg.run.batch_size, cfg.data.seq_len) == (128, 4096)
    assert cfg.data.tokenizer.vocab_size == V and cfg.data.train_tokens == 0
    assert cfg.data.max_epochs == 1.0
    # The 1.5b config's data mix.
    paper = shipped("1.5b").data.sources
    assert [(s.hf_id, s.hf_config, s.weight) for s in cfg.data.sources] == \
        [(s.hf_id, s.hf_config, s.weight) for s in paper]
    # pair.yaml states the resolved steps and reloads to the same config.
    again = pair_config_from_dict(__import__("yaml").safe_load(dump_pair_config(cfg)))
    assert again == cfg


def test_token_rule_is_overridable_and_refuses_disagreeing_steps():
    cfg = shipped("125m", ("data.tokens_per_param=10",))
    assert cfg.run.steps == math.ceil(10 * 123_587_328 / 524_288) == 2_358
    cfg = shipped("125m", ("data.tokens_per_param=0", "run.steps=7"))
    assert cfg.run.steps == 7
    with pytest.raises(ConfigError, match=r"run.steps: 7 disagrees with "
                                          r"data.tokens_per_param=20.*4,715 steps"):
        shipped("125m", ("run.steps=7",))
    with pytest.raises(ConfigError, match="data.tokens_per_param: must be >= 0"):
        shipped("125m", ("data.tokens_per_param=-1",))


def test_presets_and_info_list_the_ladder():
    out = runner.invoke(app, ["presets"]).output
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    for size, hand in LADDER.items():
        assert rows[size][1:6] == [str(hand["L"]), str(hand["D"]),
                                   rows[size][3], rows[size][4], str(V)]
        info = json.loads(runner.invoke(app, ["info", "--size", size, "--json"]).output)
        assert info["baseline"]["params_total"] == hand["params"]
    assert rows["350m"][3] == "16/4" and rows["350m"][4] == "3200"
    assert rows["125m"][7] == "124M" and rows["760m"][7] == "757M"
    # configs/README.md states the same shapes.
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "configs" / "README.md").read_text()
    for size in LADDER:
        line = next(x for x in doc.splitlines() if x.startswith(f"| `{size}.yaml`"))
        r = rows[size]
        assert (f"{r[1]} layers, D {r[2]}, {r[3]} heads, FFN {int(r[4]):,}" in line
                and f": {r[7]} |" in line), line


@pytest.mark.parametrize("size", list(LADDER))
def test_dry_run_fits_one_80gb_gpu_and_estimates_gpu_hours(size):
    result = runner.invoke(app, ["train-pair", "--size", size, "--dry-run", "--json",
                                 "--world-size", "1", "--device-memory", "80GB"])
    assert result.exit_code == 0, result.output
    c = json.loads(result.output)["compute_plan"]
    tokens = LADDER[size]["steps"] * 524_288
    assert c["tokens_per_arm"] == tokens
    assert set(c["arms"]) == {"baseline", "free-k0p25", "free-k0p5", "free-k1", "free-k2",
                              "baseline-control"}
    if size == "125m":
        # 3 x forward: 2 (12 blocks + head) + 12 layers x 2 (T + 1) x 768, T 4,096.
        fwd = 2 * (12 * 7_077_888 + 50_304 * 768) + 12 * 2 * 4_097 * 768   # 322,652,160
        assert c["arms"]["baseline"]["train_flops"] == 3 * fwd * tokens
        # The Free arm adds the encoder's block (full T x T attention, a D x 16 readout)
        # and the Binary Mapper's backward over 2^16 codes.
        enc = 2 * 7_077_888 + 4 * 4_096 * 768 + 2 * 768 * 16
        mapper = 2 * 65_536 * 768 + 2 * 65_536 * 17
        for arm in ("free-k0p25", "free-k0p5", "free-k1", "free-k2"):
            assert c["arms"][arm]["train_flops"] == (3 * (fwd + enc) + mapper) * tokens
        # H100 SXM: 989 TFLOP/s bf16, at the rehearsal's roofline MFU for 125m (25.7 %
        # baseline, 26.1 % Free: `ftbench doctor --simulate --size 125m --world-size 8`).
        assert c["mfu_source"] == "roofline"
        assert c["arms"]["baseline"]["gpu_hours"] == pytest.approx(
            3 * fwd * tokens / (989e12 * 0.257) / 3600, rel=1e-12)
        assert c["arms"]["free-k0p5"]["gpu_hours"] == pytest.approx(
            (3 * (fwd + enc) + mapper) * tokens / (989e12 * 0.261) / 3600, rel=1e-12)
        given = json.loads(runner.invoke(app, [
            "train-pair", "--size", size, "--dry-run", "--json", "--device-memory", "80GB",
            "--mfu", "0.5", "--gpu", "a100"]).output)["compute_plan"]
        # A100: 312 TFLOP/s bf16, at the MFU given.
        assert given["mfu_source"] == "given" and given["arms"]["baseline"]["gpu_hours"] == \
            pytest.approx(3 * fwd * tokens / (312e12 * 0.5) / 3600, rel=1e-12)
        # uint16 shards (50,304 < 2^16): 2 bytes a token, validation (0.05 %) on top.
        assert c["shard_bytes"] == pytest.approx(2 * (tokens + 1) / (1 - 0.0005), rel=1e-9)
    assert c["grid_train_flops"] == pytest.approx(sum(a["train_flops"]
                                                      for a in c["arms"].values()))
    text = runner.invoke(app, ["train-pair", "--size", size, "--dry-run", "--world-size", "1",
                               "--device-memory", "80GB", "--gpu", "a100"]).output
    # No roofline figure for an A100: the 1.5B recipe's 40 %, said so.
    assert "GPU-hours are an ESTIMATE, not a measurement" in text and "A100" in text
    assert "MFU 40 %" in text and "assumed" in text


@pytest.mark.parametrize("size", list(LADDER))
def test_dry_run_fits_eight_80gb_gpus(size):
    result = runner.invoke(app, ["train-pair", "--size", size, "--dry-run", "--json",
                                 "--world-size", "8", "--device-memory", "80GB"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["memory_plan"]
    assert plan["world_size"] == 8 and all(row["checkpointing"]["fits"]
                                           for row in plan["arms"].values())


def test_slurm_array_trains_one_size_per_task(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "train_ladder.sbatch"
    # Outside SLURM: no allocation's variables change the printed commands.
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SLURM_") and k not in ("GPUS_PER_NODE", "FTBENCH")}
    for task, size in enumerate(LADDER):
        out = subprocess.run(["bash", str(script), "--set", "run.seed=1"], capture_output=True,
                             text=True, env={**clean, "FTBENCH_DRY_RUN": "1",
                                             "SLURM_ARRAY_TASK_ID": str(task)})
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[1].endswith(f"data prepare --size {size} --workers 16 --set run.seed=1")
        assert lines[3] == ("torchrun --standalone --nproc_per_node=8 -m ftbench train-pair "
                            f"--size {size} --set run.seed=1")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                         env={**clean, "SLURM_ARRAY_TASK_ID": "3"})
    assert out.returncode == 2 and "use --array=0-2" in out.stderr
