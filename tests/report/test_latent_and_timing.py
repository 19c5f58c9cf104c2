"""The report's new readings, from fixed results and metrics files: whether a latent is
used (MI beside KL, items differing from the baseline), measured time ratios judged
against the analytic ones with their noise and load, the training CE as a running mean,
a zero-baseline relative gain explained, and a readable appendix."""

import json

import pytest

from ftbench.evaluation.results import write_result
from ftbench.report.compose import build_report, report_inputs
from ftbench.report.document import Banner, Figure, Paragraph, Table
from ftbench.report.overhead import (RATIO_TOLERANCE, judge, measured_ratios,
                                     training_timing)
from ftbench.report.render import to_markdown
from tests.report.test_compose import _outcomes, _write_model
from tests.report.test_tables import _result


def _timed_metrics(path, tok_s, cpu, load, free, steps=40, jitter=0.01, mi=None):
    """metrics.jsonl as training/loop.py writes it, with per-step times and load."""
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            wobble = 1 + jitter * (-1) ** step
            rec = {"step": step, "loss": 6.0, "ce": 6.0, "tokens_per_s": tok_s * wobble,
                   "cpu_s_per_token": cpu * wobble, "load_avg": load}
            if free:
                rec.update(kl_bits=0.21, kappa_bits=0.5, frac_above_kappa=0.0)
                if step % 10 == 0 and mi is not None:
                    rec.update(val_kl_bits=0.21, val_ce_prior=6.1, val_elbo=6.3,
                               val_mi_bits=mi, val_mi_content_bits=mi, val_logit_std=0.0)
            f.write(json.dumps(rec) + "\n")


