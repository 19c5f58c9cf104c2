"""The whole report from a fixed set of results and model files: the expected numbers, in
both formats, and clear errors for bad input."""

import dataclasses
import json
from html.parser import HTMLParser

import pytest

from ftbench.evaluation.results import write_result
from ftbench.model.accounting import model_cost
from ftbench.model.presets import get_preset
from ftbench.evaluation.replicas import spread_stats
from ftbench.report.collect import ReportError
from ftbench.report.compose import build_report, report_inputs
from ftbench.report.document import Banner, Figure, Paragraph, Table
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
            # The task's own timing (the Free arm generated 5x the rows) and the fixed
            # decode workload timed on both arms with one shape.
            code["generation"] = {"new_tokens": 1000 if arch == "baseline" else 5000,
                                  "seconds": 2.0 if arch == "baseline" else 6.0, "device": "cpu",
                                  "workload": {"rows": 16, "batch_size": 8,
                                               "prompt_tokens": 64, "new_tokens": 64,
                                               "generated": 1024, "load_avg": 1.5,
                                               "seconds": 2.0 if arch == "baseline" else 2.5}}
            write_result(results / run / arm / "humanevalplus.json", code)
            _write_model(models, run, arm, arch, 1000.0 if arch == "baseline" else 800.0,
                         2**30 if arch == "baseline" else 2**30 + 2**28, seed)
    replica = _result("gsm8k", "math", "exact_match,strict-match", _outcomes(0.6), arch="free")
    replica["seed"] = 1
    write_result(results / "s0" / "free-k0p5" / "seed1" / "gsm8k.json", replica)
    return results, models


def _tables(doc):
    return [b for b in doc.blocks if isinstance(b, Table)]


def _table(doc, first_header):
    return next(t for t in _tables(doc) if t.header[0] == first_header)


def test_report_holds_the_expected_numbers(roots, tmp_path):
    results, models = roots
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    main, replicas = _tables(doc)[0], _table(doc, "arm")
    overhead = _table(doc, "quantity")
    gsm = next(r for r in main.rows if r[1].startswith("gsm8k"))
    assert gsm[2] == "30.0" and gsm[3].startswith("50.0 (+20.0 pts, +66.7 %")
    replicas = next(t for t in _tables(doc) if t.header[:3] == ["arm", "benchmark", "seeds"])
    assert replicas.rows == [["s0/free-k0p5", "gsm8k", "0, 1", "55.0 ± 7.1", "50.0 – 60.0"]]
    rows = {r[0]: r[1] for r in overhead.rows}
    assert rows["training peak memory (measured)"].startswith("1.250x (1,024 MiB → 1,280 MiB")
    # Measured times are apart, against their analytic counterparts. These metrics have no
    # per-step times, so training falls back on the export's summary (no spread).
    measured = _table(doc, "measured")
    timing = {r[0]: r for r in measured.rows}
    train = timing["training time / token (measured)"]
    toy = get_preset("toy")
    analytic = (model_cost(toy, "free", 128).train_flops_per_token
                / model_cost(toy, "baseline", 128).train_flops_per_token)
    assert train[1] == "1.250x" and train[2] == f"{analytic:.3f}x (training FLOPs)"
    assert train[4] == (f"unreliable: {100 * (1.25 / analytic - 1):+.0f} % off analytic, no "
                        "spread recorded, load not recorded")
    # Like for like: the fixed workload's 2.5 s against 2.0 s, not the tasks' 6/5000 against
    # 2/1000 (0.6x: five times the rows in fuller batches).
    gen = timing["generation time / token (measured, fixed workload)"]
    assert gen[1] == "1.250x" and gen[2] == "1.000x (decode FLOPs)"
    assert gen[3] == "1.5 / 1.5"
    assert gen[4] == "unreliable: +25 % off analytic, no spread recorded, load 1.5"
    row = measured.rows.index(gen)
    assert {(row, j) for j in range(5)} <= measured.muted
    toy = get_preset("toy")
    b, f = model_cost(toy, "baseline", 128), model_cost(toy, "free", 128)
    assert rows["parameters, total"].startswith(f"{f.params_total / b.params_total:.3f}x")
    assert rows["parameters without W_post"].startswith(
        f"{(f.params_total - f.params_post_sampler) / b.params_total:.3f}x")
    assert [r[0] for r in overhead.rows][-1] == "training peak memory (measured)"
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


