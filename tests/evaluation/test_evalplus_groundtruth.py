"""The shared EvalPlus ground-truth cache: per task, keyed by the dataset's content hash,
written atomically, computed once."""

import pickle

import pytest

from ftbench.evaluation import evalplus_groundtruth as gt
from ftbench.evaluation import evalplus_runner as ep

IDS = ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


@pytest.fixture(scope="module")
def problems(tmp_path_factory, data_dir):
    path = ep.problems_file("humanevalplus", data_dir, tmp_path_factory.mktemp("data"))
    return {p["task_id"]: p for p in ep.load_problems(path, len(IDS))}


def test_ground_truth_is_computed_once_per_task_and_then_read(tmp_path, problems,
                                                              monkeypatch):
    folder = tmp_path / "humaneval-somehash"
    first = gt.load_groundtruth(problems, IDS[:2], folder, [])
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "HumanEval_0.pkl",
                                                         "HumanEval_1.pkl"]
    p0 = problems["HumanEval/0"]
    assert len(first["HumanEval/0"]["plus"]) == len(p0["plus_input"])
    assert len(first["HumanEval/0"]["base_time"]) == len(p0["base_input"])
    scope = {}
    exec(p0["prompt"] + p0["canonical_solution"], scope)
    assert first["HumanEval/0"]["base"] == [scope[p0["entry_point"]](*i) for i in p0["base_input"]]

    def must_not_compute(problem, not_none):
        raise AssertionError(f"recomputed {problem['task_id']}")

    monkeypatch.setattr(gt, "compute_task", must_not_compute)
    assert gt.load_groundtruth(problems, IDS[:2], folder, []) == first
    # A subset asks only for what it needs; a new task is the only one computed.
    monkeypatch.undo()
    logs = []
    third = gt.load_groundtruth(problems, IDS, folder, [], log=logs.append)
    assert third["HumanEval/0"] == first["HumanEval/0"]
    assert len(logs) == 1 and "for 1 tasks" in logs[0]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_task_computed_by_another_scorer_while_waiting_is_not_recomputed(tmp_path,
                                                                           problems):
    folder = tmp_path / "humaneval-somehash"
    folder.mkdir()
    # What a concurrent scorer holding the lock wrote before this one got it.
    done = gt.compute_task(problems["HumanEval/0"], [])
    gt._write_atomically(folder / "HumanEval_0.pkl", done)
    logs = []
    got = gt._compute_missing(problems, IDS[:2], folder, [], logs.append)
    assert got["HumanEval/0"] == done
    assert logs == [f"computing EvalPlus ground truth for 1 tasks into {folder}"]


def test_an_unreadable_cache_file_is_recomputed_with_a_warning(tmp_path, problems, capsys):
    folder = tmp_path / "humaneval-somehash"
    folder.mkdir()
    (folder / "HumanEval_0.pkl").write_bytes(b"not a pickle")
    got = gt.load_groundtruth(problems, IDS[:1], folder, [])
    assert "ignoring unreadable EvalPlus ground truth" in capsys.readouterr().err
    with open(folder / "HumanEval_0.pkl", "rb") as f:
        assert pickle.load(f) == got["HumanEval/0"]


def test_the_cache_folder_is_shared_and_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv(gt.CACHE_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gt.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv(gt.CACHE_ENV)
    assert gt.cache_root() == tmp_path / "xdg" / "ftbench" / "evalplus"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gt.cache_root() == tmp_path / "home" / ".cache" / "ftbench" / "evalplus"
    a = gt.dataset_folder(tmp_path, "mbpp", "ee43ec")
    assert a != gt.dataset_folder(tmp_path, "mbpp", "0123ab") and "ee43ec" in a.name


def test_an_unwritable_cache_says_which_variable_to_set(tmp_path, problems):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=gt.CACHE_ENV):
        gt.load_groundtruth(problems, IDS[:1], blocker / "sub", [])
