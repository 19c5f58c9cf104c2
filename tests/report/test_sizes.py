"""The view across sizes from real runs: toy, tiny and small pairs of one recipe trained
for 2 steps on the synthetic source (seconds), scored with fixed per-item outcomes. One
point per size per arm, x the arm's training FLOPs written out by hand from the presets'
shapes; a run of another recipe is refused, never put on the axis."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.config import pair_config_from_dict
from ftbench.data.pipeline import prepare_for_run
from ftbench.evaluation.results import write_result
from ftbench.report.collect import collect
from ftbench.report.compose import build_report, report_inputs
from ftbench.report.document import Banner, Figure, Heading, Table
from ftbench.report.sizes import size_view
from ftbench.training.pair import train_pair
from tests.report.test_tables import _result

STEPS, BATCH, T = 2, 2, 16
SIZES = ("toy", "tiny", "small")
# The presets' shapes (ftbench/model/presets.py), written out: D, L, KV width
# (n_kv_heads x head_dim), FFN F, latent bits H.
SHAPES = {"toy": (64, 4, 2 * 16, 256, 8), "tiny": (128, 6, 2 * 32, 512, 12),
          "small": (256, 8, 4 * 64, 1024, 16)}


def hand_train_flops(size: str, vocab: int, arch: str) -> float:
    """Model FLOPs of training STEPS x BATCH x T tokens: a matmul with an m x n weight is
    2mn forward per token, training 3x forward; causal attention 2(T+1)D per layer; the
    encoder's block has full T x T attention (4TD) and a D x H readout; the Binary Mapper's
    backward 2 * 2^H * D + 2 * 2^H * (H + 1)."""
    D, L, kv, F, H = SHAPES[size]
    block = 2 * D * D + 2 * D * kv + 3 * D * F
    fwd = 2 * (L * block + vocab * D) + L * 2 * (T + 1) * D
    train = 3 * fwd
    if arch == "free":
        train += 3 * (2 * block + 4 * T * D + 2 * D * H) + 2 * 2**H * D + 2 * 2**H * (H + 1)
    return float(train) * STEPS * BATCH * T


def _config(size: str, out_dir, name: str, **run):
    return pair_config_from_dict({
        "size": size, "model": {"max_seq_len": 64},
        "data": {"sources": [{"kind": "synthetic"}], "train_tokens": 2_000, "seq_len": T,
                 "tokenizer": {"kind": "char"}, "val_fraction": 0.05},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "latent": {"kappas_bits": [0.5]},
        "run": {"name": name, "steps": STEPS, "batch_size": BATCH, "checkpoint_every": STEPS,
                "eval_every": STEPS, "val_batches": 1, "out_dir": str(out_dir),
                "snapshot_every": 0, **run},
    })


# Baseline 30 %, Free 50 % on 200 items: +20 points, +66.7 % relative, for every size.
BASE = {str(i): float(i % 10 < 3) for i in range(200)}
FREE = {str(i): float(i % 10 < 5) for i in range(200)}


def _write_results(results, run: str) -> None:
    for arm, outcomes, arch in (("baseline", BASE, "baseline"), ("free-k0p5", FREE, "free")):
        write_result(results / run / arm / "gsm8k.json",
                     _result("gsm8k", "math", "exact_match,strict-match", outcomes, arch=arch))
        write_result(results / run / arm / "commonsense_qa.json",
                     _result("commonsense_qa", "qa", "acc,none", outcomes, arch=arch))


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    models, results = root / "models", root / "results"
    for size in SIZES:
        cfg = _config(size, models, f"r-{size}")
        # In this process: the builder's worker processes would cost more than the data.
        prepare_for_run(cfg, workers=1, log=lambda *a, **k: None, progress=False)
        train_pair(cfg, log=lambda *a, **k: None)
        _write_results(results, f"r-{size}")
    return models, results


def _meta(models, run, arm):
    return json.loads((models / run / arm / "config.json").read_text())


def test_one_point_per_size_and_arm_at_its_training_flops(ladder):
    models, results = ladder
    runs = [f"r-{s}" for s in SIZES]
    view = size_view(collect(results, runs), models, n_boot=500)
    assert view is not None and view.refused is None
    assert [s.size for s in view.shapes] == list(SIZES)  # smallest first
    for task in ("gsm8k", "commonsense_qa"):
        for arm, arch in (("baseline", "baseline"), ("free-k0p5", "free")):
            pts = [p for p in view.points if p.task == task and p.arm == arm]
            assert sorted(p.size for p in pts) == sorted(SIZES)
            for p in pts:
                vocab = _meta(models, p.run, arm)["model"]["vocab_size"]  # the char tokenizer's
                assert p.train_flops == pytest.approx(hand_train_flops(p.size, vocab, arch),
                                                      rel=1e-12)
                if arch == "free":
                    assert p.diff == pytest.approx(0.2) and p.rel_gain == pytest.approx(0.2 / 0.3)
                    assert p.ci_low < 0.2 <= p.ci_high and p.significant
                else:
                    assert p.score == pytest.approx(0.3) and p.diff is None
    assert [s.tokens for s in view.shapes] == [STEPS * BATCH * T] * 3


def test_report_holds_the_figure_and_table_across_sizes(ladder, tmp_path):
    models, results = ladder
    runs = [f"r-{s}" for s in SIZES]
    doc = build_report(report_inputs(runs, results, models), tmp_path / "figures")
    i = next(i for i, b in enumerate(doc.blocks)
             if isinstance(b, Heading) and b.text == "Across sizes")
    fig = next(b for b in doc.blocks[i:] if isinstance(b, Figure))
    assert fig.png.name == "sizes.png" and fig.png.stat().st_size > 10_000
    table = next(b for b in doc.blocks[i:] if isinstance(b, Table))
    assert table.header[-1] == "free-k0p5: gain"
    # Per benchmark (math before QA), one row per run, smallest first.
    assert [r[0] for r in table.rows] == ["gsm8k"] * 3 + ["commonsense_qa"] * 3
    assert [r[1].split()[0] for r in table.rows[:3]] == runs
    for row in table.rows:
        size = row[1].split("(")[1].rstrip(")")
        vocab = _meta(models, f"r-{size}", "baseline")["model"]["vocab_size"]
        assert row[4] == f"{hand_train_flops(size, vocab, 'baseline'):.3e}"
        assert row[5] == "30.0" and row[6].startswith("+20.0 pts [") and "+66.7 % [" in row[6]
    result = CliRunner().invoke(app, ["report", *runs, "--results", str(results), "--models",
                                      str(models), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Across sizes" in html and "gains across sizes" in html


def test_runs_of_another_recipe_are_refused_not_pooled(ladder, tmp_path):
    models, results = ladder
    # The small run again with another data.val_fraction: a recipe change, not a size.
    shutil.copytree(models / "r-small", tmp_path / "models" / "r-other")
    for run in ("r-toy", "r-tiny"):
        shutil.copytree(models / run, tmp_path / "models" / run)
    for arm in ("baseline", "free-k0p5"):
        path = tmp_path / "models" / "r-other" / arm / "config.json"
        meta = json.loads(path.read_text())
        meta["pair_config"]["data"]["val_fraction"] = 0.1
        meta["pair_config"]["optim"]["lr"] = 1e-3  # a size's schedule: allowed to differ
        path.write_text(json.dumps(meta))
    for run in ("r-toy", "r-tiny", "r-other"):
        _write_results(tmp_path / "results", run)
    runs = ["r-toy", "r-tiny", "r-other"]
    view = size_view(collect(tmp_path / "results", runs), tmp_path / "models", n_boot=200)
    assert view.refused is not None and view.points == []
    assert "data.val_fraction" in view.refused and "optim.lr" not in view.refused
    doc = build_report(report_inputs(runs, tmp_path / "results", tmp_path / "models"),
                       tmp_path / "figures")
    assert any(isinstance(b, Banner) and b.text.startswith("NO CROSS-SIZE VIEW")
               for b in doc.blocks)
    assert not (tmp_path / "figures" / "sizes.png").exists()
