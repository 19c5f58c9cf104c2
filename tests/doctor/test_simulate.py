"""The rehearsal (`ftbench doctor --simulate`): a real training step on fake tensors under a
fake process group, judged against the memory plan, the FLOP accounting and NCCL's rule.

Expected values come from outside the code under test: parameter counts by hand (the
bytes every gradient reduce-scatter must move), the mesh a node count implies, and torch's
own refusal of a host tensor in a collective."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftbench.config import pair_config_from_dict

ROOT = Path(__file__).resolve().parents[2]

# D 64, 2 layers, V 512, T 64: a shape where every phase of the plan is exercised (the
# head, a block's backward, the mapper) and a trace takes a second or two.
SHAPE = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "ffn_hidden": 192, "latent_bits": 8, "max_seq_len": 64}


def config(**run):
    return pair_config_from_dict({
        "size": "toy", "model": SHAPE,
        "data": {"sources": [{"kind": "synthetic"}], "seq_len": 64,
                 "tokenizer": {"kind": "char"}},
        "latent": {"kappas_bits": [0.5]},
        "run": {"name": "rehearsal", "batch_size": 16, "activation_checkpointing": True,
                **run}})


def hand_params(arch: str) -> int:
    """Parameters counted by hand from SHAPE (tied embeddings)."""
    D, V, F, L, H = 64, 512, 192, 2, 8
    Dkv = 2 * 16
    block = 2 * D * D + 2 * D * Dkv + 3 * D * F + 2 * D
    total = V * D + L * block + D
    if arch == "free":
        total += block + D + D + D * H + 2**H * D  # encoder block, zeta, norm, readout; W_post
    return total


def _rows(result, needle):
    return [r for r in result["rows"] if needle in r["name"]]


@pytest.fixture(scope="module")
def rehearsed():
    from ftbench.doctor.simulate import simulate

    return simulate(config(), world=4, nodes=1, gpu="h100", workers=2)


def test_every_row_passes_for_both_arms(rehearsed):
    names = [r["name"] for r in rehearsed["rows"]]
    for arm in ("baseline", "free-k0p5"):
        for row in ("peak memory per rank", "FLOPs per token", "collectives take device",
                    "fits a", "estimated step"):
            assert any(n.startswith(arm) and row in n for n in names), (arm, row, names)
    failed = [r for r in rehearsed["rows"] if not r["passed"]]
    assert not failed, failed
    assert rehearsed["ratio"]["time"] > 1  # the Free arm does strictly more work


def test_gradients_are_reduce_scattered_once_in_fp32(rehearsed):
    """Every parameter's gradient crosses one fp32 reduce-scatter per step: their bytes
    add up to 4 x the parameter count (by hand), up to FSDP2's padding to 4 ranks."""
    for arm, arch in (("baseline", "baseline"), ("free-k0p5", "free")):
        colls = rehearsed["arms"][arm]["trace"]
        summary = next(r for r in rehearsed["rows"]
                       if r["name"].startswith(arm) and "collectives" in r["name"])["collectives"]
        reduced = sum(v["bytes"] for k, v in summary.items()
                      if k.startswith("_reduce_scatter_base_ float32 train"))
        assert reduced == pytest.approx(4 * hand_params(arch), rel=0.01), (arm, colls["arm"])


def test_a_host_tensor_in_a_metric_collective_fails_the_rehearsal(tmp_path):
    """A loop that all-reduces a tensor made without a device (as `torch.zeros(n)` or
    `torch.tensor(x)` make one) must fail the rehearsal with NCCL's own message."""
    script = textwrap.dedent(f"""
        import json, torch
        import ftbench.training.loop as loop
        from ftbench.doctor.simulate import simulate
        from tests.doctor.test_simulate import config

        real = loop.all_reduce_mean

        def planted(value, ctx):
            return real(torch.zeros(value.shape), ctx)  # a host tensor

        loop.all_reduce_mean = planted
        result = simulate(config(), world=2, arms=["baseline"], workers=0)
        print("RESULT " + json.dumps(result, default=str))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert not result["passed"]
    (row,) = _rows(result, "collectives take device")
    assert not row["passed"]
    assert "No backend type associated with device type cpu" in row["measured"]


def test_hsdp_shards_within_a_node_and_all_reduces_across(tmp_path):
    """8 ranks on 2 nodes: gathers among a node's 4 ranks, gradients all-reduced between
    the 2 replicas, each carrying one shard (4 x params / 4 bytes, by hand)."""
    from ftbench.doctor.simulate import simulate

    result = simulate(config(), world=8, nodes=2, arms=["baseline"], workers=1)
    assert result["passed"], [r for r in result["rows"] if not r["passed"]]
    summary = _rows(result, "collectives take device")[0]["collectives"]
    gathers = {k: v for k, v in summary.items() if k.startswith("_allgather_base_")}
    assert gathers and all(v["ranks"] == 4 and "across" not in k for k, v in gathers.items())
    replicas = {k: v for k, v in summary.items() if "over 2 ranks across 2 nodes" in k}
    grads = sum(v["bytes"] for k, v in replicas.items()
                if k.startswith("allreduce_ float32 train"))
    assert grads == pytest.approx(4 * hand_params("baseline") / 4, rel=0.02)


def test_selective_checkpointing_is_planned_and_cheaper_than_full():
    """Selective checkpointing keeps the matmul outputs: more memory than full
    checkpointing, no recomputed matmul FLOPs; the plan agrees with the trace."""
    from ftbench.doctor.simulate import simulate

    full = simulate(config(), world=2, arms=["free"], workers=1)
    sel = simulate(config(checkpoint_policy="selective"), world=2, arms=["free"], workers=1)
    assert sel["passed"], [r for r in sel["rows"] if not r["passed"]]
    f, s = full["arms"]["free-k0p5"], sel["arms"]["free-k0p5"]
    assert s["timing"]["flops"] < f["timing"]["flops"]
    assert s["trace"]["memory"]["train_peak"]["total"] > f["trace"]["memory"]["train_peak"]["total"]


def test_cli_json(tmp_path):
    cfg = tmp_path / "pair.yaml"
    import yaml

    from ftbench.config.loader import to_dict

    cfg.write_text(yaml.safe_dump(to_dict(config())))
    out = subprocess.run([sys.executable, "-m", "ftbench", "doctor", "--simulate", "--config",
                          str(cfg), "--world-size", "2", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["passed"] and result["world_size"] == 2 and result["ratio"]["time"] > 1
    bad = subprocess.run([sys.executable, "-m", "ftbench", "doctor", "--simulate", "--config",
                          str(cfg), "--world-size", "3", "--nodes", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "does not split over --nodes 2" in bad.stderr


def test_gradient_accumulation_is_rehearsed_micro_batch_by_micro_batch():
    """run.grad_accum 2: the step runs two forwards and backwards of half the rows; FLOPs
    per token are unchanged and the gradients are reduce-scattered after each."""
    from ftbench.doctor.simulate import simulate

    result = simulate(config(grad_accum=2), world=2, arms=["baseline"], workers=1)
    assert result["passed"], [r for r in result["rows"] if not r["passed"]]
    trace = result["arms"]["baseline"]["trace"]
    assert trace["micro_batch"] == 4 and trace["grad_accum"] == 2
    summary = _rows(result, "collectives take device")[0]["collectives"]
    reduced = sum(v["bytes"] for k, v in summary.items()
                  if k.startswith("_reduce_scatter_base_ float32 train"))
    assert reduced == pytest.approx(2 * 4 * hand_params("baseline"), rel=0.01)