def _free_ll_result(per_item_post, per_item_prior, draws_post, draws_prior):
    r = _result("commonsense_qa", "qa", "acc,none", per_item_post, arch="free")
    r["protocol"].update(z_draws=8, protocols=["posterior", "prior"])
    prior_value = sum(per_item_prior.values()) / len(per_item_prior)
    r["protocols"] = {"prior": {"metrics": {"acc,none": {"value": prior_value, "stderr": 0.0}},
                                "per_item": {"acc,none": per_item_prior}, "n_items": 100}}
    r["spread"] = {"kind": "z_draws", "n": 8, "metric": "acc,none", "protocols": {
        p: spread_stats(v) for p, v in (("posterior", draws_post), ("prior", draws_prior))}}
    return r


def test_protocols_side_by_side_with_the_spread_and_a_disagreement_flag(roots, tmp_path):
    results, models = roots
    write_result(results / "s0" / "baseline" / "commonsense_qa.json",
                 _result("commonsense_qa", "qa", "acc,none", _outcomes(0.30)))
    # Posterior 40 %, prior 70 % on the same items: far apart, item by item.
    write_result(results / "s0" / "free-k0p5" / "commonsense_qa.json",
                 _free_ll_result(_outcomes(0.40), _outcomes(0.70), [0.38, 0.42] * 4,
                                 [0.7] * 8))
    gsm = json.loads((results / "s0" / "free-k0p5" / "gsm8k.json").read_text())
    gsm["protocol"].update(z_samples=5)
    gsm["spread"] = {"kind": "z_samples", "n": 5, "metrics": {
        "exact_match,strict-match": spread_stats([0.48, 0.52, 0.5, 0.46, 0.54])}}
    write_result(results / "s0" / "free-k0p5" / "gsm8k.json", gsm)
    code = json.loads((results / "s0" / "free-k0p5" / "humanevalplus.json").read_text())
    code["protocol"].update(z_samples=5)
    write_result(results / "s0" / "free-k0p5" / "humanevalplus.json", code)
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    table = next(t for t in _tables(doc) if t.header[:2] == ["arm", "benchmark"]
                 and "spread over Z" in t.header)
    rows = {r[1]: r for r in table.rows}
    csqa = rows["commonsense_qa"]
    assert csqa[2].startswith("posterior: 40.0 (+10.0 pts")
    assert csqa[3] == "one draw: 40.0 ± 2.1 sd over K=8 [38.0, 42.0]"
    assert csqa[4].startswith("prior: 70.0 (+40.0 pts") and csqa[5].endswith("DISAGREE")
    assert csqa[5].startswith("+30.0 pts [")
    assert rows["gsm8k"][3] == "50.0 ± 1.4 SE over n=5 samples (sd 3.2)"
    assert rows["gsm8k"][4] == "—"
    banners = [b.text for b in doc.blocks if isinstance(b, Banner)]
    assert any(b.startswith("Z PROTOCOLS DISAGREE: free-k0p5 on commonsense_qa") for b in banners)
    assert not any("MIXED Z PROTOCOLS" in b for b in banners)
    # The same protocols, item for item: no flag.
    write_result(results / "s0" / "free-k0p5" / "commonsense_qa.json",
                 _free_ll_result(_outcomes(0.40), _outcomes(0.40, shift=1), [0.4] * 8,
                                 [0.4] * 8))
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    assert not any(isinstance(b, Banner) and "DISAGREE" in b.text for b in doc.blocks)


