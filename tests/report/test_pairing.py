"""The report's matched-pair checks read what each arm recorded and name any difference."""

import json

from ftbench.report.pairing import DIFFERS, pair_checks, unmatched_banner


def _arm(root, arm, arch, layers, batches, init, tok="t" * 64, val="v" * 16, world=1):
    d = root / "run" / arm
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.0, "batch_sha1": b}) + "\n"
        for s, b in enumerate(batches, start=1)))
    (d / "config.json").write_text(json.dumps({
        "arch": arch, "model": {"n_layers": layers},
        "matched": {"init_sha1": init, "init_world_size": world, "tokenizer_sha256": tok,
                    "val_windows_sha1": val}}))


BATCHES = ["a1", "b2", "c3", "d4"]
INIT = {"tok_emb.weight": "e0", "layers.0.attn.wq.weight": "q0", "out.weight": "o0"}


def test_a_matched_pair_passes_and_every_difference_is_named(tmp_path):
    _arm(tmp_path, "baseline", "baseline", 2, BATCHES, INIT)
    _arm(tmp_path, "free-same", "free", 2, BATCHES, INIT | {"encoder.wq.weight": "x"})
    _arm(tmp_path, "free-seed", "free", 2, ["a1", "b2", "zz", "d4"], INIT)
    _arm(tmp_path, "free-init", "free", 2, BATCHES, INIT | {"out.weight": "o1"}, tok="u" * 64)
    _arm(tmp_path, "free-val", "free", 2, BATCHES, INIT, val="w" * 16, world=2)
    checks = {c.arm: c for c in pair_checks(tmp_path, "run", ["baseline", "free-same",
                                                               "free-seed", "free-init",
                                                               "free-val", "absent"])}
    assert set(checks) == {"free-same", "free-seed", "free-init", "free-val"}

    same = checks["free-same"]
    assert same.batches == "identical at 4 of 4 steps"
    assert same.initial_weights == "identical (3 shared tensors)"  # the encoder is its own
    assert not same.failures

    assert checks["free-seed"].batches == f"{DIFFERS} at 1 of 4 steps (first: step 3)"
    assert checks["free-seed"].failures == ["batches"]
    assert checks["free-init"].initial_weights == \
        f"{DIFFERS}: 1 of 3 shared tensors (first: out.weight)"
    assert checks["free-init"].failures == ["initial weights", "tokenizer"]
    # Rank 0's shards of runs on different world sizes are different slices: no verdict.
    assert checks["free-val"].initial_weights.startswith("not comparable")
    assert checks["free-val"].failures == ["validation windows"]

    banner = unmatched_banner(list(checks.values()))
    assert banner.startswith("PAIR NOT MATCHED")
    for arm in ("free-seed", "free-init", "free-val"):
        assert f"run/{arm}" in banner
    assert "free-same" not in banner
    assert unmatched_banner([same]) is None


def test_runs_trained_before_the_record_say_not_recorded(tmp_path):
    _arm(tmp_path, "baseline", "baseline", 2, BATCHES, INIT)
    d = tmp_path / "run" / "free"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"arch": "free", "model": {"n_layers": 2}}))
    (check,) = pair_checks(tmp_path, "run", ["baseline", "free"])
    assert (check.batches, check.initial_weights, check.tokenizer, check.validation) == \
        ("not recorded",) * 4
    assert not check.failures
