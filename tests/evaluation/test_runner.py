
import pytest
from lm_eval.api.model import LM
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.evaluation.results import ResultsError, read_result, write_result
from ftbench.evaluation.runner import (GEN_ESTIMATOR, LL_ESTIMATOR, EvalError, EvalSettings,
                                       evaluate_models, expand_suites, lm_eval_result)
from ftbench.evaluation.lm_eval_tasks import BuiltTasks, build_task_dir
from ftbench.training.distributed import DistContext
from ftbench.training.pair import run_dir, train_pair
from tests.training.helpers import tiny_pair_config

runner = CliRunner()


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cache")


def test_suites_expand_to_tasks():
    assert expand_suites("math,qa") == ["gsm8k", "mmlu", "commonsense_qa"]
    assert expand_suites("gsm8k_cot,math") == ["gsm8k_cot", "gsm8k"]
    with pytest.raises(EvalError, match="neither a suite"):
        expand_suites("maths")


def test_oracle_scores_one_on_every_lm_eval_task(tmp_path, data_dir, eval_cache):
    tasks = ["gsm8k", "gsm8k_cot", "commonsense_qa", "mmlu"]
    paths = evaluate_models([None], tasks, EvalSettings(limit=3), tmp_path, str(data_dir),
                            eval_cache, log=lambda m: None)
    for path in paths:
        result = read_result(path)
        top = {k: v for k, v in result["metrics"].items() if "/" not in k}
        assert top and all(v["value"] == 1.0 for v in top.values()), (path.name, top)
        assert result["limit"] == 3 and result["data"]["mode"] == "offline"
        assert all(set(items.values()) == {1.0} for items in result["per_item"].values())
    mmlu = read_result(tmp_path / "oracle" / "oracle" / "mmlu.json")
    assert mmlu["n_items"] == 57 * 3 and len(mmlu["per_item"]) == 57


def _anti_oracle(monkeypatch):
    """Every answer wrong, through the oracle's code paths: the gold choice gets the lowest
    log-likelihood, GSM8K gets the gold number plus one, code gets a body that fails every
    test. Scorers that read 1.0 whatever the response would still give it 1.0."""
    from ftbench.evaluation import evalplus_runner as ep
    from ftbench.evaluation import oracle

    class AntiOracleLM(oracle.OracleLM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(-1e9, False) if gold else (0.0, True)
                    for _, gold in super().loglikelihood(requests, disable_tqdm)]

        def generate_until(self, requests, disable_tqdm=False):
            out = []
            for req in requests:
                n = str(int(oracle.gold_number(req.doc).replace(",", "")) + 1)
                out.append(f"The answer is {n}.\n#### {n}")
            return out

    def wrong_samples(problems):
        return [{"task_id": p["task_id"], "index": 0,
                 "solution": p["prompt"] + "    raise RuntimeError('wrong on purpose')\n"}
                for p in problems]

    monkeypatch.setattr(oracle, "OracleLM", AntiOracleLM)
    monkeypatch.setattr(ep, "oracle_samples", wrong_samples)


def test_anti_oracle_scores_zero_on_every_lm_eval_task(tmp_path, data_dir, eval_cache,
                                                       monkeypatch):
    _anti_oracle(monkeypatch)
    tasks = ["gsm8k", "gsm8k_cot", "commonsense_qa", "mmlu"]
    paths = evaluate_models([None], tasks, EvalSettings(limit=3), tmp_path, str(data_dir),
                            eval_cache, log=lambda m: None)
    assert len(paths) == len(tasks)
    for path in paths:
        result = read_result(path)
        top = {k: v for k, v in result["metrics"].items() if "/" not in k}
        assert top and all(v["value"] == 0.0 for v in top.values()), (path.name, top)
        assert all(set(items.values()) == {0.0} for items in result["per_item"].values())


def test_anti_oracle_scores_zero_on_the_code_tasks(tmp_path, data_dir, eval_cache,
                                                   monkeypatch):
    _anti_oracle(monkeypatch)
    paths = evaluate_models([None], ["humanevalplus", "mbppplus"], EvalSettings(limit=3),
                            tmp_path, str(data_dir), eval_cache, log=lambda m: None)
    assert len(paths) == 2
    for path in paths:
        result = read_result(path)
        assert result["metrics"] and all(v["value"] == 0.0
                                         for v in result["metrics"].values()), result["metrics"]
        assert all(set(items.values()) == {0.0} for items in result["per_item"].values())


