"""Generated-token counts: a row that stops on a stop string at its first step has generated
one token, in generate() itself, in the lm-eval adapter and in the EvalPlus samples."""

import pytest
import torch
from lm_eval.api.instance import Instance

from ftbench.evaluation import evalplus_runner as ep
from ftbench.evaluation.lm_eval_adapter import FtbenchLM
from ftbench.inference.generation import SamplingConfig, generate
from ftbench.model import build_model

BUDGET = 8
OTHER = "def g(x):\n"
PROMPT = "def f():\n"  # unchanged by EvalPlus's prompt.strip() + "\\n"


class CharTokenizer:
    """One character per token: token t decodes to `table[t]`, chosen by the test."""

    def __init__(self, table: dict[int, str], vocab: int):
        self.table, self.vocab = table, vocab
        self.eot_id, self.pad_id = vocab - 1, vocab - 2

    def encode(self, text: str) -> list[int]:
        return [ord(ch) % (self.vocab - 1) for ch in text]

    def decode(self, ids) -> str:
        return "".join(self.table.get(int(t), "x") for t in ids)


@pytest.fixture
def model(toy_cfg):
    m = build_model(toy_cfg, "baseline", seed=3, dtype=torch.float64).eval()
    # At initialisation the model repeats the last prompt token; larger weights make rows
    # differ, so that one row can stop while the other goes on.
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _hand_count(model, tok, prompt: str, stop_token: int) -> int:
    """Tokens a row generates before it stops, counted by hand on an unstopped run: up to
    and including the first `stop_token` or the end of text, else the whole budget."""
    row = generate(model, [tok.encode(prompt)], SamplingConfig(max_new_tokens=BUDGET)).tokens[0]
    ends = [i for i, t in enumerate(row) if t in (stop_token, tok.eot_id)]
    return ends[0] + 1 if ends else BUDGET


def _first_token(model, tok) -> int:
    """The model's greedy first token after PROMPT (the stop string will be its text)."""
    out = generate(model, [tok.encode(PROMPT)], SamplingConfig(max_new_tokens=1))
    first = out.tokens[0][0]
    assert first != tok.eot_id  # else the row would stop on the token, not the string
    return first


def test_generate_cuts_a_row_at_the_stop_string(model, toy_cfg):
    tok = CharTokenizer({}, toy_cfg.vocab_size)
    first = _first_token(model, tok)
    tok.table = {first: "#"}
    out = generate(model, [tok.encode(PROMPT), tok.encode("zzzzzz")],
                   SamplingConfig(max_new_tokens=BUDGET), pad_id=tok.pad_id,
                   stop_strings=("#",), decode=tok.decode)
    assert out.tokens[0] == [first] and out.stopped[0]
    other = out.tokens[1]
    # The other row stops only if it produces the string itself.
    assert out.stopped[1] == (first in other)
    assert len(other) == (other.index(first) + 1 if first in other else BUDGET)


def test_lm_eval_adapter_counts_one_token_for_a_stop_string_at_step_one(model, toy_cfg):
    tok = CharTokenizer({}, toy_cfg.vocab_size)
    first = _first_token(model, tok)
    tok.table = {first: "#"}
    lm = FtbenchLM(model=model, tokenizer=tok, max_gen_toks=BUDGET, amp=None)
    # A second prompt in the same batch keeps generating after the first row stopped.
    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(p, {"until": ["#"], "max_gen_toks": BUDGET}))
            for p in (PROMPT, OTHER)]
    texts = lm.generate_until(reqs, disable_tqdm=True)
    assert texts[0] == ""
    other = _hand_count(model, tok, OTHER, first)
    assert other > 1  # else the batch would end with the first row
    assert lm.gen_stats["new_tokens"] == 1 + other


def test_evalplus_samples_count_one_token_for_a_stop_string_at_step_one(model, toy_cfg):
    tok = CharTokenizer({}, toy_cfg.vocab_size)
    first = _first_token(model, tok)
    stop = ep.stop_strings("humaneval")[0]
    tok.table = {first: stop}
    lm = FtbenchLM(model=model, tokenizer=tok, max_gen_toks=BUDGET, amp=None)
    problems = [{"task_id": "T/0", "prompt": PROMPT, "entry_point": "f"},
                {"task_id": "T/1", "prompt": OTHER, "entry_point": "f"}]
    rows = ep.generate_samples(lm, "humanevalplus", problems, n_samples=1, temperature=0.0,
                               max_new_tokens=BUDGET, batch_size=2, seed=0)
    assert rows[0]["n_new_tokens"] == 1
    assert rows[0]["completion"] == ""
    other = _hand_count(model, tok, OTHER, first)
    assert other > 1
    assert rows[1]["n_new_tokens"] == other