@pytest.fixture
def roots(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    for arm, arch, rate in (("baseline", "baseline", 0.30), ("free-k0p5", "free", 0.50)):
        write_result(results / "r" / arm / "gsm8k.json",
                     _result("gsm8k", "math", "exact_match,strict-match", _outcomes(rate),
                             arch=arch))
        write_result(results / "r" / arm / "mmlu.json",
                     _result("mmlu", "qa", "acc,none", _outcomes(0.25), arch=arch))
        _write_model(models, "r", arm, arch, 1000.0, 2**30, 0)
    return results, models


def _blocks(doc, kind):
    return [b for b in doc.blocks if isinstance(b, kind)]


def _table(doc, first):
    return next(t for t in _blocks(doc, Table) if t.header[0] == first)


def test_unused_latent_is_flagged_whatever_its_kl(roots, tmp_path):
    results, models = roots
    _timed_metrics(models / "r" / "baseline" / "metrics.jsonl", 1000, 1e-3, 0.5, False)
    _timed_metrics(models / "r" / "free-k0p5" / "metrics.jsonl", 900, 1.1e-3, 0.5, True,
                   mi=0.0004)
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    table = next(
        t for t in _blocks(doc, Table) if "MI bits/token" in t.header)
    row = dict(zip(table.header, table.rows[0]))
    assert row["KL bits/token"] == "0.2100 (κ 0.5)"
    assert row["MI bits/token"] == "0.0004" and row["logit sd"] == "0.0000"
    # gsm8k: 30 % vs 50 % on the same 100 items differ on 20; mmlu: identical outcomes.
    assert row["items differing from baseline"] == "20 / 200 (10.0 %)"
    assert row["latent"] == "UNUSED"
    assert any(p.text == "Items differing from the baseline, per benchmark: free-k0p5: "
               "gsm8k 20/100, mmlu 0/100." for p in _blocks(doc, Paragraph))
    top = doc.blocks.index(next(b for b in doc.blocks if not isinstance(b, Banner)))
    assert any("LATENT UNUSED: free-k0p5" in b.text and "0.0004" in b.text
               for b in doc.blocks[:top])  # before any table: read first
    assert any("upper bound" in p.text for p in _blocks(doc, Paragraph))  # the approximation
    md = to_markdown(doc, tmp_path / "out").read_text()
    assert "LATENT UNUSED" in md and "MI beyond position" in md


def test_used_latent_is_not_flagged_and_old_arms_read_latent_info_json(roots, tmp_path):
    results, models = roots
    _timed_metrics(models / "r" / "baseline" / "metrics.jsonl", 1000, 1e-3, 0.5, False)
    _timed_metrics(models / "r" / "free-k0p5" / "metrics.jsonl", 900, 1.1e-3, 0.5, True,
                   mi=0.3)
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    table = next(t for t in _blocks(doc, Table) if "MI bits/token" in t.header)
    assert table.rows[0][-1] == "used"
    assert not any("LATENT UNUSED" in b.text for b in _blocks(doc, Banner))
    # An arm trained before MI was logged: the value measured afterwards is used.
    _timed_metrics(models / "r" / "free-k0p5" / "metrics.jsonl", 900, 1.1e-3, 0.5, True)
    (models / "r" / "free-k0p5" / "latent_info.json").write_text(json.dumps(
        {"kl_bits": 0.2294, "mi_bits": 0.0011, "mi_content_bits": 0.0011, "logit_std": 0.0233,
         "n_tokens": 8192, "unused": True, "source": "validation split, 8192 tokens"}))
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    table = next(t for t in _blocks(doc, Table) if "MI bits/token" in t.header)
    assert table.rows[0][2] == "0.0011" and table.rows[0][-1] == "UNUSED"
    assert any("latent_info.json" in p.text for p in _blocks(doc, Paragraph))


def test_busy_machine_ratio_is_flagged_with_its_load(roots, tmp_path):
    results, models = roots
    # A toy demo on a busy machine: Free "faster" (0.594x) while the analytic ratio is 1.156.
    _timed_metrics(models / "r" / "baseline" / "metrics.jsonl", 1000, 1e-3, 6.4, False,
                   jitter=0.02)
    _timed_metrics(models / "r" / "free-k0p5" / "metrics.jsonl", 1000 / 0.594, 1.1e-3, 5.1,
                   True, jitter=0.02, mi=0.3)
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    measured = _table(doc, "measured")
    rows = {r[0]: (i, r) for i, r in enumerate(measured.rows)}
    i, wall = rows["training time / token (measured)"]
    assert wall[1].startswith("0.594x ± ")
    assert wall[3] == "6.4 / 5.1"
    assert wall[4].startswith("unreliable: -") and "beyond its noise" in wall[4]
    assert wall[4].endswith("load 6.4")
    assert (i, 1) in measured.muted
    # CPU time, less sensitive to other jobs, agrees here: shown as a finding.
    i, cpu = rows["training CPU time / token (measured)"]
    assert cpu[1].startswith("1.100x") and (i, 1) not in measured.muted
    warning = [b.text for b in _blocks(doc, Banner) if b.text.startswith("UNRELIABLE")]
    assert len(warning) == 1 and warning[0].startswith(
        "UNRELIABLE OVERHEAD: free-k0p5: training time / token (measured) 0.594x against")
    assert "(machine load up to 6.4)" in warning[0] and "CPU time" not in warning[0]


def test_quiet_machine_ratio_agrees_with_analytic(roots, tmp_path):
    results, models = roots
    _timed_metrics(models / "r" / "baseline" / "metrics.jsonl", 1000, 1e-3, 0.3, False)
    base = training_timing([json.loads(l) for l in
                            (models / "r" / "baseline" / "metrics.jsonl").read_text().splitlines()])
    assert base.wall_s_per_token == pytest.approx(1e-3, rel=0.02)
    assert base.wall_spread is not None and base.wall_spread < 0.05
    assert base.load_avg == pytest.approx(0.3) and base.intervals == 10
    _timed_metrics(models / "r" / "free-k0p5" / "metrics.jsonl", 1000 / 1.15, 1.15e-3, 0.3,
                   True, mi=0.3)
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    measured = _table(doc, "measured")
    wall = next(r for r in measured.rows if r[0] == "training time / token (measured)")
    assert wall[4] == "agrees with analytic" and not measured.muted & {(0, 1)}


def test_judge_rules():
    assert judge(1.05, 0.01, 1.0, [4.0]) is None  # within the tolerance
    assert judge(1.0 + RATIO_TOLERANCE + 0.01, None, 1.0, []).endswith(
        "no spread recorded, load not recorded")
    assert "beyond its noise (±4 %)" in judge(0.6, 0.02, 1.0, [6.0, 2.0])
    assert judge(0.6, 0.02, 1.0, [6.0, 2.0]).endswith("load 6.0")
    assert judge(1.2, 0.15, 1.0, [1.0]).startswith("unreliable: noise ±30 % exceeds ±10 %")


def test_generation_spread_comes_from_the_tasks(roots, tmp_path):
    from ftbench.report.collect import collect
    from ftbench.report.overhead import arm_cost

    results, models = roots
    for arm, secs in (("baseline", (1.0, 2.0)), ("free-k0p5", (1.1, 2.1))):
        for task, s in zip(("gsm8k", "mmlu"), secs):
            r = json.loads((results / "r" / arm / f"{task}.json").read_text())
            r["generation"] = {"new_tokens": 1000, "seconds": 9.9, "device": "cpu",
                               "load_avg": 2.5,
                               "workload": {"rows": 16, "batch_size": 8, "prompt_tokens": 64,
                                            "new_tokens": 64, "generated": 1000, "seconds": s,
                                            "load_avg": 2.5 if arm == "baseline" else 3.0}}
            write_result(results / "r" / arm / f"{task}.json", r)
    arms = {a.arm: a for a in collect(results, ["r"])}
    b, f = (arm_cost(models, "r", n, arms[n]) for n in ("baseline", "free-k0p5"))
    gen = measured_ratios(b, f, [], [], arms["baseline"], arms["free-k0p5"])[-1]
    assert gen.ratio == pytest.approx(3.2 / 3.0)
    assert gen.spread == pytest.approx(abs(1.1 - 1.05) / (2 ** 0.5) / 1.075, rel=1e-6)
    assert gen.load_base == 2.5 and gen.load_free == 3.0 and gen.reliable


def test_final_training_ce_is_a_running_mean(roots, tmp_path):
    results, models = roots
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    table = next(t for t in _blocks(doc, Table) if "training CE: running mean ± sd" in t.header)
    # ce = 8 - 0.1 step over 20 steps: the last 5 steps are 6.4 ... 6.0.
    assert table.rows[0][2] == "6.2000 ± 0.1581 (last 5 steps)"
    assert table.rows[0][3] == "ce 6.0000"  # likelihood bounds only, no KL or MI


def test_zero_baseline_explains_instead_of_an_empty_gain_plot(roots, tmp_path):
    results, models = roots
    for arm, arch, rate in (("baseline", "baseline", 0.0), ("free-k0p5", "free", 0.0)):
        write_result(results / "r" / arm / "gsm8k.json",
                     _result("gsm8k", "math", "exact_match,strict-match", _outcomes(rate),
                             arch=arch))
        write_result(results / "r" / arm / "mmlu.json",
                     _result("mmlu", "qa", "acc,none", _outcomes(rate), arch=arch))
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    assert not any(f.png.name == "relative_gains.png" for f in _blocks(doc, Figure))
    assert any(p.text.startswith("No relative-gain plot: the baseline scored 0 on every "
                                 "benchmark (gsm8k, mmlu)") for p in _blocks(doc, Paragraph))
    # One benchmark with a zero baseline: the plot stays, its caption says why n/a.
    write_result(results / "r" / "baseline" / "mmlu.json",
                 _result("mmlu", "qa", "acc,none", _outcomes(0.25)))
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    fig = next(f for f in _blocks(doc, Figure) if f.png.name == "relative_gains.png")
    assert "n/a (gsm8k): the baseline scored 0" in fig.caption


def test_appendix_is_tables_without_empty_fields(roots, tmp_path):
    results, models = roots
    (models / "r" / "pair.yaml").write_text(
        "size: toy\nmodel:\n  d_model: 64\n  tie_embeddings: true\ndata:\n  sources:\n"
        "  - kind: jsonl\n    path: a.jsonl.gz\n    weight: 0.5\n    hf_id: ''\n"
        "    max_docs: 0\n  - kind: stdlib\n    path: ''\n    weight: 0.5\n    hf_id: ''\n"
        "    max_docs: 8\n  tokenizer:\n    kind: bpe\n    vocab_size: 4096\n"
        "  seq_len: 128\nlatent:\n  kappas_bits:\n  - 0.5\n  - 1\n")
    doc = build_report(report_inputs(["r"], results, models), tmp_path / "figs")
    settings = _table(doc, "section")
    assert settings.rows == [["(top level)", "size = toy"],
                             ["model", "d_model = 64; tie_embeddings = yes"],
                             ["data", "seq_len = 128"],
                             ["data.tokenizer", "kind = bpe; vocab_size = 4096"],
                             ["latent", "kappas_bits = 0.5, 1"]]
    sources = _table(doc, "kind")
    assert sources.header == ["kind", "path", "weight", "max docs"]  # hf_id: empty everywhere
    assert sources.rows == [["jsonl", "a.jsonl.gz", "0.5", "0"], ["stdlib", "", "0.5", "8"]]
    files = _table(doc, "results file")
    assert files.rows[0][:3] == ["r/baseline", "gsm8k", "100"]
    md = to_markdown(doc, tmp_path / "out").read_text()
    appendix = md[md.index("## Appendix"):]
    assert "hf_id" not in appendix and "hf\\_id" not in appendix and "{\"" not in appendix
    assert "d\\_model = 64" in appendix


def test_verdicts():
    from ftbench.report.latent import LatentRow, verdict

    def row(mi, content):
        return LatentRow("a", 0.2, 0.5, mi, content, 0.1, "x", None, None, {})
    assert verdict(row(None, None)) == "MI not measured"
    assert verdict(row(0.001, 0.001)) == "UNUSED"
    assert verdict(row(0.3, 0.0)) == "position only"  # varies with t, not with the text
    assert verdict(row(0.3, 0.2)) == verdict(row(0.3, None)) == "used"
