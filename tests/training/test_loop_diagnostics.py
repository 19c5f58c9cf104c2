"""What train_arm records beyond the loss: the latent's information at validation steps,
CPU time and load beside wall time, and elapsed time and ETA in piped progress lines."""

import json

import pytest
import torch

import ftbench.training.loop as loop
from ftbench.data.pipeline import prepare_data
from ftbench.training.arms import pair_arms
from ftbench.training.distributed import DistContext
from ftbench.training.loop import build_arm_model, train_arm, validate
from ftbench.training.pair import arm_fingerprint
from tests.training.helpers import tiny_pair_config

CTX = DistContext()


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loopdiag")
    cfg = tiny_pair_config(tmp, steps=4, eval_every=2)
    data = prepare_data(cfg.data, cfg.run.seed, tmp / "data", log=_quiet)
    return tmp, cfg, data, pair_arms(cfg, data.tokenizer.vocab_size)


def test_metrics_hold_latent_information_cpu_time_and_load(tiny):
    tmp, cfg, data, arms = tiny
    free = arms[1]
    result = train_arm(free, cfg, data.train, data.val, tmp / "free", CTX,
                       arm_fingerprint(cfg, free, data.meta["key"]), log=_quiet)
    records = [json.loads(l) for l in (tmp / "free" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cpu_s_per_token"] > 0 for r in records)
    assert all("load_avg" in r for r in records)
    # The analytic FLOP ratio the report sets beside the measured time ratio.
    from ftbench.model.accounting import model_cost
    ratio = (model_cost(free.model, "free", cfg.data.seq_len).train_flops_per_token
             / model_cost(arms[0].model, "baseline", cfg.data.seq_len).train_flops_per_token)
    assert ratio > 1 and all(r["flop_ratio_vs_baseline"] == pytest.approx(ratio) for r in records)
    val = [r for r in records if "val_kl_bits" in r]
    assert [r["step"] for r in val] == [2, 4]
    for r in val:  # logged beside the KL, at every validation step
        assert 0 <= r["val_mi_bits"] <= r["val_kl_bits"] + 1e-6
        assert r["val_logit_std"] >= 0 and "val_mi_content_bits" in r
    assert result.cpu_s_per_token > 0
    assert result.final_val["val_mi_bits"] == val[-1]["val_mi_bits"]


def test_validation_reports_zero_information_for_a_constant_encoder(tiny):
    _, cfg, data, arms = tiny
    free = arms[1]
    model = build_arm_model(free, cfg, CTX)
    H = free.model.latent_bits
    # Bit-identical logits at every position (a toy Free arm): a KL, no information.
    model.encoder.forward = lambda x, rope, mask: torch.full((*x.shape[:2], H), 1.0)
    val = validate(model, free, data.val, cfg, CTX, None)
    assert val["val_kl_bits"] > 0.5
    assert val["val_mi_bits"] == pytest.approx(0.0, abs=1e-9)
    assert val["val_logit_std"] == pytest.approx(0.0, abs=1e-6)


def test_baseline_validation_has_no_latent_keys(tiny):
    _, cfg, data, arms = tiny
    base = arms[0]
    val = validate(build_arm_model(base, cfg, CTX), base, data.val, cfg, CTX, None)
    assert set(val) == {"val_ce"}


def test_piped_progress_lines_carry_elapsed_and_eta(capsys, monkeypatch):
    clock = iter([100.0, 130.0, 160.0])
    monkeypatch.setattr(loop.time, "monotonic", lambda: next(clock))
    progress = loop._progress(CTX, 0, 20, "arm")  # stderr is captured: not a terminal
    record = {"loss": 2.0, "tokens_per_s": 1000.0}
    progress(2, record)
    progress(20, record)
    lines = capsys.readouterr().err.splitlines()
    # 30 s for 2 of 20 steps: 4:30 left; the last line has nothing left.
    assert lines[0].endswith("[elapsed 0:30, ETA 4:30]")
    assert lines[1].endswith("[elapsed 1:00, ETA 0:00]")
    assert loop._clock(3725) == "1:02:05" and loop._clock(None) == "?"


def test_measuring_an_exported_arm_matches_what_training_logged(tmp_path, capsys):
    from ftbench.diagnostics.latent_info import FILE, main
    from ftbench.training.pair import train_pair

    cfg = tiny_pair_config(tmp_path / "models")
    train_pair(cfg, log=_quiet)
    arm = tmp_path / "models" / "tiny" / "free-k0p5"
    logged = [json.loads(l) for l in (arm / "metrics.jsonl").read_text().splitlines()][-1]
    # Validation read the first batch_size windows; measure the same ones afterwards.
    assert main([str(arm), "--windows", str(cfg.run.batch_size)]) == 0
    written = json.loads((arm / FILE).read_text())
    assert written["mi_bits"] == pytest.approx(logged["val_mi_bits"], abs=1e-6)
    assert written["logit_std"] == pytest.approx(logged["val_logit_std"], rel=1e-4, abs=1e-7)
    assert written["kl_bits"] == pytest.approx(logged["val_kl_bits"], rel=1e-4)
    assert main([str(tmp_path / "models" / "tiny" / "baseline")]) == 2
    assert "not a Free Transformer" in capsys.readouterr().err
