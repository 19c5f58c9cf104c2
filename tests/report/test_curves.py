"""Benchmarks over training: the last-third average, the paired gain's interval, the
curve figure per benchmark and the tables, from snapshot results."""

import dataclasses
import json

import numpy as np
import pytest

import ftbench
from ftbench.evaluation.results import write_result
from ftbench.model.presets import get_preset
from ftbench.report.curves import (curve_blocks, kappa_text, last_third_average, paired_gain)
from ftbench.report.document import Figure, Table
from tests.report.test_tables import _result

STEPS = 30  # the run's last step: the final export
TOKENS_PER_STEP = 128
# Share of the 100 items each arm gets right at each evaluated step (30: the export).
RATES = {"baseline": {10: 0.20, 20: 0.30, 25: 0.40, 30: 0.50},
         "free-k0p5": {10: 0.25, 20: 0.35, 25: 0.60, 30: 0.70},
         "free-k2": {10: 0.20, 20: 0.30, 25: 0.40, 30: 0.50}}
KAPPA = {"baseline": None, "free-k0p5": 0.5, "free-k2": 2.0}


def _outcomes(rate):
    return {str(i): float(i < rate * 100) for i in range(100)}


def _write(results, models, arms=RATES, snapshots=True):
    for arm, rates in arms.items():
        arch = "baseline" if KAPPA[arm] is None else "free"
        d = models / "run" / arm
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({
            "arch": arch, "arm": arm, "kappa_bits": KAPPA[arm], "steps": STEPS,
            "model": dataclasses.asdict(get_preset("toy")),
            "pair_config": {"run": {"batch_size": 4}, "data": {"seq_len": 32}}}))
        for step, rate in rates.items():
            if step != STEPS and not snapshots:
                continue
            r = _result("commonsense_qa", "qa", "acc,none", _outcomes(rate), arch=arch)
            r["model"] = {"arm": arm, "step": step, "tokens": step * TOKENS_PER_STEP,
                          "snapshot": step != STEPS}
            where = results / "run" / arm
            if step != STEPS:
                where = where / "snapshots" / f"step-{step:06d}"
            write_result(where / "commonsense_qa.json", r)


@pytest.fixture
def roots(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    _write(results, models)
    return results, models


def test_last_third_average_is_the_mean_of_the_frames_scores_past_two_thirds(roots):
    frame = ftbench.results_frame(["run"], *roots)
    # By hand from the frame: the headline rows of steps above 2/3 x 30 = 20.
    head = frame[frame["headline_metric"] & frame["headline_protocol"]
                 & (frame["arm"] == "free-k0p5")]
    assert sorted(head["step"]) == [10, 20, 25, 30]
    by_hand = head[head["step"] > 20]["value"].mean()
    assert by_hand == pytest.approx((0.60 + 0.70) / 2)
    value, steps = last_third_average(frame, "run", "free-k0p5", "commonsense_qa")
    assert steps == [25, 30] and value == pytest.approx(by_hand)
    # The final rows read their step from the export's config; tokens from its pair config.
    final = frame[~frame["snapshot"] & (frame["arm"] == "baseline")]
    assert set(final["step"]) == {30} and set(final["tokens"]) == {30 * TOKENS_PER_STEP}


def test_paired_gain_interval_follows_from_the_outcomes():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, size=(3, 50))
    # The same outcomes: no gain in any resample.
    same = paired_gain(base, base.copy(), n_boot=500)
    assert same.rel == 0 and same.lo == 0 and same.hi == 0
    # Twice the baseline on every item and step: +100 % in every resample.
    double = paired_gain(base, 2 * base, n_boot=500)
    assert double.rel == pytest.approx(1) and double.lo == pytest.approx(1)
    assert double.hi == pytest.approx(1) and (double.n_steps, double.n_items) == (3, 50)
    # Noise between snapshots widens the interval: steps are resampled too.
    noisy = base + np.array([[0.3], [0.0], [-0.15]])
    gain = paired_gain(base, noisy, n_boot=2000)
    assert gain.lo < 0 < gain.hi
    items_only = paired_gain(base[:1], noisy[:1], n_boot=2000)
    assert items_only.hi - items_only.lo < gain.hi - gain.lo


def test_report_blocks_hold_a_figure_per_benchmark_and_the_tables(roots, tmp_path):
    blocks = curve_blocks(["run"], *roots, tmp_path / "fig", n_boot=200)
    figures = [b for b in blocks if isinstance(b, Figure)]
    assert [f.png.name for f in figures] == ["curve_commonsense_qa.png"]
    assert figures[0].png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table3, *kappa_tables = [b for b in blocks if isinstance(b, Table)]
    rows = {r[1]: r for r in table3.rows}
    assert rows["baseline"][2] == "50.0 (30)" and rows["baseline"][4] == "45.0 (25, 30)"
    assert rows["free-k0p5"][4] == "65.0 (25, 30)"
    # 65 / 45 - 1 = +44.4 %; final 70 / 50 - 1 = +40 %.
    assert rows["free-k0p5"][5].startswith("+44.4 % [") and rows["free-k0p5"][3].startswith(
        "+40.0 % [")
    # Two κ: the paper's Tables 1-2 layout, a column per κ, final and last third.
    assert [t.header for t in kappa_tables] == [
        ["benchmark", "baseline (%)", "1/2 bit", "2 bits"]] * 2
    assert kappa_tables[1].rows[0][:2] == ["commonsense_qa", "45.0"]
    assert kappa_tables[1].rows[0][2].startswith("+44.4 %")
    assert kappa_tables[1].rows[0][3].startswith("+0.0 %")


def test_no_snapshots_no_section(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    _write(results, models, snapshots=False)
    assert curve_blocks(["run"], results, models, tmp_path / "fig") == []


def test_kappa_labels():
    assert [kappa_text(k) for k in (0.25, 0.5, 1.0, 2.0)] == ["1/4 bit", "1/2 bit", "1 bit",
                                                              "2 bits"]


@pytest.mark.parametrize("snapshots", [True, False])
def test_the_report_has_the_section_only_with_snapshots(tmp_path, snapshots):
    from ftbench.report.compose import build_report, report_inputs
    from ftbench.report.document import Heading

    results, models = tmp_path / "results", tmp_path / "models"
    _write(results, models, snapshots=snapshots)
    doc = build_report(report_inputs(["run"], results, models), tmp_path / "figures")
    headings = [b.text for b in doc.blocks if isinstance(b, Heading)]
    assert ("Benchmarks over training" in headings) is snapshots
    assert "Main comparison" in headings