def test_overhead_shows_the_measured_evaluation_time_per_arm_and_task(roots, tmp_path):
    results, models = roots
    for arm, wall, model_s, protocol in (("baseline", 10.0, 2.0, None),
                                         ("free-k0p5", 42.0, 9.0, 5)):
        r = json.loads((results / "s0" / arm / "gsm8k.json").read_text())
        r["wall_s"], r["model_s"] = wall, model_s
        if protocol:
            r["protocol"].update(z_samples=protocol)
        write_result(results / "s0" / arm / "gsm8k.json", r)
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    table = _table(doc, "evaluation time")
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["gsm8k"] == ["10 s (model 2.0 s); 1 pass",
                             "42 s (model 9.0 s); n=5; 4.50x (model)"]
    # Without the model's share, the ratio falls back on wall times.
    assert rows["humanevalplus"] == ["1 s; 1 pass", "1 s; n=1; 1.00x (wall)"]
    assert rows["all benchmarks"] == ["11 s (model 2.0 s)", "43 s (model 9.0 s)"]


def test_generation_without_a_fixed_workload_says_the_workload_differs(roots, tmp_path):
    results, models = roots
    for arm in ("baseline", "free-k0p5"):
        path = results / "s0" / arm / "humanevalplus.json"
        r = json.loads(path.read_text())
        del r["generation"]["workload"]
        write_result(path, r)
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    gen = next(r for r in _table(doc, "measured").rows
               if r[0] == "generation time / token (measured)")
    # Tasks' own timings: (6 / 5000) / (2 / 1000) = 0.6x, read as a workload difference,
    # never as the machine's load.
    assert gen[1] == "0.600x" and gen[4].startswith("workload differs")
    assert "load" not in gen[4].split("workload differs")[1].split(";")[0]
    banners = [b.text for b in doc.blocks if isinstance(b, Banner)]
    assert any(t.startswith("GENERATION TIMES NOT COMPARABLE") for t in banners)
    assert not any("UNRELIABLE OVERHEAD" in t and "generation" in t for t in banners)


def test_fewshot_replicas_say_whether_their_prompts_equal_the_main_ones(roots, tmp_path):
    results, models = roots
    main_path = results / "s0" / "free-k0p5" / "gsm8k.json"
    main = json.loads(main_path.read_text())
    main["prompts_sha256"] = "aaa"
    write_result(main_path, main)
    for seed, fewshot, h in ((0, 1, "aaa"), (0, 2, "bbb"), (0, 3, None)):
        rep = _result("gsm8k", "math", "exact_match,strict-match", _outcomes(0.5), arch="free")
        rep.update(seed=seed, fewshot_seed=fewshot)
        if h:
            rep["prompts_sha256"] = h
        write_result(results / "s0" / "free-k0p5" / f"seed{seed}-fewshot{fewshot}" / "gsm8k.json",
                     rep)
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    table = next(t for t in _tables(doc) if t.header[:3] == ["arm", "benchmark", "seeds"])
    seeds = table.rows[0][2]
    assert "0 (few-shot 1: same prompts as seed 0)" in seeds
    assert "0 (few-shot 2: other prompts)" in seeds
    assert "0 (few-shot 3; prompts not recorded)" in seeds


def test_captions_name_the_protocol_and_the_item_counts(roots, tmp_path):
    results, models = roots
    for arm in ("baseline", "free-k0p5"):
        path = results / "s0" / arm / "gsm8k.json"
        r = json.loads(path.read_text())
        if arm == "free-k0p5":
            r["protocol"].update(z_protocol="posterior", z_samples=5, token_sampling="greedy")
        r["limit"] = 100
        write_result(path, r)
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figs")
    caption = next(p.text for p in doc.blocks if isinstance(p, Paragraph)
                   and p.text.startswith("Scores in %"))
    assert "n=5 Z samples per prompt, greedy tokens" in caption
    assert "items: humanevalplus 100, gsm8k 100" in caption
    assert "no correction for the number of benchmarks" in caption
    fig = next(f for f in doc.blocks if isinstance(f, Figure) and "relative" in f.alt)
    assert "items: humanevalplus 100, gsm8k 100" in fig.caption
