import hashlib
import json

import pytest
import torch

from ftbench.config import load_pair_config
from ftbench.data.errors import DataError

import ftbench.training.loop as loop
from ftbench.data.pipeline import prepare_data
from ftbench.data.sampler import BatchSampler
from ftbench.training.arms import pair_arms
from ftbench.training.checkpoint import CheckpointError
from ftbench.training.distributed import DistContext
from ftbench.training.export import load_pretrained
from ftbench.training.loop import TrainingError, build_arm_model, train_arm
from ftbench.training.pair import arm_fingerprint, run_dir, train_pair
from ftbench.report.pairing import pair_checks
from tests.training.helpers import tiny_pair_config

CTX = DistContext()


def _quiet(*_):
    pass


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def test_a_trained_pair_shares_batches_initial_weights_tokenizer_and_validation(
        tmp_path, monkeypatch):
    """The matched pair as recorded by a real run of every arm (baseline, two Free arms,
    the (L+1)-layer control): what each arm was fed, built from and validated on."""
    cfg = tiny_pair_config(tmp_path, matched_control=True)
    cfg.latent.kappas_bits = [0.5, 2.0]
    initial, val_inputs = {}, {}
    build, sums = loop.build_arm_model, loop.validation_sums

    def recording_build(arm, cfg, ctx):
        model = build(arm, cfg, ctx)
        initial[arm.name] = {n: p.detach().clone() for n, p in model.state_dict().items()}
        return model

    def recording_validation(model, arm, *args, **kwargs):
        seen = []
        val_inputs.setdefault(arm.name, []).append(seen)
        hook = model.register_forward_pre_hook(
            lambda _m, a, kw: seen.append(_digest(a[0] if a else kw["tokens_BT"])),
            with_kwargs=True)
        try:
            return sums(model, arm, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(loop, "build_arm_model", recording_build)
    monkeypatch.setattr(loop, "validation_sums", recording_validation)
    summary = train_pair(cfg, log=_quiet, ctx=CTX)
    arms = ["baseline", "free-k0p5", "free-k2", "baseline-control"]
    assert list(summary) == arms
    root = run_dir(cfg)

    # Batches: the digest each arm recorded at each step is the same for every arm...
    batches = {a: [r["batch_sha1"] for r in map(json.loads, (root / a / "metrics.jsonl")
                                                .read_text().splitlines())] for a in arms}
    assert len(batches["baseline"]) == cfg.run.steps
    for a in arms[1:]:
        assert batches[a] == batches["baseline"], a
    # ...and names the batch: the sampler's own, different at every step.
    sampler = BatchSampler(prepare_data(cfg.data, cfg.run.seed, tmp_path / "d2",
                                        log=_quiet).train,
                           cfg.data.seq_len, cfg.run.batch_size, cfg.run.seed)
    expected = [hashlib.sha1(sampler.batch(s).numpy().tobytes()).hexdigest()[:16]
                for s in range(cfg.run.steps)]
    assert batches["baseline"] == expected and len(set(expected)) == cfg.run.steps

    # Initial weights: every baseline tensor is the Free arms' tensor of the same name.
    # The control (L + 1 layers) draws the same values for its first L layers, the
    # embedding and the head; its residual output projections are scaled for its depth.
    base = initial["baseline"]
    for a in ("free-k0p5", "free-k2"):
        assert set(base) < set(initial[a])
        for name, t in base.items():
            assert torch.equal(t, initial[a][name]), (a, name)
    shared = [n for n in base if n in initial["baseline-control"]]
    assert len(shared) == len(base)
    rescaled = []
    for name in shared:
        b, c = base[name].double(), initial["baseline-control"][name].double()
        if not torch.equal(b, c):
            rescaled.append(name)
            assert torch.allclose(c, b * (c.norm() / b.norm()), rtol=1e-6, atol=0), name
    assert "tok_emb.weight" in shared and "tok_emb.weight" not in rescaled and len(rescaled) < len(shared) // 2, rescaled

    # Tokenizer: byte-identical in every exported arm.
    tokenizers = {(root / a / "tokenizer.json").read_bytes() for a in arms}
    assert len(tokenizers) == 1

    # Validation: every arm read the same windows at every validation (a Free arm reads
    # each window twice, under posterior and prior Z).
    windows = {a: [list(dict.fromkeys(call)) for call in calls]
               for a, calls in val_inputs.items()}
    assert set(windows) == set(arms) and len(windows["baseline"]) == 2  # steps 3 and 6
    for a in arms[1:]:
        assert windows[a] == windows["baseline"], a

    # What the arms recorded for the report: the initial weights' digests are those of the
    # tensors the arm was built with, the tokenizer's those of the exported file.
    meta = {a: json.loads((root / a / "config.json").read_text())["matched"] for a in arms}
    for a in arms:
        assert meta[a]["init_world_size"] == 1
        # (the models hold no buffers: their state dict is their parameters)
        assert meta[a]["init_sha1"] == {n: _digest(t)[:16] for n, t in initial[a].items()}
        assert meta[a]["tokenizer_sha256"] == hashlib.sha256(
            (root / a / "tokenizer.json").read_bytes()).hexdigest()
    assert len({meta[a]["val_windows_sha1"] for a in arms}) == 1
    # ...and the report finds the pair matched, every step compared.
    checks = pair_checks(root.parent, root.name, arms)
    assert [c.arm for c in checks] == arms[1:]
    for c in checks:
        assert c.batches == f"identical at {cfg.run.steps} of {cfg.run.steps} steps", c
        assert c.tokenizer == c.validation == "identical", c
        assert not c.failures, c
    assert checks[0].initial_weights == f"identical ({len(initial['baseline'])} shared tensors)"
    assert checks[2].initial_weights == "not compared (a control of another depth)"


@pytest.mark.parametrize("arm_index", [0, 1])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, arm_index):
    cfg = tiny_pair_config(tmp_path)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[arm_index]
    fp = arm_fingerprint(cfg, arm, data.meta["key"])
    straight = train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet)
    cut = train_arm(arm, cfg, data.train, data.val, tmp_path / "b", CTX, fp, log=_quiet,
                    stop_after=3)
    assert cut.steps == 3
    resumed = train_arm(arm, cfg, data.train, data.val, tmp_path / "b", CTX, fp, log=_quiet)
    assert resumed.steps == 6
    for (n, a), (_, b) in zip(straight.model.state_dict().items(),
                              resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    lines = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 7))


