import json

import pytest

from ftbench.data.errors import DataError
from ftbench.evaluation import evalplus_runner as ep
from ftbench.evaluation.evalplus_runner import download_release, problems_file, release_url
from ftbench.evaluation.results import read_result
from ftbench.evaluation.runner import EvalSettings, evaluate_models


@pytest.fixture(scope="module")
def ep_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("evalplus-cache")


def test_pass_at_k_is_the_unbiased_estimator():
    assert ep.pass_at_k(10, 0, 1) == 0.0 and ep.pass_at_k(10, 10, 5) == 1.0
    assert abs(ep.pass_at_k(10, 3, 1) - 0.3) < 1e-12
    # 1 - C(7,2)/C(10,2) = 1 - 21/45
    assert abs(ep.pass_at_k(10, 3, 2) - (1 - 21 / 45)) < 1e-12


@pytest.mark.slow
def test_oracle_scores_one_on_all_of_humaneval_plus_and_mbpp_plus(tmp_path, data_dir, ep_cache):
    paths = evaluate_models([None], ["humanevalplus", "mbppplus"],
                            EvalSettings(sandbox_parallel=2), tmp_path, str(data_dir), ep_cache,
                            log=lambda m: None)
    counts = {"humanevalplus": 164, "mbppplus": 378}
    for path in paths:
        r = read_result(path)
        assert r["n_items"] == counts[r["task"]] and r["limit"] is None
        for key in ("pass@1,base", "pass@1,plus"):
            assert r["metrics"][key]["value"] == 1.0, (r["task"], key)
            assert len(r["per_item"][key]) == counts[r["task"]]
        samples = [json.loads(l) for l in (path.parent / r["samples_file"]).read_text().splitlines()]
        assert len(samples) == counts[r["task"]]
        # What was rescored, and why, travels into the results.
        sandbox = json.loads(path.with_suffix(".sandbox.json").read_text())
        assert r["sandbox"] == sandbox["sandbox"]
        assert r["sandbox"]["rescored_total"] == sum("rescored" in x for x in sandbox["results"])


HOSTILE = {
    "infinite loop": "    while True:\n        pass\n",
    "memory bomb": "    x = [0] * (10 ** 11)\n    return False\n",
    "fork bomb": "    import os\n    while True:\n        os.fork()\n",
    "delete files": "    import os, shutil\n    for p in os.listdir('.'):\n        os.remove(p)\n"
                    "    shutil.rmtree('{victim}')\n    return False\n",
    "kill parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                   "    os.kill(os.getppid(), 9)\n    return False\n",
    "system call": "    import os\n    os.system('touch {victim}/pwned')\n    return False\n",
}


def test_hostile_samples_fail_and_the_evaluation_goes_on(tmp_path, data_dir, ep_cache):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    problems_path = ep.problems_file("humanevalplus", data_dir, ep_cache)
    problem = ep.load_problems(problems_path, 1)[0]  # HumanEval/0, has_close_elements
    rows = [{"task_id": problem["task_id"], "index": i,
             "solution": problem["prompt"] + body.format(victim=victim)}
            for i, body in enumerate(HOSTILE.values())]
    rows.append({"task_id": problem["task_id"], "index": len(rows),
                 "solution": problem["prompt"] + problem["canonical_solution"]})
    samples = tmp_path / "samples.jsonl"
    ep.write_samples(samples, rows)
    scored = ep.score_samples("humanevalplus", problems_path, samples, tmp_path / "out.json",
                              ep_cache, parallel=2, timeout_retries=0)
    statuses = {r["index"]: (r["base_status"], r["plus_status"]) for r in scored["results"]}
    for i, name in enumerate(HOSTILE):
        assert statuses[i][0] != "pass", name
    assert statuses[len(HOSTILE)] == ("pass", "pass")  # the honest sample after them passes
    assert (victim / "keep.txt").read_text() == "precious"
    assert not (victim / "pwned").exists()


def test_online_release_download_gives_the_mirror_file(tmp_path, data_dir):
    # Online, the problems come from EvalPlus's release; a file:// URL of the mirror's copy
    # exercises the same download path without network access.
    url = (data_dir / "humanevalplus" / "HumanEvalPlus.jsonl.gz").resolve().as_uri()
    online = download_release(url, tmp_path / "online" / "HumanEvalPlus-v0.1.10.jsonl")
    offline = problems_file("humanevalplus", data_dir, tmp_path / "cache")
    assert online.read_bytes() == offline.read_bytes()
    assert release_url("mbppplus").endswith("/v0.2.0/MbppPlus.jsonl.gz")
    with pytest.raises(DataError, match="could not download .* --data-dir"):
        download_release("http://127.0.0.1:9/HumanEvalPlus.jsonl.gz", tmp_path / "x.jsonl",
                         timeout=2)
    assert not (tmp_path / "x.jsonl").exists()
