"""ftbench generates code from the very prompts, with the budget and stop strings, that
EvalPlus 0.3.1's own codegen gives a direct-completion model."""

import pytest
import torch

from ftbench.evaluation import evalplus_runner as ep
from ftbench.evaluation.lm_eval_adapter import FtbenchLM
from ftbench.model import build_model


class RecordingTokenizer:
    """Characters as tokens; remembers every text it encodes."""

    def __init__(self, vocab: int):
        self.vocab, self.texts = vocab, []
        self.eot_id, self.pad_id = vocab - 1, vocab - 2

    def encode(self, text: str) -> list[int]:
        self.texts.append(text)
        return [ord(ch) % (self.vocab - 2) for ch in text]

    def decode(self, ids) -> str:
        return "".join(chr(32 + int(t) % 90) for t in ids)


def _evalplus_prompts(dataset: str, problems_path, tmp_path) -> dict[str, str]:
    """The prompt EvalPlus's codegen hands the model for each task."""
    import evalplus.data.humaneval as he
    import evalplus.data.mbpp as mb
    from evalplus.codegen import codegen
    from evalplus.provider.base import DecoderBase

    class Recorder(DecoderBase):
        def __init__(self):
            super().__init__("recorder", temperature=0.0)
            self.prompts = []

        def codegen(self, prompt, do_sample=True, num_samples=200):
            self.prompts.append(prompt)
            return [""]

        def is_direct_completion(self):
            return True

    module, name = (he, "HUMANEVAL_OVERRIDE_PATH") if dataset == "humaneval" else \
        (mb, "MBPP_OVERRIDE_PATH")
    old = getattr(module, name)
    setattr(module, name, str(problems_path))
    try:
        model = Recorder()
        codegen(str(tmp_path / "samples.jsonl"), model, dataset, greedy=True, n_samples=1)
    finally:
        setattr(module, name, old)
    assert model.max_new_tokens == ep.EVALPLUS_MAX_NEW_TOKENS
    assert model.eos + __import__("evalplus.provider.utility", fromlist=["x"]) \
        .extra_eos_for_direct_completion(dataset) == ep.stop_strings(dataset)
    return model.prompts


@pytest.mark.parametrize("task,count", [("humanevalplus", 164), ("mbppplus", 378)])
def test_prompts_equal_evalplus_codegen_for_every_task(task, count, data_dir, tmp_path,
                                                       toy_cfg):
    dataset = ep.DATASETS[task][0]
    path = ep.problems_file(task, data_dir, tmp_path / "cache")
    problems = ep.load_problems(path, None)
    theirs = _evalplus_prompts(dataset, path, tmp_path)
    tok = RecordingTokenizer(toy_cfg.vocab_size)
    model = build_model(toy_cfg, "baseline", seed=0, dtype=torch.float32).eval()
    lm = FtbenchLM(model=model, tokenizer=tok, amp=None)
    tok.texts.clear()
    ep.generate_samples(lm, task, problems, n_samples=1, temperature=0.0, max_new_tokens=1,
                        batch_size=32, seed=0)
    ours = [t for t in tok.texts if t != ""]  # the texts of the prompts, in task order
    assert len(theirs) == len(ours) == count
    assert ours == theirs
    if task == "humanevalplus":  # most raw prompts start with blank lines: they differ
        assert sum(p["prompt"] != q for p, q in zip(problems, theirs)) > 100


def test_deviations_name_the_rescoring_and_reach_the_appendix(tmp_path):
    from ftbench.evaluation.results import write_result
    from ftbench.report.appendix import results_blocks
    from ftbench.report.collect import collect
    from ftbench.report.document import Bullets
    from tests.report.test_tables import _result

    devs = ep.deviations("humanevalplus", n_samples=5, arch="free", temperature=0.0,
                         limits={"max_seq_len": 256, "cap": 128, "capped": 164,
                                 "context_truncated": 3},
                         sandbox={"time_limits": {"rescore_scale": 2.0}})
    text = " | ".join(devs)
    assert "HumanEval/32" in text and "12 GB" in text
    assert "rescored alone at 2x the limits" in text
    assert "allow 128 new tokens (EvalPlus: 768); 3 prompts" in text
    assert "pass@k here is over Z" in text
    r = _result("humanevalplus", "code", "pass@1,plus", {"HumanEval/0": 1.0}, arch="free")
    r["deviations"] = devs
    write_result(tmp_path / "run" / "free-k0p5" / "humanevalplus.json", r)
    blocks = results_blocks(collect(tmp_path, ["run"]))
    bullets = next(b for b in blocks if isinstance(b, Bullets) and "HumanEval/32" in str(b))
    assert any("rescored alone" in item for item in bullets.items)
