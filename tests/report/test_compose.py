"""The whole report from a fixed set of results and model files: the expected numbers, in
both formats, and clear errors for bad input."""

import dataclasses
import json
from html.parser import HTMLParser

import pytest

from ftbench.evaluation.results import write_result
from ftbench.model.accounting import model_cost
from ftbench.model.presets import get_preset
from ftbench.report.collect import ReportError
from ftbench.report.compose import build_report, report_inputs
from ftbench.report.document import Banner, Figure, Table
from ftbench.report.render import to_html, to_markdown
from tests.report.test_tables import _result


def _outcomes(rate, n=100, shift=0):
    return {str(i): float((i + shift) % 100 < rate * 100) for i in range(n)}


def _write_model(root, run, arm, arch, tok_s, mem, seed):
    cfg = get_preset("toy")
    d = root / run / arm
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "model": dataclasses.asdict(cfg), "arch": arch, "arm": arm, "seed": seed, "steps": 20,
        "kappa_bits": 0.5 if arch == "free" else None,
        "summary": {"tokens_per_s": tok_s, "peak_memory_bytes": mem, "device": "cpu",
                    "world_size": 1},
        "pair_config": {"size": "toy", "data": {"seq_len": 128}}}))
    with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, 21):
            rec = {"step": step, "loss": 8 - step * 0.1, "ce": 8 - step * 0.1}
            if arch == "free":
                rec.update(kl_bits=0.02 * step, kappa_bits=0.5, frac_above_kappa=0.0)
            if step % 10 == 0:
                rec["val_ce" if arch == "baseline" else "val_ce_prior"] = 7 - step * 0.05
            f.write(json.dumps(rec) + "\n")


@pytest.fixture
def roots(tmp_path):
    results, models = tmp_path / "results", tmp_path / "models"
    rates = {"s0": (0.30, 0.50), "s1": (0.40, 0.50)}
    for seed, (run, (b, f)) in enumerate(rates.items()):
        for arm, rate, arch in (("baseline", b, "baseline"), ("free-k0p5", f, "free")):
            write_result(results / run / arm / "gsm8k.json",
                         _result("gsm8k", "math", "exact_match,strict-match", _outcomes(rate),
                                 arch=arch))
            code = _result("humanevalplus", "code", "pass@1,plus", _outcomes(0.1), arch=arch)
            code["generation"] = {"new_tokens": 1000, "seconds": 2.0 if arch == "baseline"
                                  else 2.5, "device": "cpu"}
            write_result(results / run / arm / "humanevalplus.json", code)
            _write_model(models, run, arm, arch, 1000.0 if arch == "baseline" else 800.0,
                         2**30 if arch == "baseline" else 2**30 + 2**28, seed)
    replica = _result("gsm8k", "math", "exact_match,strict-match", _outcomes(0.6), arch="free")
    replica["seed"] = 1
    write_result(results / "s0" / "free-k0p5" / "seed1" / "gsm8k.json", replica)
    return results, models


def _tables(doc):
    return [b for b in doc.blocks if isinstance(b, Table)]


def test_report_holds_the_expected_numbers(roots, tmp_path):
    results, models = roots
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    main, replicas, overhead = _tables(doc)[:3]
    gsm = next(r for r in main.rows if r[1].startswith("gsm8k"))
    assert gsm[2] == "30.0" and gsm[3].startswith("50.0 (+20.0 pts, +66.7 %")
    assert replicas.rows == [["s0/free-k0p5", "gsm8k", "0, 1", "55.0 ± 7.1", "50.0 – 60.0"]]
    rows = {r[0]: r[1] for r in overhead.rows}
    assert rows["training time / token (measured)"].startswith("1.250x (1,000 tok/s → 800")
    assert rows["generation time / token (measured)"].startswith("1.250x (500 tok/s → 400")
    assert rows["training peak memory (measured)"].startswith("1.250x (1,024 MiB → 1,280 MiB")
    toy = get_preset("toy")
    b, f = model_cost(toy, "baseline", 128), model_cost(toy, "free", 128)
    assert rows["parameters, total"].startswith(f"{f.params_total / b.params_total:.3f}x")
    assert rows["parameters without W_post"].startswith(
        f"{(f.params_total - f.params_post_sampler) / b.params_total:.3f}x")
    assert [r[0] for r in overhead.rows][-1] == "generation time / token (measured)"
    assert all(isinstance(fig, Figure) and fig.png.is_file()
               for fig in doc.blocks if isinstance(fig, Figure))
    assert len([b for b in doc.blocks if isinstance(b, Figure)]) == 4


def test_seeds_are_aggregated_across_runs(roots, tmp_path):
    results, models = roots
    doc = build_report(report_inputs(["s0", "s1"], results, models), tmp_path / "figs")
    seeds = next(t for t in _tables(doc) if t.header[0] == "benchmark")
    gsm = next(r for r in seeds.rows if r[0] == "gsm8k")
    # baseline 30 / 40 %, Free 50 / 50 %: relative gains +66.7 % and +25.0 %.
    assert gsm[1:] == ["35.0 ± 7.1 (2)", "50.0 ± 0.0 (2)", "45.8 ± 29.5 %"]


def test_both_formats_render_the_same_document(roots, tmp_path):
    results, models = roots
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "out" / "figures")
    md = to_markdown(doc, tmp_path / "out").read_text()
    html = to_html(doc, tmp_path / "out").read_text()
    for text in ("gsm8k", "+66.7 %", "1.250x", "Overhead of the Free Transformer"):
        assert text in md and text in html
    assert md.count("](figures/") == 4 and html.count('src="data:image/png;base64,') == 4

    class Tags(HTMLParser):
        depth = 0

        def handle_starttag(self, tag, attrs):
            if tag not in ("img", "meta", "br", "hr", "link", "col", "wbr", "input"):
                self.depth += 1

        def handle_endtag(self, tag):
            self.depth -= 1
    p = Tags()
    p.feed(html)
    assert p.depth == 0


def test_collapse_and_limit_banners(roots, tmp_path):
    results, models = roots
    path = models / "s0" / "free-k0p5" / "metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[-1]["kl_bits"] = 0.001
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    banners = [b.text for b in doc.blocks if isinstance(b, Banner)]
    assert any("LATENT COLLAPSE: free-k0p5" in b for b in banners)


def test_bad_input_gives_clear_messages(roots, tmp_path):
    results, models = roots
    with pytest.raises(ReportError, match="no results for run 'nope'"):
        build_report(report_inputs(["nope"], results, models), tmp_path / "f")
    (results / "s0" / "baseline" / "gsm8k.json").write_text("{torn")
    with pytest.raises(ReportError, match="not a readable results file"):
        build_report(report_inputs(["s0"], results, models), tmp_path / "f")
    # Different task versions (other items) for the two arms: no misleading paired table.
    write_result(results / "s0" / "baseline" / "gsm8k.json",
                 _result("gsm8k", "math", "exact_match,strict-match", _outcomes(0.3, n=50)))
    with pytest.raises(ValueError, match="scored on different items"):
        build_report(report_inputs(["s0"], results, models), tmp_path / "f")
    import shutil

    shutil.rmtree(results / "s0" / "baseline")
    with pytest.raises(ReportError, match="no baseline results"):
        build_report(report_inputs(["s0"], results, models), tmp_path / "f")