def test_train_pair_exports_loadable_models_and_skips_finished_arms(tmp_path):
    cfg = tiny_pair_config(tmp_path)
    summary = train_pair(cfg, log=_quiet, ctx=CTX)
    assert set(summary) == {"baseline", "free-k0p5"}
    root = run_dir(cfg)
    for arm in summary:
        model, tok, meta = load_pretrained(root / arm)
        assert meta["steps"] == 6 and meta["arm"] == arm
        records = [json.loads(l) for l in (root / arm / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 6 and "val_" + ("ce" if arm == "baseline" else "elbo") \
            in records[-1]
        if arm.startswith("free"):
            assert "val_ce_prior" in records[-1] and "val_ce" not in records[-1]
    model, tok, _ = load_pretrained(root / "baseline")
    x = torch.tensor([tok.encode("Q>__QQQQQQQQ")])
    logits = model(x).logits_BTV
    assert torch.isfinite(logits).all()
    # pair.yaml states the model as trained: the tokenizer's vocabulary, not the preset's.
    assert cfg.model.vocab_size == 8192 != tok.vocab_size
    recorded_cfg = load_pair_config(root / "pair.yaml")
    assert recorded_cfg.model.vocab_size == tok.vocab_size == model.cfg.vocab_size
    assert recorded_cfg.model == model.cfg and recorded_cfg.run == cfg.run
    assert json.loads((root / "free-k0p5" / "config.json").read_text())[
        "pair_config"]["model"]["vocab_size"] == tok.vocab_size
    logs = []
    recorded = (root / "pair.yaml").read_bytes()
    # The recorded config is the run's: given back as --config it finds everything trained.
    train_pair(recorded_cfg, log=logs.append, ctx=CTX)
    assert sum("already trained" in m for m in logs) == 2
    logs = []
    cfg.run.checkpoint_every = 2  # a recorded setting that the trained arms do not depend on
    train_pair(cfg, log=logs.append, ctx=CTX)
    assert sum("already trained" in m for m in logs) == 2
    assert (root / "pair.yaml").read_bytes() == recorded  # nothing trained: nothing rewritten
    cfg.data.data_dir = str(tmp_path / "absent")
    with pytest.raises(DataError, match="absent.*does not exist"):
        train_pair(cfg, log=_quiet, ctx=CTX)
    cfg.data.data_dir, cfg.run.checkpoint_every = "", 3
    # Other settings under the same run name: refused before anything is overwritten.
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    cfg.optim.lr = 1e-2
    with pytest.raises(CheckpointError, match="trained with other settings.*optim"):
        train_pair(cfg, log=_quiet, ctx=CTX)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_checkpoint_from_another_config_is_refused(tmp_path):
    cfg = tiny_pair_config(tmp_path)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[0]
    train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX,
              arm_fingerprint(cfg, arm, data.meta["key"]), log=_quiet, stop_after=3)
    cfg.optim.lr = 1e-2
    with pytest.raises(CheckpointError, match="another config.*optim"):
        train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX,
                  arm_fingerprint(cfg, arm, data.meta["key"]), log=_quiet)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = tiny_pair_config(tmp_path)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[0]
    fp = arm_fingerprint(cfg, arm, data.meta["key"])
    train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet, stop_after=3)
    ckpt = tmp_path / "a" / "checkpoints" / "step_00000003"
    for f in ckpt.glob("*.distcp"):
        f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet)


