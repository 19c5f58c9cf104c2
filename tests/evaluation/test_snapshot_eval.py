"""`ftbench eval --snapshots`: which snapshots a selection names, where their results go,
what they record, that an interrupted evaluation resumes to the same files, and that a
step that does not exist is one clear line."""

import json

import pytest
from typer.testing import CliRunner

import ftbench
from ftbench.cli import app
from ftbench.evaluation import runner as runner_module
from ftbench.evaluation.results import read_result
from ftbench.evaluation.runner import EvalSettings, evaluate_models
from ftbench.evaluation.snapshots import SnapshotError, select
from ftbench.training.distributed import DistContext
from ftbench.training.pair import run_dir, train_pair
from tests.training.helpers import tiny_pair_config

cli = CliRunner()
# Fields that time the evaluation or date it: the only ones two runs may differ in.
VOLATILE = ("wall_s", "model_s", "created")


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory):
    """A tiny pair of 6 steps with a snapshot every 2: steps 2 and 4, the export at 6."""
    cfg = tiny_pair_config(tmp_path_factory.mktemp("snapeval"), steps=6, snapshot_every=2)
    train_pair(cfg, log=lambda m: None, ctx=DistContext())
    return run_dir(cfg)


def _steps(points):
    return [(p.arm_dir.name, p.step, p.final) for p in points]


def test_selections_name_the_snapshots_and_the_final_export(snap_run):
    points, _ = select([snap_run], "all")
    assert _steps(points) == [("baseline", 2, False), ("free-k0p5", 2, False),
                              ("baseline", 4, False), ("free-k0p5", 4, False),
                              ("baseline", 6, True), ("free-k0p5", 6, True)]
    # The last third: steps > 2/3 x 6 = 4, so step 4 is out and the export (6) in.
    points, _ = select([snap_run], "last-third")
    assert _steps(points) == [("baseline", 6, True), ("free-k0p5", 6, True)]
    points, _ = select([snap_run / "free-k0p5"], "4")
    assert _steps(points) == [("free-k0p5", 4, False)]
    assert points[0].path == snap_run / "free-k0p5" / "snapshots" / "step-000004"
    with pytest.raises(SnapshotError, match="not a step"):
        select([snap_run], "4,x")


def test_a_missing_step_is_one_line_listing_the_available_steps(snap_run, tmp_path):
    result = cli.invoke(app, ["eval", str(snap_run), "--snapshots", "2,3", "--suite",
                              "commonsense_qa", "--results", str(tmp_path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert lines == [f"error: --snapshots: step 3 not found for {snap_run / 'baseline'}; "
                     "available steps: 2, 4, 6 (final export)"]
    assert not any(tmp_path.iterdir())  # nothing evaluated


def _evaluate(snap_run, results, data_dir, cache):
    points, _ = select([snap_run], "2,6")
    return evaluate_models([p.path for p in points], ["commonsense_qa"],
                           EvalSettings(limit=2), results, str(data_dir), cache,
                           log=lambda m: None)


def _stable(path):
    body = json.loads(path.read_text())
    return {k: v for k, v in body.items() if k not in VOLATILE}


def test_interrupted_snapshot_evaluation_resumes_to_the_same_files(snap_run, tmp_path, data_dir,
                                                                    monkeypatch):
    cache = tmp_path / "cache"
    whole = _evaluate(snap_run, tmp_path / "whole", data_dir, cache)
    files = sorted(p.relative_to(tmp_path / "whole") for p in whole)
    assert [str(f) for f in files] == [
        f"{snap_run.name}/{arm}/{where}commonsense_qa.json" for arm in ("baseline", "free-k0p5")
        for where in ("", "snapshots/step-000002/")]
    # Each result records where in training its weights come from: 4 sequences of 32
    # tokens per step.
    for f, step, snapshot in ((files[0], 6, False), (files[1], 2, True)):
        model = read_result(tmp_path / "whole" / f)["model"]
        assert (model["step"], model["tokens"], model["snapshot"]) == (step, step * 128, snapshot)

    # The same evaluation stopped as it writes its third file (a killed job), then rerun.
    write, calls = runner_module.write_result, []

    def dies_at_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(runner_module, "write_result", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(snap_run, tmp_path / "cut", data_dir, cache)
    monkeypatch.setattr(runner_module, "write_result", write)
    kept = {p: p.read_text() for p in calls[:2]}
    resumed = _evaluate(snap_run, tmp_path / "cut", data_dir, cache)
    assert sorted(p.relative_to(tmp_path / "cut") for p in resumed) == files
    assert all(p.read_text() == text for p, text in kept.items())  # finished ones kept
    for f in files:
        assert _stable(tmp_path / "cut" / f) == _stable(tmp_path / "whole" / f), f

    # The frame: a row per step, with the tokens seen; the final export at its last step.
    frame = ftbench.results_frame([snap_run.name], tmp_path / "whole", snap_run.parent)
    head = frame[frame["headline_metric"] & frame["headline_protocol"]]
    assert sorted(zip(head["arm"], head["step"], head["tokens"], head["snapshot"])) == [
        ("baseline", 2, 256, True), ("baseline", 6, 768, False),
        ("free-k0p5", 2, 256, True), ("free-k0p5", 6, 768, False)]
    items = ftbench.items_frame([snap_run.name], tmp_path / "whole", snap_run.parent)
    assert set(items["step"]) == {2, 6}
    assert len(ftbench.results_frame([snap_run.name], tmp_path / "whole", snap_run.parent,
                                     snapshots=False)) == len(frame) / 2


def test_an_arm_still_training_is_evaluated_on_its_snapshots_so_far(snap_run, tmp_path):
    import shutil

    run = tmp_path / snap_run.name
    shutil.copytree(snap_run / "free-k0p5", run / "free-k0p5")
    shutil.copy(snap_run / "pair.yaml", run / "pair.yaml")
    for name in ("config.json", "model.safetensors"):  # not exported yet
        (run / "free-k0p5" / name).unlink()
    shutil.rmtree(run / "free-k0p5" / "snapshots" / "step-000004")  # not written yet
    points, notes = select([run], "all")
    assert _steps(points) == [("free-k0p5", 2, False)]
    assert notes == [f"{run / 'free-k0p5'}: still training (final export not written yet); "
                     "evaluating its 1 snapshot(s) so far"]
    # The last third needs the run's length: the snapshot's record gives it (6 steps).
    assert select([run], "last-third")[0] == []
    # A snapshot being written (its temporary folder) is not listed.
    (run / "free-k0p5" / "snapshots" / "step-000004.tmp").mkdir()
    assert _steps(select([run], "all")[0]) == [("free-k0p5", 2, False)]
