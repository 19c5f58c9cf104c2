import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from ftbench.repro.cli import repro_app
from ftbench.repro.report import load_repro, predictions
from ftbench.repro.synthetic import (MEASURES, ReproError, collision_mi_bits, data_reference,
                                     kappa_text, pair_rates, parse_kappas, parse_sample,
                                     sample_measures)

runner = CliRunner()


def body(*spans, length=64) -> str:
    """'K>' + 64 body characters: '_' except (start, text) spans."""
    chars = ["_"] * length
    for start, text in spans:
        chars[start:start + len(text)] = text
    return "K>" + "".join(chars)


A = body((10, "KKKKKKKK"))                     # start 10, no noise
B = body((10, "!KKKKKKK"))                     # first letter hidden: first visible is 11
C = body((10, "!KKKKKKK"), (30, "!"))          # as B, plus noise at 30
D = body((30, "KKKKKKKK"))                     # start 30
M = body((5, "KKKKKKKK"), (40, "KKKKKKKK"))    # two targets: malformed
AMBIG = body((10, "!KKKKKK!!"))                # 6 visible letters, '!' around: start 10 or 11
GAPPY = body((10, "K____K"))                   # passes target_start, but is no 8-long run


def test_parse_sample_reads_the_grammar():
    a, b, amb = parse_sample(A), parse_sample(B), parse_sample(AMBIG)
    assert (a.start, a.starts, a.noise, a.well_formed) == (10, {10}, frozenset(), True)
    assert (b.start, b.starts, b.noise) == (11, {10}, {10})
    assert amb.starts == {10, 11} and amb.noise == {10, 17, 18}
    assert not parse_sample(M).well_formed and parse_sample(M).right_length
    gappy = parse_sample(GAPPY)
    assert gappy.start == 10 and not gappy.well_formed  # the stricter rule rejects it
    assert not parse_sample(A, ended=False).right_length  # no end-of-text after 64
    assert not parse_sample(A[:-1]).right_length
    assert not parse_sample(A.replace("_", "Q", 1)).well_formed  # another letter


def test_pair_rates_on_hand_made_groups():
    a, b, c, d, m = map(parse_sample, (A, B, C, D, M))
    r = pair_rates([[a, b, c], [d, m, d, a]])
    # Group 1: three well-formed pairs, all consistent with start 10; first visible
    # letters 10, 11, 11 agree once; noise Jaccard 0, 0 and |{10}|/|{10,30}| = 1/2.
    # Group 2: well-formed pairs (d,d) yes, (d,a) no, (d,a) no; six 64-character pairs
    # without noise (Jaccard 1), one of them identical.
    assert r["pos_pairs"] == 6 and r["length_pairs"] == 9
    assert r["pos_agree"] == pytest.approx(4 / 6)
    assert r["pos_agree_exact"] == pytest.approx(2 / 6)
    assert r["noise_agree"] == pytest.approx((0.5 + 6) / 9)
    assert r["identical"] == pytest.approx(1 / 9)
    # |10-11| + |10-11| + 0 in group 1; |30-30|, |30-10|, |30-10| in group 2.
    assert r["pos_dist"] == pytest.approx((1 + 1 + 0 + 0 + 20 + 20) / 6)
    assert pair_rates([[a]]) == {"pos_agree": None, "pos_agree_exact": None,
                                 "noise_agree": None, "identical": None, "pos_dist": None,
                                 "pos_pairs": 0, "length_pairs": 0}


def test_sample_measures_and_collision_information():
    indep = [parse_sample(t) for t in (A, D, M, body((50, "KKKKKKKK")))]
    shared = [[parse_sample(A), parse_sample(A)], [parse_sample(D), parse_sample(M)]]
    m = sample_measures(indep, shared)
    assert m["indep"]["well_formed"] == 0.75 and m["indep"]["pos_agree"] == 0.0
    assert m["shared"]["well_formed"] == 0.75 and m["shared"]["pos_agree"] == 1.0
    assert m["shared"]["groups"] == 2 and m["shared"]["group_size"] == 2
    assert m["mi_pos_bits"] is None  # independent samples never agreed: no finite ratio
    assert collision_mi_bits(1.0, 1 / 57) == pytest.approx(math.log2(57))
    assert collision_mi_bits(0.02, 0.02) == 0.0
    assert "shared" not in sample_measures(indep, None)


