"""Evaluation snapshots: which steps get one, and that FSDP2 ranks write the weights one
process holds, bit for bit."""

import hashlib
import json

import pytest
import torch

from ftbench.doctor.parity import ARMS, parity_config, run_local, spawn, train_phase
from ftbench.training.snapshots import list_snapshots, snapshot_dir, snapshot_steps

STEPS, EVERY = 6, 2


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot_from_checkpoint(ctx, root, run, step, out, steps=STEPS, **run_options):
    """One process: load the run's DCP checkpoint of `step` into an unsharded model and
    write that model's snapshot with the training code's writer."""
    from ftbench.doctor.parity import _fingerprint
    from ftbench.training.arms import pair_arms
    from ftbench.training.checkpoint import Checkpointer
    from ftbench.training.loop import build_arm_model, make_optimizer
    from ftbench.training.snapshots import write_snapshot

    cfg = parity_config(root, steps=steps, checkpoint_every=EVERY, snapshot_every=EVERY,
                        **run_options)
    for arm in pair_arms(cfg, cfg.model.vocab_size):
        model = build_arm_model(arm, cfg, ctx)
        optim = make_optimizer(model, cfg)
        ckpt = Checkpointer(root / run / arm.name / "checkpoints", ctx, _fingerprint(arm.name))
        assert ckpt.load(ckpt.root / f"step_{step:08d}", model, optim) == step
        write_snapshot(model, arm, cfg, out / arm.name, step, ctx)


@pytest.mark.parametrize("steps, every, expected", [
    (150, 25, [25, 50, 75, 100, 125]),      # the last step is the final export's
    (150, None, list(range(5, 150, 5))),   # unset: 150 / 30 = 5, 29 snapshots + the export
    (6000, None, list(range(200, 6000, 200))),
    (10, None, list(range(1, 10))),         # fewer steps than points: every step
    (150, 0, []),                           # 0: none
])
def test_snapshot_steps(tmp_path, steps, every, expected):
    cfg = parity_config(tmp_path, steps=steps, checkpoint_every=50, snapshot_every=every)
    assert snapshot_steps(cfg) == expected


def test_two_fsdp_ranks_write_the_weights_of_one_process(tmp_path):
    """Two gloo ranks under FSDP2 train 6 steps with a snapshot every 2; the snapshot of
    step 4 is bit-identical to the one a single process writes from the same weights (the
    run's DCP checkpoint of step 4, loaded unsharded), and close to a run trained in one
    process (not bit-identical: two ranks sum gradients in another order). The checkpoint
    of step 2 is gone (the last two are kept), its snapshot is not."""
    spawn(2, [(train_phase, dict(root=tmp_path, run="fsdp", steps=STEPS,
                                 checkpoint_every=EVERY, snapshot_every=EVERY))])
    run_local([(_snapshot_from_checkpoint, dict(root=tmp_path, run="fsdp", step=4,
                                               out=tmp_path / "reloaded")),
               (train_phase, dict(root=tmp_path, run="single", steps=STEPS,
                                  checkpoint_every=EVERY, snapshot_every=EVERY))])
    from safetensors.torch import load_file

    for arm in ARMS:
        arm_dir = tmp_path / "fsdp" / arm
        assert sorted(list_snapshots(arm_dir)) == [2, 4]
        assert not (arm_dir / "checkpoints" / "step_00000002").exists()
        sharded = snapshot_dir(arm_dir, 4) / "model.safetensors"
        one = snapshot_dir(tmp_path / "reloaded" / arm, 4) / "model.safetensors"
        assert _sha(sharded) == _sha(one), arm
        meta = json.loads((sharded.parent / "config.json").read_text())
        assert meta["weights_sha256"] == _sha(sharded)
        # 4 steps of 4 sequences of 32 tokens.
        assert meta["snapshot"] == {"step": 4, "tokens": 4 * 4 * 32, "run_steps": STEPS,
                                    "dtype": "float32", "tokens_per_step": 128}
        a = load_file(str(sharded))
        b = load_file(str(snapshot_dir(tmp_path / "single" / arm, 4) / "model.safetensors"))
        assert set(a) == set(b) and all(v.dtype == torch.float32 for v in a.values())
        init = load_file(str(snapshot_dir(arm_dir, 2) / "model.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0.01 * 3e-3, msg=k)
        # Steps 3 and 4 moved the weights: equal files would not be a vacuous pass.
        assert any(not torch.equal(a[k], init[k]) for k in a)


def test_a_bfloat16_run_writes_its_snapshots_in_bfloat16(tmp_path):
    """Under bfloat16 autocast the snapshot holds the weights rounded to bfloat16 (half the
    disk), and nothing else: the float32 weights of the same step, rounded."""
    from safetensors.torch import load_file

    options = dict(steps=3, dtype="bfloat16")
    run_local([(train_phase, dict(root=tmp_path, run="bf16", checkpoint_every=EVERY,
                                  snapshot_every=EVERY, **options)),
               (_snapshot_from_checkpoint, dict(root=tmp_path, run="bf16", step=2,
                                                out=tmp_path / "reloaded", **options))])
    for arm in ARMS:
        path = snapshot_dir(tmp_path / "bf16" / arm, 2)
        assert sorted(list_snapshots(tmp_path / "bf16" / arm)) == [2]  # not 3: the export's
        assert json.loads((path / "config.json").read_text())["snapshot"]["dtype"] == "bfloat16"
        snap = load_file(str(path / "model.safetensors"))
        assert all(v.dtype == torch.bfloat16 for v in snap.values())
        assert _sha(path / "model.safetensors") == _sha(
            snapshot_dir(tmp_path / "reloaded" / arm, 2) / "model.safetensors")


def test_the_dry_run_counts_the_snapshots_training_writes():
    """150 steps every 25: snapshots at 25, 50, 75, 100, 125 (step 150 is the export)."""
    from typer.testing import CliRunner

    from ftbench.cli import app

    out = CliRunner().invoke(app, ["train-pair", "--size", "toy", "--dry-run", "--json",
                                   "--set", "run.snapshot_every=25"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)["compute_plan"]
    assert plan["snapshots_per_arm"] == 5 and plan["snapshot_every"] == 25
