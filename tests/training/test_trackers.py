"""Live dashboards: what TensorBoard and W&B receive is what metrics.jsonl holds."""

import importlib.util
import json
import math
import struct
import sys

import pytest
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.config import dump_pair_config
from ftbench.data.pipeline import prepare_data
from ftbench.model.config import ConfigError
from ftbench.training.arms import pair_arms
from ftbench.training.distributed import DistContext
import ftbench.training.loop as loop
from ftbench.training.loop import train_arm
from ftbench.training.pair import arm_fingerprint
from ftbench.training.trackers import TrackerUnavailable, require_trackers, scalars
from tests.training.helpers import tiny_pair_config

CTX = DistContext()
# Measured per attempt: the figures of a step logged before an interruption differ.
TIMING = {"tokens_per_s", "cpu_s_per_token", "load_avg", "mfu", "peak_memory_bytes"}


def _quiet(*_):
    pass


def _train_with_a_resume(tmp_path, trackers, arm_index):
    """Stop after step 4 (past the step-3 checkpoint, as a crash would), then resume: steps
    4.. are trained and logged a second time."""
    cfg = tiny_pair_config(tmp_path, trackers=trackers)
    data = prepare_data(cfg.data, cfg.run.seed, tmp_path / "data", log=_quiet)
    arm = pair_arms(cfg, data.tokenizer.vocab_size)[arm_index]
    fp = arm_fingerprint(cfg, arm, data.meta["key"])
    arm_dir = tmp_path / arm.name
    train_arm(arm, cfg, data.train, data.val, arm_dir, CTX, fp, log=_quiet, stop_after=4)
    first = arm_dir / "first-attempt"
    first.mkdir()
    for path in (arm_dir / "tb").glob("events.*"):
        (first / path.name).write_bytes(path.read_bytes())
    result = train_arm(arm, cfg, data.train, data.val, arm_dir, CTX, fp, log=_quiet)
    assert result.steps == cfg.run.steps
    return arm_dir


def _tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # purge_orphaned_data (the default) applies the resumed writer's purge_step, as the
    # TensorBoard UI does; size_guidance 0 keeps every event.
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (make setup installs it)")
    return _train_with_a_resume(tmp_path_factory.mktemp("tb"), ["tensorboard"], arm_index=1)


def test_tensorboard_scalars_equal_metrics_jsonl_across_a_resume(tensorboard_run):
    records = [json.loads(l) for l in (tensorboard_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for key, value in scalars(r).items():
            expected.setdefault(key, []).append((r["step"], value))
    # The Free arm's diagnostic figures, training and validation, are all there.
    assert {"loss", "ce", "kl_bits", "grad_norm", "lr", "tokens_per_s", "peak_memory_bytes",
            "val_ce_prior", "val_elbo"} <= expected.keys()
    assert any(k.startswith("frac") for k in expected), sorted(expected)

    logged = _tensorboard_scalars(tensorboard_run / "tb")
    assert logged.keys() == expected.keys()
    for key, points in expected.items():
        steps = [s for s, _ in logged[key]]
        assert steps == [s for s, _ in points], key  # each step once, in order
        for (_, got), (_, want) in zip(logged[key], points):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-30), key  # event files: float32


def test_the_interrupted_attempt_had_logged_the_repeated_step(tensorboard_run):
    # Without this, the no-duplicates check above would prove nothing about the resume.
    first = _tensorboard_scalars(tensorboard_run / "first-attempt")
    assert [s for s, _ in first["loss"]] == [1, 2, 3, 4]


def _wandb_records(path):
    """The records of an offline run's .wandb file: W&B's header, then a LevelDB-style log
    of 32 KiB blocks (chunks: crc32 4, length 2, type 1 = full, 2-4 = first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install 'ftbench[wandb]'; CI does not)")
def test_wandb_offline_run_holds_the_config_and_each_step_of_metrics_jsonl_once(tmp_path,
                                                                               monkeypatch):
    # Offline, and every W&B file under tmp_path: nothing goes to the network or ~.
    for var in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    arm_dir = _train_with_a_resume(tmp_path, ["wandb"], arm_index=0)
    run_id = json.loads((arm_dir / "wandb" / "ftbench-run.json").read_text())["run_id"]
    runs = sorted((arm_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # the interrupted attempt and the resume ...
    assert all(r.name.endswith(f"-{run_id}") for r in runs)  # ... continue one W&B run
    logged, configs = [], []
    for run in runs:
        (data_file,) = run.glob("*.wandb")
        for record in _wandb_records(data_file):
            if record.HasField("run"):
                configs.append({i.key: json.loads(i.value_json) for i in record.run.config.update})
            if record.HasField("history"):
                logged.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                               for i in record.history.item})
    assert len(configs) == 2
    for config in configs:
        assert config["arm"] == "baseline" and config["pair_config"]["run"]["trackers"] == ["wandb"]
        assert config["pair_config"]["model"]["vocab_size"] == config["arm_model"]["vocab_size"]
    records = [json.loads(l) for l in (arm_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["_step"] for h in logged] == [r["step"] for r in records] == list(range(1, 7))
    for h, r in zip(logged, records):
        # Timing figures of step 4 are the interrupted attempt's; the rest is bit-identical.
        want = {k: v for k, v in scalars(r).items() if k not in TIMING}
        assert {k: h[k] for k in want} == want, r["step"]
        assert h.keys() - {"_step", "_runtime", "_timestamp"} == scalars(r).keys()


def test_an_unknown_tracker_name_is_a_config_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.trackers\[1\]: 'mlflow' is not one of "
                                          r"tensorboard, wandb"):
        tiny_pair_config(tmp_path, trackers=["tensorboard", "mlflow"])


def test_a_missing_tracker_package_names_the_extra_and_the_cli_exits_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard: ImportError
    with pytest.raises(TrackerUnavailable, match=r"pip install 'ftbench\[tensorboard\]'"):
        require_trackers(["tensorboard"])
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_pair_config(tiny_pair_config(tmp_path / "models")))
    result = CliRunner().invoke(app, ["train-pair", "--config", str(config),
                                      "--set", "run.trackers=[tensorboard]"])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and "pip install 'ftbench[tensorboard]'" in message
    assert not (tmp_path / "models").exists()  # refused before any work


def test_scalars_keep_numbers_only():
    record = {"step": 3, "loss": 2.5, "mfu": None, "load_avg": 1, "note": "x", "ok": True,
              "bad": math.nan}
    assert scalars(record) == {"loss": 2.5, "load_avg": 1.0}


def test_only_rank_0_opens_trackers(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (make setup installs it)")
    cfg = tiny_pair_config(tmp_path, trackers=["tensorboard"])
    arm = pair_arms(cfg, 31)[0]
    assert loop._open_trackers(arm, cfg, tmp_path / "r1", DistContext(rank=1, world=2), 0) \
        .trackers == []
    assert not (tmp_path / "r1").exists()
    main = loop._open_trackers(arm, cfg, tmp_path / "r0", DistContext(rank=0, world=2), 0)
    assert [type(t).__name__ for t in main.trackers] == ["TensorBoardTracker"]
    main.close()
    assert list((tmp_path / "r0" / "tb").glob("events.out.tfevents.*"))
