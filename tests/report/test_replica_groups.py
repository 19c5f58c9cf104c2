"""'Across seeds' pools runs only when their configurations differ by the seed alone."""

import json

from ftbench.evaluation.results import write_result
from ftbench.report.collect import collect
from ftbench.report.compose import _seeds_section
from ftbench.report.document import Banner, Document, Table
from ftbench.report.frame import frame_from_arms
from ftbench.report.replica_groups import replica_groups
from tests.report.test_tables import _result


def _pair_config(size: str, seed: int, name: str) -> dict:
    return {"size": size, "model": {"d_model": 64 if size == "toy" else 128, "n_layers": 2},
            "run": {"name": name, "seed": seed, "steps": 150, "out_dir": "models"},
            "latent": {"kappas_bits": [0.5]}}


def _run(results, models, run, size, seed, base_rate, free_rate):
    for arm, rate, arch in (("baseline", base_rate, "baseline"), ("free-k0p5", free_rate, "free")):
        outcomes = {str(i): float(i % 10 < rate) for i in range(100)}
        write_result(results / run / arm / "gsm8k.json",
                     _result("gsm8k", "math", "exact_match,strict-match", outcomes, arch=arch))
        (models / run / arm).mkdir(parents=True, exist_ok=True)
        (models / run / arm / "config.json").write_text(json.dumps(
            {"arch": arch, "pair_config": _pair_config(size, seed, run)}))


def test_runs_of_different_configurations_are_not_pooled_as_seeds(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    _run(results, models, "toy", "toy", 0, 2, 3)
    _run(results, models, "tiny", "tiny", 0, 5, 6)
    arms = collect(results, ["toy", "tiny"])
    groups, notes = replica_groups(arms, models)
    assert all(len(g.members) == 1 for g in groups)
    assert len(notes) == 2 and "model.d_model" in notes[0] and "size" in notes[0]
    doc = Document("t")
    _seeds_section(doc, arms, frame_from_arms(arms), models)
    assert not any(isinstance(b, Table) for b in doc.blocks)  # nothing pooled
    banner = next(b for b in doc.blocks if isinstance(b, Banner))
    assert "RUNS NOT POOLED AS SEEDS" in banner.text and "toy | tiny" in banner.text


def test_runs_that_differ_by_the_seed_alone_are_pooled(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    _run(results, models, "toy-s1", "toy", 1, 2, 3)   # 20 % and 30 %
    _run(results, models, "toy-s2", "toy", 2, 4, 5)   # 40 % and 50 %
    _run(results, models, "tiny", "tiny", 0, 5, 6)
    arms = collect(results, ["toy-s1", "toy-s2", "tiny"])
    doc = Document("t")
    _seeds_section(doc, arms, frame_from_arms(arms), models)
    table = next(b for b in doc.blocks if isinstance(b, Table))
    assert table.header == ["benchmark", "baseline (n runs)", "free-k0p5 (n runs)",
                            "free-k0p5 (n runs): relative gain"]
    # Hand computation: mean ± sample sd of (20, 40) and (30, 50); gains 0.5 and 0.25.
    assert table.rows[0][:3] == ["gsm8k", "30.0 ± 14.1 (2)", "40.0 ± 14.1 (2)"]
    assert table.rows[0][3] == "37.5 ± 17.7 %"
    banner = next(b for b in doc.blocks if isinstance(b, Banner))
    assert "tiny" in banner.text and "toy-s1, toy-s2" in banner.text


def test_a_run_without_a_recorded_configuration_is_not_pooled(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    _run(results, models, "a", "toy", 1, 2, 3)
    _run(results, models, "b", "toy", 2, 4, 5)
    (models / "b" / "free-k0p5" / "config.json").unlink()
    groups, notes = replica_groups(collect(results, ["a", "b"]), models)
    free = [g for g in groups if g.arm == "free-k0p5"]
    assert len(free) == 2 and any("no recorded configuration for b" in n for n in notes)