def test_nan_loss_stops_with_a_message_and_keeps_checkpoints(tmp_path, monkeypatch):
    cfg = tiny_pair_config(tmp_path, checkpoint_every=2)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[0]
    real = loop.forward_loss
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        out = real(*args, **kw)
        if calls["n"] == 4:  # the 4th step's loss becomes NaN
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(loop, "forward_loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss.*step 3.*intact"):
        train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX,
                  arm_fingerprint(cfg, arm, data.meta["key"]), log=_quiet)
    done = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert done == ["step_00000002"]


@pytest.mark.parametrize("change", [{"grad_accum": 2}, {"activation_checkpointing": True}])
def test_accumulation_and_activation_checkpointing_do_not_change_training(tmp_path, change):
    """Both are memory/speed knobs: the losses must match a plain run."""
    losses = {}
    for label, run in (("plain", {}), ("knob", change)):
        cfg = tiny_pair_config(tmp_path / label, steps=4, **run)
        data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
        arm = pair_arms(cfg, data.tokenizer.vocab_size)[1]  # the Free arm: Z per sequence too
        train_arm(arm, cfg, data.train, data.val, tmp_path / label / "arm", CTX,
                  arm_fingerprint(cfg, arm, data.meta["key"]), log=_quiet)
        losses[label] = [json.loads(l)["loss"] for l in
                         (tmp_path / label / "arm" / "metrics.jsonl").read_text().splitlines()]
    assert max(abs(a - b) for a, b in zip(losses["plain"], losses["knob"])) < 1e-5, losses


