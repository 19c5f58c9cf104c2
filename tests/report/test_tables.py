import pytest

from ftbench.evaluation.results import write_result
from ftbench.report.collect import ReportError, banners, collect
from ftbench.report.tables import cell_text, main_table


def _result(task, suite, metric, outcomes, *, limit=None, z="posterior", arch="baseline"):
    value = sum(outcomes.values()) / len(outcomes)
    # As the runner records them: K draws for log-likelihood tasks, n samples otherwise.
    count = "z_draws" if task in ("mmlu", "commonsense_qa") else "z_samples"
    protocol = {"arch": arch} if arch == "baseline" else {"arch": "free", "z_protocol": z,
                                                          count: 1, "z_seed": 0}
    return {"schema_version": 2, "task": task, "suite": suite, "harness": "test",
            "metrics": {metric: {"value": value, "stderr": 0.0}},
            "per_item": {metric: outcomes}, "n_items": len(outcomes), "limit": limit,
            "data": {"mode": "offline", "files": {"f": "abc"}}, "model": {}, "protocol": protocol,
            "seed": 0, "versions": {}, "git": {}, "wall_s": 1.0, "created": "2026-01-01T00:00:00Z"}


@pytest.fixture
def results_root(tmp_path):
    base = {str(i): float(i % 10 < 3) for i in range(200)}      # 30 %
    free = {str(i): float(i % 10 < 5) for i in range(200)}      # 50 %
    for arm, outcomes, arch in (("baseline", base, "baseline"), ("free-k0p5", free, "free")):
        write_result(tmp_path / "run" / arm / "gsm8k.json",
                     _result("gsm8k", "math", "exact_match,strict-match", outcomes, arch=arch))
        write_result(tmp_path / "run" / arm / "commonsense_qa.json",
                     _result("commonsense_qa", "qa", "acc,none", base, arch=arch))
    return tmp_path


def test_table_holds_the_expected_numbers(results_root):
    arms = collect(results_root, ["run"])
    tasks, labels, cells = main_table(arms, n_boot=2000)
    assert tasks == ["gsm8k", "commonsense_qa"] and labels == ["baseline", "free-k0p5"]
    gsm = cells[("gsm8k", "free-k0p5")]
    assert abs(gsm.score - 0.5) < 1e-12 and abs(gsm.comparison.diff - 0.2) < 1e-12
    assert abs(gsm.comparison.rel_gain - 2 / 3) < 1e-12 and gsm.comparison.significant
    same = cells[("commonsense_qa", "free-k0p5")].comparison
    assert same.diff == 0 and not same.significant
    assert cell_text(gsm).startswith("50.0 (+20.0 pts, +66.7 %; 95 % CI [+")
    assert cell_text(cells[("commonsense_qa", "free-k0p5")]).endswith("(n.s.)")
    assert cell_text(cells[("gsm8k", "baseline")]) == "30.0"
    assert banners(arms) == []


def test_banners_and_bad_input(results_root, tmp_path):
    write_result(results_root / "run" / "free-k0p5" / "mmlu.json",
                 _result("mmlu", "qa", "acc,none", {"1": 1.0}, limit=5, arch="free", z="prior"))
    text = " ".join(banners(collect(results_root, ["run"])))
    assert "SMOKE TEST" in text and "MIXED Z PROTOCOLS" in text
    with pytest.raises(ReportError, match="no results for run 'nope'"):
        collect(results_root, ["nope"])
    (tmp_path / "empty" / "arm").mkdir(parents=True)
    with pytest.raises(ReportError, match="holds no results"):
        collect(tmp_path, ["empty"])
    only_free = tmp_path / "solo" / "free-k0p5"
    only_free.mkdir(parents=True)
    (only_free / "gsm8k.json").write_text((results_root / "run" / "free-k0p5" /
                                           "gsm8k.json").read_text())
    with pytest.raises(ReportError, match="no baseline results"):
        main_table(collect(tmp_path, ["solo"]))


def test_generation_capped_by_the_context_is_flagged_and_listed(results_root):
    from ftbench.evaluation.lm_eval_adapter import GenerationLimits
    from ftbench.report.appendix import results_blocks

    limits = GenerationLimits(max_seq_len=128)
    limits.add(256, 64, 0)    # new tokens capped at max_seq_len // 2
    limits.add(256, 64, 30)   # and the prompt's first 30 tokens dropped
    limits.add(32, 32, 0)
    r = _result("gsm8k", "math", "exact_match,strict-match", {"1": 1.0})
    r["generation"] = {"new_tokens": 10, "seconds": 1.0, "limits": limits.record()}
    write_result(results_root / "run" / "baseline" / "gsm8k.json", r)
    arms = collect(results_root, ["run"])
    text = " ".join(banners(arms))
    assert "GENERATION LIMITED BY THE CONTEXT" in text
    assert "baseline/gsm8k: 2 of 3 capped at 64 new tokens, 1 prompts cut (up to 30" in text
    table = results_blocks(arms)[0]
    row = next(row for row in table.rows if row[0].endswith("/baseline") and row[1] == "gsm8k")
    assert "capped 2/3, prompts cut 1" in row[table.header.index("generation limits")]


def test_log_likelihood_contexts_cut_are_flagged_and_shown_in_the_table(results_root):
    from ftbench.evaluation.lm_eval_adapter import LoglikelihoodLimits
    from ftbench.report.compose import _main_section
    from ftbench.report.document import Document, Table
    from ftbench.report.frame import frame_from_arms

    limits = LoglikelihoodLimits(max_seq_len=64)
    for i, lost in enumerate((0, 5, 12)):  # three items of four choices each
        for _ in range(4):
            limits.add((i,), lost)
    for arm in ("baseline", "free-k0p5"):
        path = results_root / "run" / arm / "commonsense_qa.json"
        r = __import__("json").loads(path.read_text())
        r["loglikelihood"] = {"limits": limits.record()}
        write_result(path, r)
    arms = collect(results_root, ["run"])
    text = " ".join(banners(arms))
    assert "LOG-LIKELIHOOD CONTEXTS CUT" in text
    assert ("baseline/commonsense_qa: 2 of 3 contexts cut to 64 tokens (8 of 12 requests; "
            "up to 12 tokens, 68 in all)") in text
    doc = Document("t")
    _main_section(doc, arms, results_root / "fig", frame_from_arms(arms))
    table = next(b for b in doc.blocks if isinstance(b, Table))
    labels = [row[1] for row in table.rows]
    assert "commonsense_qa (acc,none); 2 of 3 contexts cut to 64 tokens" in labels
    assert "gsm8k (exact_match,strict-match)" in labels
