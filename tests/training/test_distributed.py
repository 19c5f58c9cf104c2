"""2-process FSDP2 on gloo against a single process, through the real CLI and torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ftbench.config import dump_pair_config
from ftbench.training.export import load_pretrained
from tests.training.helpers import tiny_pair_config


def _losses(path):
    return [json.loads(l)["loss"] for l in path.read_text().splitlines()]


@pytest.mark.slow
def test_fsdp2_two_ranks_match_one_process(tmp_path):
    cfg_path = tmp_path / "pair.yaml"
    cfg_path.write_text(dump_pair_config(tiny_pair_config(tmp_path / "models")))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    common = ["train-pair", "--config", str(cfg_path)]
    subprocess.run([sys.executable, "-m", "ftbench", *common, "--set", "run.name=single"],
                   check=True, env=env, capture_output=True, text=True, timeout=300)
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "ftbench", *common,
                           "--set", "run.name=fsdp"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr[-3000:]
    for arm in ("baseline", "free-k0p5"):
        single = _losses(tmp_path / "models" / "single" / arm / "metrics.jsonl")
        sharded = _losses(tmp_path / "models" / "fsdp" / arm / "metrics.jsonl")
        assert len(single) == len(sharded) == 6
        assert max(abs(a - b) for a, b in zip(single, sharded)) < 1e-5, (arm, single, sharded)
        a, _, meta_a = load_pretrained(tmp_path / "models" / "single" / arm)
        b, _, meta_b = load_pretrained(tmp_path / "models" / "fsdp" / arm)
        assert meta_b["summary"]["world_size"] == 2
        for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