class ScriptedLM(LM):
    """Answers GSM8K items with fixed strings, to check extraction and scoring."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers

    def generate_until(self, requests, disable_tqdm=False):
        return [self.answers[r.doc_id] for r in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_gsm8k_extraction_matches_lm_eval_rules(data_dir, eval_cache):
    # test.jsonl items 0-3 have gold answers 18, 3, 70000, 540.
    answers = {0: "She makes 9 * 2 = 18 dollars.\n#### 18",   # strict and flexible
               1: "It takes 3 bolts in total",                # flexible only (last number)
               2: "#### 70,000",                               # commas are ignored
               3: "#### 54"}                                   # wrong
    task_dir = build_task_dir(eval_cache, data_dir)
    body = lm_eval_result(ScriptedLM(answers), "gsm8k", BuiltTasks(task_dir),
                          EvalSettings(limit=4))
    strict = body["per_item"]["exact_match,strict-match"]
    flexible = body["per_item"]["exact_match,flexible-extract"]
    assert strict == {"0": 1.0, "1": 0.0, "2": 1.0, "3": 0.0}
    assert flexible == {"0": 1.0, "1": 1.0, "2": 1.0, "3": 0.0}
    assert body["metrics"]["exact_match,strict-match"]["value"] == 0.5


def test_results_schema_round_trip_and_corruption(tmp_path):
    good = {"schema_version": 2, "task": "gsm8k", "suite": "math", "harness": "lm-eval",
            "metrics": {"exact_match,strict-match": {"value": 0.5, "stderr": 0.1}},
            "per_item": {}, "n_items": 2, "limit": None, "data": {}, "model": {},
            "protocol": {}, "seed": 0, "versions": {}, "git": {}, "wall_s": 1.0,
            "created": "2026-01-01T00:00:00Z"}
    write_result(tmp_path / "r.json", good)
    assert read_result(tmp_path / "r.json") == good
    with pytest.raises(ResultsError, match="missing field 'seed'"):
        write_result(tmp_path / "bad.json", {k: v for k, v in good.items() if k != "seed"})
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "torn.json").write_text('{"schema_version": 1, "task"')
    with pytest.raises(ResultsError, match="not a readable results file"):
        read_result(tmp_path / "torn.json")


@pytest.fixture(scope="module")
def toy_pair_dir(tmp_path_factory):
    cfg = tiny_pair_config(tmp_path_factory.mktemp("evalpair"), steps=4)
    train_pair(cfg, log=lambda m: None, ctx=DistContext())
    return run_dir(cfg)


def test_eval_cli_runs_a_pair_with_the_default_protocol_and_resumes(toy_pair_dir, tmp_path,
                                                                     data_dir):
    arms = [str(toy_pair_dir / "baseline"), str(toy_pair_dir / "free-k0p5")]
    args = ["eval", *arms, "--suite", "math,commonsense_qa", "--limit", "2", "--data-dir",
            str(data_dir), "--results", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "WARNING: --limit 2" in result.output
    run = toy_pair_dir.name
    for arm in ("baseline", "free-k0p5"):
        for task in ("gsm8k", "commonsense_qa"):
            r = read_result(tmp_path / run / arm / f"{task}.json")
            assert r["model"]["arm"] == arm and r["limit"] == 2 and r["n_items"] == 2
            assert r["schema_version"] == 3 and r["fewshot_seed"] == 0
            assert 0 < r["model_s"] < r["wall_s"]  # the model's share of the time
    # Free arms: K = 8 draws under both protocols (log-likelihood), n = 5 samples (generation).
    csqa = read_result(tmp_path / run / "free-k0p5" / "commonsense_qa.json")
    assert csqa["protocol"] == {"arch": "free", "z_protocol": "posterior", "z_draws": 8,
                                "z_seed": 0, "protocols": ["posterior", "prior"],
                                "estimator": LL_ESTIMATOR}
    prior = csqa["protocols"]["prior"]
    assert set(prior["per_item"]["acc,none"]) == set(csqa["per_item"]["acc,none"])
    spread = csqa["spread"]
    assert spread["kind"] == "z_draws" and spread["n"] == 8 and "unavailable" not in spread
    for p in ("posterior", "prior"):
        assert len(spread["protocols"][p]["values"]) == 8
        assert all(v in (0.0, 0.5, 1.0) for v in spread["protocols"][p]["values"])
    gsm = read_result(tmp_path / run / "free-k0p5" / "gsm8k.json")
    assert gsm["protocol"] == {"arch": "free", "z_protocol": "posterior", "z_samples": 5,
                               "z_seed": 0, "token_sampling": "greedy",
                               "estimator": GEN_ESTIMATOR}
    g = gsm["spread"]["metrics"]["exact_match,strict-match"]
    assert gsm["spread"]["kind"] == "z_samples" and len(g["values"]) == 5
    assert abs(g["mean"] - gsm["metrics"]["exact_match,strict-match"]["value"]) < 1e-12
    assert "exact_match_pass@5,strict-match" in gsm["metrics"]
    assert gsm["generation"]["new_tokens"] > 0
    # The tiny models' context is 64 tokens: GSM8K's max_gen_toks (256) is capped at 32 and
    # its 5-shot prompts lose their first tokens; the results say so.
    limits = gsm["generation"]["limits"]
    assert {k: limits[k] for k in ("max_seq_len", "cap", "requests", "max_gen_toks_requested",
                                   "capped", "context_truncated")} == {
        "max_seq_len": 64, "cap": 32, "requests": 2, "max_gen_toks_requested": [256],
        "capped": 2, "context_truncated": 2}
    assert 0 < limits["context_tokens_dropped_max"] <= limits["context_tokens_dropped"]
    base = read_result(tmp_path / run / "baseline" / "gsm8k.json")
    assert base["protocol"] == {"arch": "baseline", "n_samples": 1, "token_sampling": "greedy"}
    assert "spread" not in base
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("done already") == 4


class PromptRecorder(ScriptedLM):
    def __init__(self):
        super().__init__({})
        self.prompts = []

    def generate_until(self, requests, disable_tqdm=False):
        self.prompts += [r.args[0] for r in requests]
        return ["#### 0" for _ in requests]


def test_replicas_with_other_seeds_see_the_same_few_shot_prompts(data_dir, eval_cache):
    task_dir = build_task_dir(eval_cache, data_dir)
    shared = BuiltTasks(task_dir)  # one evaluation builds its tasks once for every arm

    def prompts(tasks, seed, fewshot):
        lm = PromptRecorder()
        lm_eval_result(lm, "gsm8k", tasks, EvalSettings(limit=2, seed=seed,
                                                         fewshot_seed=fewshot))
        return lm.prompts

    first = prompts(shared, 0, 0)
    assert prompts(shared, 3, 0) == first  # --seed redraws Z only
    assert prompts(shared, 0, 1) != first  # --fewshot-seed changes the examples
    # A task used before, with another few-shot seed, gives the prompts of a fresh one.
    assert prompts(shared, 0, 0) == first == prompts(BuiltTasks(task_dir), 0, 0)


def test_eval_bad_input_is_clear_and_keeps_results(toy_pair_dir, tmp_path, data_dir):
    result = runner.invoke(app, ["eval", str(tmp_path / "nowhere"), "--suite", "math"])
    assert result.exit_code == 2 and "nowhere does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["eval", str(tmp_path / "empty"), "--suite", "math"])
    assert result.exit_code == 2 and "is neither an exported ftbench model" in result.output
    result = runner.invoke(app, ["eval", "--model", "oracle", "--suite", "physics"])
    assert result.exit_code == 2 and "neither a suite" in result.output
    torn = tmp_path / toy_pair_dir.name / "baseline" / "gsm8k.json"
    torn.parent.mkdir(parents=True)
    torn.write_text("{not json")
    result = runner.invoke(app, ["eval", str(toy_pair_dir / "baseline"), "--suite", "gsm8k",
                                 "--limit", "1", "--data-dir", str(data_dir), "--results",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "not a readable results file" in result.output
    assert torn.read_text() == "{not json"


def test_missing_mirror_files_and_mismatched_tokenizer(toy_pair_dir, tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    result = runner.invoke(app, ["eval", "--model", "oracle", "--suite", "gsm8k",
                                 "--data-dir", str(empty), "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "lacks gsm8k/train.jsonl" in result.output
    import shutil

    from ftbench.data.tokenizer import train_bpe
    arm = tmp_path / "arm"
    shutil.copytree(toy_pair_dir / "baseline", arm)
    train_bpe(["some text " * 50, "other words " * 50], vocab_size=300).save(arm)
    result = runner.invoke(app, ["eval", str(arm), "--suite", "gsm8k", "--limit", "1",
                                 "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "tokenizer" in result.output


def test_relative_results_folder_works(toy_pair_dir, tmp_path, data_dir, monkeypatch):
    # The sandbox changes directory: relative output paths must still land in place.
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "--model", "oracle", "--suite", "humanevalplus",
                                 "--limit", "2", "--data-dir", str(data_dir),
                                 "--results", "rel-results"])
    assert result.exit_code == 0, result.output
    r = read_result(tmp_path / "rel-results" / "oracle" / "oracle" / "humanevalplus.json")
    assert r["metrics"]["pass@1,plus"]["value"] == 1.0


def test_eval_output_is_one_bar_and_one_line_per_task(toy_pair_dir, tmp_path, data_dir,
                                                      eval_cache, capfd, caplog, monkeypatch):
    import logging
    import re

    import datasets.config
    import datasets.utils.logging as ds_logging
    import lm_eval.api.task
    import tqdm

    def run(verbose: bool, name: str) -> tuple[list[str], str]:
        # A fresh Arrow cache: `datasets` prints its split lines only when it builds one.
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / f"hf-{name}"))
        lines: list[str] = []
        evaluate_models([toy_pair_dir / "free-k0p5"], ["commonsense_qa"],
                        EvalSettings(limit=2, z_draws=2), tmp_path / name, str(data_dir),
                        eval_cache, log=lines.append, verbose=verbose)
        captured = capfd.readouterr()
        # Log records reach pytest's handler or stderr, depending on lm-eval's logging set-up.
        printed = captured.out + captured.err + caplog.text
        caplog.clear()
        return lines, printed

    import lm_eval.evaluator

    # Outside any git checkout, as a user's run folder may be: lm-eval's `git describe`
    # would print git's "fatal: not a git repository" into the output.
    monkeypatch.chdir(tmp_path)
    git_hash_before = lm_eval.evaluator.get_git_commit_hash
    capfd.readouterr()
    bars_before = ds_logging.is_progress_bar_enabled()
    level_before = logging.getLogger("lm_eval").level
    lines, printed = run(verbose=False, name="quiet")
    label = f"{toy_pair_dir.name}/free-k0p5/commonsense_qa"
    assert len(lines) == 2 and lines[0].startswith("WARNING: --limit 2")
    assert re.fullmatch(rf"{re.escape(label)}: acc,none \d\.\d{{4}} ± \d\.\d{{4}} "
                        rf"\(n=2, \d+\.\ds\) -> .*commonsense_qa\.json", lines[1]), lines[1]
    # One bar, the task's own (the second protocol is replayed from stored scores: no bar).
    assert printed.count(" 0%|") == 1 and f"{label} loglikelihood" in printed, printed
    assert "Generating" not in printed and "Overwriting default num_fewshot" not in printed
    assert "fatal" not in printed, printed
    # Everything is put back for the rest of the process.
    assert lm_eval.api.task.tqdm is tqdm.tqdm
    assert lm_eval.evaluator.get_git_commit_hash is git_hash_before
    assert ds_logging.is_progress_bar_enabled() == bars_before
    assert logging.getLogger("lm_eval").level == level_before

    lines, printed = run(verbose=True, name="verbose")
    assert lines[1] == f"{label}: evaluating" and len(lines) == 3
    assert "Generating validation split" in printed
    assert "Overwriting default num_fewshot of commonsense_qa" in printed


def test_summary_line_shows_the_headline_metric_with_its_standard_error(tmp_path):
    from ftbench.evaluation.runner import summary_line

    body = {"n_items": 164, "metrics": {
        "pass@1,base": {"value": 0.25, "stderr": 0.03},
        "pass@1,plus": {"value": 0.125, "stderr": 0.025}}}
    assert summary_line("toy/baseline/humanevalplus", body, 75.4, tmp_path / "h.json") == (
        f"toy/baseline/humanevalplus: pass@1,plus 0.1250 ± 0.0250 (n=164, 1m15s) -> "
        f"{tmp_path / 'h.json'}")
    mmlu = {"n_items": 57, "metrics": {"mmlu_anatomy/acc,none": {"value": 1.0, "stderr": None},
                                      "acc,none": {"value": 0.5, "stderr": None}}}
    assert summary_line("r/a/mmlu", mmlu, 3.25, tmp_path / "m.json").startswith(
        "r/a/mmlu: acc,none 0.5000 (n=57, 3.2s)")


def test_code_prompts_shortened_to_fit_are_counted(toy_pair_dir):
    from ftbench.evaluation.lm_eval_adapter import FtbenchLM
    from ftbench.evaluation.runner import code_prompt_limits

    lm = FtbenchLM(path=str(toy_pair_dir / "baseline"))  # context 64
    problems = [{"prompt": "K>__"}, {"prompt": "\n\nM>__MM!" * 10}]
    # EvalPlus's prompt is prompt.strip() + "\n": the second one is then n tokens long.
    n = len(lm.tok_encode(problems[1]["prompt"].strip() + "\n"))
    assert n > 64
    limits = code_prompt_limits(lm, problems, 512)
    assert limits == {"max_seq_len": 64, "cap": 32, "requests": 2,
                      "max_gen_toks_requested": [512], "capped": 2, "context_truncated": 1,
                      "context_tokens_dropped": n - 32, "context_tokens_dropped_max": n - 32}
    assert code_prompt_limits(lm, problems[:1], 16)["capped"] == 0


def test_few_shot_prompts_do_not_depend_on_the_number_of_ranks(data_dir, eval_cache):
    import lm_eval.tasks

    from ftbench.evaluation.runner import rank_independent_prompts

    tm = lm_eval.tasks.TaskManager(include_path=str(build_task_dir(eval_cache, data_dir)),
                                   include_defaults=False)
    task = lm_eval.tasks.get_task_dict(["gsm8k"], tm)["gsm8k"]

    def prompts(rank: int, world_size: int) -> dict[int, str]:
        task.set_fewshot_seed(seed=0)  # as lm-eval does before building a task's requests
        task.build_all_requests(limit=6, rank=rank, world_size=world_size)
        return {i.doc_id: i.args[0] for i in task.instances}

    single = prompts(0, 1)
    assert sorted(single) == list(range(6))
    # lm-eval alone: each rank draws the examples of its own documents only, so they differ.
    plain = {**prompts(0, 2), **prompts(1, 2)}
    assert sorted(plain) == sorted(single) and plain != single
    with rank_independent_prompts():
        shares = [prompts(r, 2) for r in (0, 1)]
        assert prompts(0, 1) == single
    assert sorted(shares[0]) == [0, 2, 4] and sorted(shares[1]) == [1, 3, 5]
    assert {**shares[0], **shares[1]} == single
    assert prompts(1, 2) == {d: plain[d] for d in (1, 3, 5)}  # restored on exit


def test_mmlu_contexts_cut_to_fit_are_counted_as_by_hand(toy_pair_dir, data_dir, eval_cache):
    # The test pair's context is 64 tokens; MMLU's 5-shot prompts are far longer. The
    # count is checked against lm-eval's own encoding of the logged requests and the rule
    # "an item keeps its last max_seq_len + 1 - (longest choice) tokens".
    from lm_eval.api.model import TemplateLM

    from ftbench.evaluation.lm_eval_adapter import FtbenchLM
    from ftbench.evaluation.runner import lm_eval_replicated

    lm = FtbenchLM(path=str(toy_pair_dir / "baseline"))
    tasks = BuiltTasks(build_task_dir(eval_cache, data_dir))
    s = EvalSettings(limit=1)
    body = lm_eval_replicated(lm, "mmlu", tasks, s, "baseline")
    got = body["loglikelihood"]["limits"]
    logged = lm_eval_result(lm, "mmlu", tasks, s, keep_samples=True)["_samples"]
    requests = contexts = cut = cut_requests = dropped = 0
    worst = 0
    for samples in logged.values():
        for sample in samples:
            pairs = [TemplateLM._encode_pair(lm, c, t) for c, t in sample["arguments"]]
            longest = max(len(t) for _, t in pairs)
            lost = max(0, len(pairs[0][0]) - (64 + 1 - longest))
            contexts += 1
            cut += lost > 0
            requests += len(pairs)
            cut_requests += len(pairs) * (lost > 0)
            dropped += lost * len(pairs)
            worst = max(worst, lost)
    assert contexts == 57 and requests == 4 * 57  # one item per subject, four choices
    assert got == {"max_seq_len": 64, "requests": requests, "requests_truncated": cut_requests,
                   "contexts": contexts, "contexts_truncated": cut,
                   "context_tokens_dropped": dropped, "context_tokens_dropped_max": worst}
    assert cut == 57  # every 5-shot prompt exceeds 64 tokens


class AnyAnswerLM(PromptRecorder):
    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-1.0, False) for _ in requests]


def test_prompt_hashes_show_which_tasks_the_fewshot_seed_changes(data_dir, eval_cache):
    # lm-eval's MMLU takes its first five dev examples ("first_n" ignores the seed),
    # gsm8k_cot has fixed examples and CommonsenseQA none; gsm8k samples five from train.
    tasks = BuiltTasks(build_task_dir(eval_cache, data_dir))

    def run(task, fewshot):
        lm = AnyAnswerLM()
        body = lm_eval_result(lm, task, tasks, EvalSettings(limit=2, fewshot_seed=fewshot))
        return body["prompts_sha256"], lm.prompts

    for task in ("mmlu", "gsm8k_cot", "commonsense_qa"):
        assert run(task, 0)[0] == run(task, 1)[0], task
    (h0, p0), (h1, p1) = run("gsm8k", 0), run("gsm8k", 1)
    assert p0 != p1 and h0 != h1  # other examples, another hash
    assert run("gsm8k", 0)[0] == h0  # and the hash is reproducible