def test_bf16_autocast_smoke(tmp_path):
    # bf16 is 20-30x slower than fp32 on these CPUs: one tiny run checks the code path.
    cfg = tiny_pair_config(tmp_path, steps=2, dtype="bfloat16")
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    for arm in pair_arms(cfg, data.tokenizer.vocab_size):
        result = train_arm(arm, cfg, data.train, data.val, tmp_path / arm.name, CTX,
                           arm_fingerprint(cfg, arm, data.meta["key"]), log=_quiet)
        assert result.steps == 2 and all(map(torch.isfinite, map(torch.tensor,
                                                                 result.final_val.values())))
        assert next(result.model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_a_failed_run_leaves_no_empty_run_folder(tmp_path):
    cfg = tiny_pair_config(tmp_path / "models")
    cfg.data.sources[0].kind, cfg.data.sources[0].path = "jsonl", "absent.jsonl"
    cfg.data.data_dir = str(tmp_path)
    with pytest.raises(DataError):
        train_pair(cfg, log=_quiet, ctx=CTX)
    assert not (tmp_path / "models").exists()  # models/ too: this run created it
    # A folder that was there before the run is not this run's to remove.
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    with pytest.raises(DataError):
        train_pair(cfg, log=_quiet, ctx=CTX)
    assert (tmp_path / "models" / "tiny").is_dir()


def test_validation_does_not_depend_on_the_micro_batch(tmp_path):
    """Validation runs in the training's micro-batches with Z drawn per row: splitting the
    same rows into more micro-batches gives the same figures (up to summation order)."""
    cfg = tiny_pair_config(tmp_path)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[1]
    model = build_arm_model(arm, cfg, CTX)
    whole = loop.validate(model, arm, data.val, cfg, CTX, None)
    split = loop.validate(model, arm, data.val, tiny_pair_config(tmp_path, grad_accum=4),
                          CTX, None)
    assert whole.keys() == split.keys() and "val_ce_prior" in whole
    for k in whole:
        assert abs(whole[k] - split[k]) < 1e-5 * max(1.0, abs(whole[k])), (k, whole, split)


def test_a_run_stopped_in_validation_finishes_that_step_when_resumed(tmp_path, monkeypatch):
    """The checkpoint comes before validation: a validation that dies (out of memory, a
    killed job) leaves that step's checkpoint, and the rerun validates and logs the step
    from it instead of replaying it. Its line equals an uninterrupted run's."""
    cfg = tiny_pair_config(tmp_path)  # checkpoints and validation at steps 3 and 6
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[1]
    fp = arm_fingerprint(cfg, arm, data.meta["key"])
    train_arm(arm, cfg, data.train, data.val, tmp_path / "straight", CTX, fp, log=_quiet)
    real = loop.validate

    def dies_at_step_3(model, *args):
        raise RuntimeError("CUDA out of memory (simulated)")
    monkeypatch.setattr(loop, "validate", dies_at_step_3)
    with pytest.raises(RuntimeError, match="simulated"):
        train_arm(arm, cfg, data.train, data.val, tmp_path / "cut", CTX, fp, log=_quiet)
    assert (tmp_path / "cut" / "checkpoints" / "step_00000003").is_dir()
    monkeypatch.setattr(loop, "validate", real)
    train_arm(arm, cfg, data.train, data.val, tmp_path / "cut", CTX, fp, log=_quiet)

    def lines(run):
        return [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    straight, cut = lines("straight"), lines("cut")
    assert [r["step"] for r in cut] == list(range(1, 7))
    timing = {"tokens_per_s", "cpu_s_per_token", "load_avg", "mfu", "peak_memory_bytes"}
    for a, b in zip(straight, cut):
        assert {k: v for k, v in a.items() if k not in timing} == \
            {k: v for k, v in b.items() if k not in timing}


def test_grad_accum_may_change_when_a_run_resumes(tmp_path):
    """Accumulation splits the same global batch: a run moved to hardware that needs
    another split resumes instead of being refused."""
    cfg = tiny_pair_config(tmp_path)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[0]
    fp = arm_fingerprint(cfg, arm, data.meta["key"])
    train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet, stop_after=3)
    from ftbench.training.checkpoint import fingerprint_differs

    other = tiny_pair_config(tmp_path, grad_accum=2)
    assert fingerprint_differs(arm_fingerprint(other, arm, data.meta["key"]), fp) == []
    assert fingerprint_differs(arm_fingerprint(tiny_pair_config(tmp_path, batch_size=8), arm,
                                               data.meta["key"]), fp) == ["run"]
    done = train_arm(arm, other, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet)
    assert done.steps == 6


def test_checkpoints_fingerprinted_with_grad_accum_still_resume(tmp_path):
    """Checkpoints written while grad_accum was part of the run's hash (and before
    run.timeout_minutes existed) resume at the same grad_accum."""
    import dataclasses
    import hashlib

    cfg = tiny_pair_config(tmp_path)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[0]
    fp = arm_fingerprint(cfg, arm, data.meta["key"])
    train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet, stop_after=3)
    # The hash as the earlier code computed it, written into the checkpoint's meta.json.
    run = dataclasses.asdict(cfg.run)
    for key in ("checkpoint_every", "eval_every", "val_batches", "out_dir", "compile",
                "activation_checkpointing", "matched_control", "trackers", "timeout_minutes",
                "checkpoint_policy", "shard_ranks", "snapshot_every"):  # the last three
        # did not exist then
        run.pop(key)
    old = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]
    meta_path = tmp_path / "a" / "checkpoints" / "step_00000003" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["run"] != old
    meta["run"] = old
    meta.pop("run_also_accepted")
    meta_path.write_text(json.dumps(meta))
    done = train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet)
    assert done.steps == 6
    meta["run"] = "0" * 16  # any other run is still refused
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "a" / "checkpoints" / "step_00000006").rename(tmp_path / "a" / "later")
    with pytest.raises(CheckpointError, match="differs in: run"):
        train_arm(arm, cfg, data.train, data.val, tmp_path / "a", CTX, fp, log=_quiet)


def test_runs_trained_before_snapshots_existed_keep_their_fingerprint():
    """The run hash recorded by the code before run.snapshot_every existed (this config,
    the Free arm): a new field that only reads the weights must not make every earlier
    checkpoint and export refuse to resume, nor may changing the interval mid-run."""
    cfg = tiny_pair_config("/nonexistent")
    arm = pair_arms(cfg, 512)[1]
    fp = arm_fingerprint(cfg, arm, "k")
    assert (fp["run"], fp["run_also_accepted"]) == ("97108586b68c5e2a", ["c31ca8cb11644523"])
    cfg.run.snapshot_every = 7
    assert arm_fingerprint(cfg, arm, "k") == fp