def test_real_data_agrees_at_chance():
    ref = data_reference(400, seed=0)
    assert ref["well_formed"] == 1.0 and ref["right_length"] == 1.0
    assert 0.010 < ref["pos_agree"] < 0.030  # two uniform starts: 1/57 = 0.0175
    assert 0.015 < ref["noise_agree"] < 0.05
    assert 17 < ref["pos_dist"] < 21  # two uniform starts: 19.0 apart on average


def test_parse_kappas():
    assert parse_kappas("1/64, 1/8,1,8") == [1 / 64, 0.125, 1.0, 8.0]
    assert parse_kappas("0.015625") == [1 / 64]
    assert [kappa_text(k) for k in (1 / 64, 0.125, 1.0, 8.0, 0.3)] == ["1/64", "1/8", "1", "8",
                                                                        "0.3"]
    for bad in ("", "a", "1/0", "-1", "0", "1/8,0.125"):
        with pytest.raises(ReproError, match="--kappas"):
            parse_kappas(bad)


def _row(arch, kappa, wf, shared=None, indep=0.02, noise_shared=None, noise_indep=0.03):
    return {"arm": arch if kappa is None else f"free-{kappa}", "arch": arch, "kappa_bits": kappa,
            "kappa": kappa_text(kappa), "well_formed_indep": wf, "pos_agree_shared": shared,
            "pos_agree_indep": indep, "noise_agree_shared": noise_shared,
            "noise_agree_indep": noise_indep}


def test_predictions_follow_fixed_rules():
    rows = [_row("baseline", None, 0.97), _row("free", 1 / 64, 0.95, 0.05),
            _row("free", 1 / 8, 0.93, 0.95), _row("free", 1.0, 0.90, 0.99, noise_shared=0.8),
            _row("free", 8.0, 0.10, 0.5)]
    got = predictions(rows)
    assert len(got) == 6 and all(p["holds"] for p in got), got
    rows[2]["pos_agree_shared"] = 0.89  # below 90 %: the 1/8-bit claim fails
    rows[1]["pos_agree_shared"] = 0.20  # 18 points above independent Z at 1/64
    rows[4]["well_formed_indep"] = 0.90  # generation does not break at 8 bits
    failed = [p["claim"][:10] for p in predictions(rows) if not p["holds"]]
    assert failed == ["\u03ba = 1/8: s", "\u03ba = 1/64: ", "\u03ba = 8: gen"]


