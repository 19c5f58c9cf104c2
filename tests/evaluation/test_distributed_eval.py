"""`ftbench eval` under torchrun (2 ranks, gloo) against one process: the same outcomes."""

import os
import subprocess
import sys

import pytest

from ftbench.evaluation.results import read_result
from ftbench.training.distributed import DistContext
from ftbench.training.pair import run_dir, train_pair
from tests.training.helpers import tiny_pair_config


@pytest.mark.slow
def test_two_ranks_score_like_one_process(tmp_path, data_dir):
    cfg = tiny_pair_config(tmp_path / "models", steps=4)
    train_pair(cfg, log=lambda m: None, ctx=DistContext())
    arms = [str(run_dir(cfg) / a) for a in ("baseline", "free-k0p5")]
    # FTBENCH_DEVICE_RULE: the ranks refuse host tensors in collectives, as NCCL does.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FTBENCH_DEVICE_RULE="nccl")
    # 5 items and batch size 2: the ranks get unequal shares (lm-eval pads the short one).
    # Two Z draws and two samples keep it cheap and still exercise the replica passes.
    common = ["eval", *arms, "--suite", "gsm8k,commonsense_qa,humanevalplus", "--limit", "5",
              "--batch-size", "2", "--data-dir", str(data_dir), "--z-draws", "2",
              "--n-samples", "2"]
    single = subprocess.run([sys.executable, "-m", "ftbench", *common, "--results",
                             str(tmp_path / "single")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "ftbench", *common, "--results",
                           str(tmp_path / "dist")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert "evaluating on 2 ranks" in dist.stdout
    for arm in ("baseline", "free-k0p5"):
        for task in ("gsm8k", "commonsense_qa", "humanevalplus"):
            a = read_result(tmp_path / "single" / cfg.run.name / arm / f"{task}.json")
            b = read_result(tmp_path / "dist" / cfg.run.name / arm / f"{task}.json")
            assert b["world_size"] == 2 and a["world_size"] == 1
            assert a["n_items"] == b["n_items"] == 5
            assert a["per_item"] == b["per_item"], (arm, task)
            assert a.get("protocols") == b.get("protocols") and \
                a.get("spread") == b.get("spread"), (arm, task)
            assert {k: v["value"] for k, v in a["metrics"].items()} == \
                {k: v["value"] for k, v in b["metrics"].items()}
        samples = [(tmp_path / d / cfg.run.name / arm / "humanevalplus.samples.jsonl").read_text()
                   for d in ("single", "dist")]
        assert samples[0] == samples[1]
