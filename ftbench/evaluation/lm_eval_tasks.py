"""lm-eval task definitions for GSM8K, MMLU and CommonsenseQA, online or offline.

Each task is a small YAML that includes lm-eval's built-in definition; offline it points
the dataset at the mirror. They are written into a folder per (mode, mirror) and loaded
with `TaskManager(include_path=..., include_defaults=False)` (no 15-35 s index of every
built-in task).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftbench.data.errors import DataError
from ftbench.resources import tasks_dir



@dataclass(frozen=True)
class LmEvalTask:
    name: str
    suite: str
    builtin: str | None  # path under lm_eval/tasks of the included definition
    num_fewshot: int | None  # None: the task's default
    files: tuple[str, ...]  # mirror files the offline version reads
    generative: bool = False  # generate_until (n samples) rather than log-likelihoods (K draws)


LM_EVAL_TASKS = {
    "gsm8k": LmEvalTask("gsm8k", "math", "gsm8k/gsm8k.yaml", None,
                        ("gsm8k/train.jsonl", "gsm8k/test.jsonl"), generative=True),
    "gsm8k_cot": LmEvalTask("gsm8k_cot", "math", "gsm8k/gsm8k-cot.yaml", None,
                            ("gsm8k/test.jsonl",), generative=True),
    "mmlu": LmEvalTask("mmlu", "qa", None, 5, ("mmlu/data",)),
    "commonsense_qa": LmEvalTask("commonsense_qa", "qa", "commonsense_qa/default.yaml", 0,
                                 ("commonsenseqa/train_rand_split.jsonl",
                                  "commonsenseqa/dev_rand_split.jsonl")),
}


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def mirror_file(data_dir: Path, rel: str) -> Path:
    p = data_dir / rel
    if not p.exists():
        raise DataError(f"the data mirror {data_dir} lacks {rel}; it must be laid out as in "
                        "docs/data-mirror.md")
    return p


def convert_mmlu(data_dir: Path, out: Path) -> Path:
    """The mirror's CSVs (no header; question, A-D, answer letter) in the hub's layout."""
    src = mirror_file(data_dir, "mmlu/data")
    done = out / "README.md"
    if done.is_file():
        return out
    splits = {"dev": "dev", "val": "validation", "test": "test"}
    subjects = sorted(p.name[:-len("_test.csv")] for p in (src / "test").glob("*_test.csv"))
    if len(subjects) != 57:
        raise DataError(f"{src}/test has {len(subjects)} subjects, expected 57")
    configs = []
    for subject in subjects:
        (out / subject).mkdir(parents=True, exist_ok=True)
        files = []
        for local, hub in splits.items():
            rows = []
            with open(src / local / f"{subject}_{local}.csv", newline="", encoding="utf-8") as f:
                for q, a, b, c, d, ans in csv.reader(f):
                    rows.append({"question": q, "subject": subject, "choices": [a, b, c, d],
                                 "answer": "ABCD".index(ans.strip())})
            (out / subject / f"{hub}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            files.append({"split": hub, "path": f"{subject}/{hub}.jsonl"})
        configs.append({"config_name": subject, "data_files": files})
    tmp = out / "README.tmp"
    tmp.write_text("---\n" + _yaml({"configs": configs}) + "---\n")
    tmp.replace(done)  # last: marks the conversion complete
    return out


def build_task_dir(cache: Path, data_dir: Path | None) -> Path:
    """Write every task's YAML (and MMLU's copy) for this mode; return the folder."""
    key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    out = cache / f"tasks-{'offline' if data_dir else 'online'}-{key}"
    if (out / ".complete").is_file():
        return out
    builtin = lm_eval_tasks_dir()
    out.mkdir(parents=True, exist_ok=True)
    for task in ("gsm8k", "gsm8k_cot"):
        spec = LM_EVAL_TASKS[task]
        doc = {"include": str(builtin / spec.builtin), "task": task, "tag": []}
        if data_dir:
            files = {"train": str(mirror_file(data_dir, "gsm8k/train.jsonl")),
                     "test": str(mirror_file(data_dir, "gsm8k/test.jsonl"))}
            doc.update(dataset_path="json", dataset_name=None,
                       dataset_kwargs={"data_files": files})
        (out / f"{task}.yaml").write_text(_yaml(doc))
    shutil.copy(tasks_dir() / "lm_eval" / "csqa_utils.py", out / "csqa_utils.py")
    csqa = {"include": str(builtin / LM_EVAL_TASKS["commonsense_qa"].builtin),
            "task": "commonsense_qa", "tag": []}
    if data_dir:
        csqa.update(dataset_path="json", dataset_name=None, training_split=None,
                    dataset_kwargs={"data_files": {
                        "train": str(mirror_file(data_dir, "commonsenseqa/train_rand_split.jsonl")),
                        "validation": str(mirror_file(data_dir,
                                                      "commonsenseqa/dev_rand_split.jsonl"))}})
        text = _yaml(csqa) + "process_docs: !function csqa_utils.process_docs\n"
    else:
        text = _yaml(csqa)
    (out / "commonsense_qa.yaml").write_text(text)
    # MMLU: a copy of lm-eval's folder, its template pointed at the converted mirror.
    mmlu_dst = out / "mmlu"
    shutil.rmtree(mmlu_dst, ignore_errors=True)
    shutil.copytree(builtin / "mmlu" / "default", mmlu_dst,
                    ignore=shutil.ignore_patterns("__pycache__"))
    if data_dir:
        hub_layout = convert_mmlu(data_dir, cache / f"mmlu-hub-layout-{key}")
        template = mmlu_dst / "_default_template_yaml"
        text = template.read_text().replace("dataset_path: cais/mmlu",
                                            f"dataset_path: {hub_layout}")
        template.write_text(text)
    (out / ".complete").write_text("")
    return out


def data_fingerprint(data_dir: Path | None, task: str) -> dict:
    """sha256 of each mirror file the task reads (offline); the hub id otherwise."""
    spec = LM_EVAL_TASKS[task]
    if data_dir is None:
        return {"mode": "online", "files": {}}
    hashes = {}
    for rel in spec.files:
        p = mirror_file(data_dir, rel)
        paths = sorted(p.rglob("*.csv")) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in paths:
            h.update(f.read_bytes())
        hashes[rel] = h.hexdigest()
    return {"mode": "offline", "files": hashes}


def offline_env() -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"


class BuiltTasks:
    """lm-eval's task objects for one evaluation, built once from a task folder and reused
    by every arm, Z replica and protocol.

    Building a task is mostly loading its dataset (MMLU is 57 of them): in the toy demo that
    was 44 of the 98 seconds of evaluation, paid again on every lm-eval call. Reuse is exact:
    simple_evaluate sets num_fewshot and re-seeds the few-shot sampler on every call, and
    build_all_requests remakes the requests (parity: tests/evaluation/test_runner.py).
    """

    def __init__(self, task_dir: Path):
        self.dir = task_dir
        self._manager = None

    def manager(self):
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            class ReusingTaskManager(TaskManager):
                def __init__(self, include_path: str):
                    super().__init__(include_path=include_path, include_defaults=False)
                    self._built: dict = {}

                def load(self, tasks, *args, **kwargs):
                    key = (repr(tasks), repr(args), repr(sorted(kwargs.items())))
                    if key not in self._built:
                        self._built[key] = super().load(tasks, *args, **kwargs)
                    return self._built[key]

            self._manager = ReusingTaskManager(str(self.dir))
        return self._manager