def test_cli_help_and_bad_arguments_exit_2(tmp_path):
    result = runner.invoke(repro_app, ["synthetic", "--help"])
    assert result.exit_code == 0 and "--kappas" in result.output and "--ci" in result.output
    for args in (["--kappas", "1/8,x"], ["--samples", "10", "--group-size", "4"],
                 ["--set", "optim.lrr=1"]):
        result = runner.invoke(repro_app, ["synthetic", "--out", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output
    assert not (tmp_path / MEASURES).exists()


def test_figure_is_drawn_from_the_results_files(tmp_path):
    from ftbench.repro.figure import write_figure

    indep = [parse_sample(t) for t in (A, D, M)]
    shared = [[parse_sample(A), parse_sample(A)], [parse_sample(D), parse_sample(M)]]
    arm = {"arm": "free-k0p125", "arch": "free", "kappa_bits": 0.125, "prompt": "K>",
           "kl_bits": 0.12, **sample_measures(indep, shared)}
    (tmp_path / MEASURES).write_text(json.dumps({"arms": [arm]}))
    (tmp_path / "samples.json").write_text(json.dumps({"free-k0p125": {
        "prompt": "K>", "indep": [p.text for p in indep],
        "indep_well_formed": [p.well_formed for p in indep],
        "shared": [[p.text for p in g] for g in shared],
        "shared_well_formed": [[p.well_formed for p in g] for g in shared]}}))
    path = write_figure(tmp_path)
    assert path == tmp_path / "figure4.png" and path.read_bytes()[:4] == b"\x89PNG"


# The CI-sized run (`ftbench repro synthetic --ci`): the baseline, 1/8 bit and 1 bit, trained
# for real (nothing mocked). Bounds from `ftbench repro synthetic --ci --seed N` (one thread),
# seeds 0-4 for 1/8 bit and 0-2 for 1 bit (seed 0 rerun with this code: identical figures):
# - 1/8 bit, position distance shared / independent Z: 0.65, 0.80, 0.83, 0.64, 0.72
#   (mean 0.73, sd 0.08); exact agreement is not asserted: 8.0/3.8, 4.3/2.0, 1.9/1.8,
#   5.2/2.2, 6.4/1.9 % (shared/independent), which seed 2 does not separate.
# - 1 bit, same position shared / independent Z: 62.9/5.5, 42.3/3.8, 50.3/3.0 % (shared:
#   mean 51.8, sd 10.3); well formed 96.5, 92.2 and 25.8 %: seed 2's generation breaks at
#   1 bit, so well-formedness is asserted for 1/8 bit only (92.2-96.5 %, within 4.2 points
#   of the baseline on every seed).
ONE_EIGHTH_DIST_RATIO_MAX = 0.90  # the worst seed (0.83) plus about one sd
K1_SHARED_MIN = 0.25  # mean - 2.6 sd
K1_INDEP_MAX = 0.15  # near chance (1/57) next to the shared rate


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro-ci")
    out = root / "results" / "synthetic-ci"
    # Three arms, three processes: on two cores this trains in about half the time of one
    # after the other, with the same weights (the parallel test above).
    result = runner.invoke(repro_app, ["synthetic", "--ci", "--jobs", "3", "--out", str(out),
                                       "--models", str(root / "models")])
    assert result.exit_code == 0, result.output
    return root, out, result.output


@pytest.mark.science
@pytest.mark.slow
def test_ci_sized_run_shows_a_working_latent(ci_run):
    root, out, output = ci_run
    m = json.loads((out / MEASURES).read_text())
    assert m["size"] == "ci" and m["seeds"] == {"train": 0, "sampling": 0}
    assert m["versions"]["training_processes"] == 3
    rows = {a["arm"]: a for a in m["arms"]}
    assert set(rows) == {"baseline", "free-k0p125", "free-k1"}
    assert (root / "models" / "synthetic-ci" / "free-k0p125" / "config.json").is_file()
    eighth, one = rows["free-k0p125"], rows["free-k1"]
    # The hinge lets the KL reach kappa, not pass it; a collapsed latent stays near 0.
    assert 0.05 < eighth["kl_bits"] <= 0.125 + 0.01 and 0.5 < one["kl_bits"] <= 1.0 + 0.05
    # 1/8 bit: samples that share Z land their targets closer together.
    ratio = eighth["shared"]["pos_dist"] / eighth["indep"]["pos_dist"]
    assert ratio <= ONE_EIGHTH_DIST_RATIO_MAX, ratio
    # 1 bit: Z fixes the position (a latent that carries nothing gives shared = independent).
    shared, indep = one["shared"]["pos_agree"], one["indep"]["pos_agree"]
    assert shared >= K1_SHARED_MIN and indep <= K1_INDEP_MAX, (shared, indep)
    # At 1/8 bit the Free model is well formed about as often as the baseline.
    assert eighth["indep"]["well_formed"] >= rows["baseline"]["indep"]["well_formed"] - 0.10
    assert "same position, shared / indep. Z" in output and "wrote" in output


@pytest.mark.science
@pytest.mark.slow
def test_ci_run_goes_into_the_report(ci_run, tmp_path):
    from ftbench.report.compose import build_report, report_inputs
    from ftbench.report.document import Banner, Figure, Table
    from ftbench.report.render import to_html, to_markdown

    root, out, _ = ci_run
    data = load_repro(out)
    assert [r["arm"] for r in data["rows"]] == ["baseline", "free-k0p125", "free-k1"]
    assert data["figure"] == out / "figure4.png" and data["figure"].is_file()
    # A run that holds only the study, then two seeds of it side by side.
    results = tmp_path / "results"
    shutil.copytree(out, results / "synthetic-ci")
    shutil.copytree(out, results / "again" / "synthetic")  # a run's synthetic/ subfolder
    doc = build_report(report_inputs(["synthetic-ci"], results, root / "models"),
                       tmp_path / "figures")
    assert any(isinstance(b, Banner) and "CI-sized" in b.text for b in doc.blocks)
    table = next(b for b in doc.blocks if isinstance(b, Table))
    assert [r[0] for r in table.rows] == ["baseline", "free-k0p125", "free-k1",
                                          "real data (chance)"]
    assert table.rows[1][1] == "1/8"
    assert any(isinstance(b, Figure) for b in doc.blocks)
    md = to_markdown(doc, tmp_path / "report").read_text()
    assert "## Synthetic task (paper section 4.1)" in md and "figures/figure4.png" in md
    html = to_html(doc, tmp_path / "report").read_text()
    assert "data:image/png;base64," in html and "same position, shared / indep. Z" in html
    both = build_report(report_inputs(["synthetic-ci", "again"], results, root / "models"),
                        tmp_path / "figures2")
    seeds = next(b for b in both.blocks if isinstance(b, Table))
    assert seeds.header[:3] == ["arm", "\u03ba", "runs"] and seeds.rows[1][2] == "2"


def test_arms_trained_in_parallel_processes_equal_the_sequential_ones(tmp_path):
    # `--jobs`: each arm in its own process must export the weights that train_pair's
    # sequential loop does (the reference), or the calibrated bounds below would not hold.
    from safetensors.torch import load_file

    from ftbench.config.loader import load_pair_config
    from ftbench.repro.synthetic import default_config_path, train_in_parallel
    from ftbench.training.distributed import DistContext
    from ftbench.training.pair import train_pair

    def cfg(where):
        return load_pair_config(default_config_path(), overrides=[
            "latent.kappas_bits=[0.125,1.0]", "model.latent_bits=2", "run.steps=6",
            "run.eval_every=3", "run.checkpoint_every=3", "run.batch_size=8",
            "run.val_batches=1", "data.val_fraction=0.2",
            f"run.out_dir={where}"])

    logs = []
    sequential = train_pair(cfg(tmp_path / "seq"), log=logs.append, ctx=DistContext())
    parallel = train_in_parallel(cfg(tmp_path / "par"), jobs=3, log=logs.append)
    assert set(parallel) == set(sequential) == {"baseline", "free-k0p125", "free-k1"}
    for arm in sequential:
        a = load_file(tmp_path / "seq" / "synthetic" / arm / "model.safetensors")
        b = load_file(tmp_path / "par" / "synthetic" / arm / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), arm
        assert parallel[arm]["final_val"] == sequential[arm]["final_val"], arm
        meta = [json.loads((tmp_path / w / "synthetic" / arm / "config.json").read_text())
                for w in ("seq", "par")]
        assert meta[0]["fingerprint"] == meta[1]["fingerprint"]
    assert (tmp_path / "par" / "synthetic" / "pair.yaml").is_file()
    # A second call finds every arm exported and trains nothing.
    again = []
    train_in_parallel(cfg(tmp_path / "par"), jobs=3, log=again.append)
    assert not any("training" in line and "arm(s)" in line for line in again), again
