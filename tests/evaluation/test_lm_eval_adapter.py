import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from ftbench.evaluation.lm_eval_adapter import FtbenchLM
from ftbench.evaluation.scoring import context_key, score_requests, stream_generator
from ftbench.inference.generation import SamplingConfig, generate
from ftbench.training.distributed import DistContext
from ftbench.training.pair import run_dir, train_pair
from tests.training.helpers import tiny_pair_config


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    cfg = tiny_pair_config(tmp_path_factory.mktemp("lmeval"), steps=20)
    train_pair(cfg, log=lambda m: None, ctx=DistContext())
    return run_dir(cfg)


def _ll(args):
    return Instance(request_type="loglikelihood", doc={}, arguments=args, idx=0)


def test_registered_under_its_name():
    assert get_model("ftbench") is FtbenchLM


def test_loglikelihood_equals_a_direct_computation(pair_dir):
    lm = FtbenchLM(path=str(pair_dir / "baseline"), batch_size=2)
    reqs = [("Q>____", "QQQQ"), ("B>", "__!_"), ("Z>__ZZ", "ZZZZZZ")]
    out = lm.loglikelihood([_ll(r) for r in reqs], disable_tqdm=True)
    model, tok = lm.model, lm.tokenizer
    for (ctx, cont), (lp, greedy) in zip(reqs, out):
        c, t = tok.encode(ctx), tok.encode(cont)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([c + t[:-1]])).logits_BTV[0], -1)
        ref = sum(float(logp[len(c) - 1 + i, x]) for i, x in enumerate(t))
        assert abs(lp - ref) < 1e-5
    assert lm.protocol_record() == {"arch": "baseline"}


def test_rolling_loglikelihood_scores_every_token_once(pair_dir):
    lm = FtbenchLM(path=str(pair_dir / "baseline"))
    text = "K>___KKKKKKKK___!" * 3  # one window (max_length 64)
    (total,) = lm.loglikelihood_rolling(
        [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)],
        disable_tqdm=True)
    ids = [lm.eot_token_id] + lm.tok_encode(text)
    with torch.no_grad():
        logp = F.log_softmax(lm.model(torch.tensor([ids[:-1]])).logits_BTV[0], -1)
    ref = sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    assert abs(total - ref) < 1e-4


@pytest.mark.parametrize("arm", ["baseline", "free-k0p5"])
def test_generate_until_stops_at_the_stop_string(pair_dir, arm):
    lm = FtbenchLM(path=str(pair_dir / arm), max_gen_toks=40)
    req = Instance(request_type="generate_until", doc={}, idx=0,
                   arguments=("M>", {"until": ["!"], "max_gen_toks": 40}))
    free_run = Instance(request_type="generate_until", doc={}, idx=0,
                        arguments=("M>", {"until": [], "max_gen_toks": 40}))
    (cut,) = lm.generate_until([req], disable_tqdm=True)
    (full,) = lm.generate_until([free_run], disable_tqdm=True)
    assert "!" not in cut
    assert cut == full.split("!")[0]


def test_free_protocol_is_recorded(pair_dir):
    lm = FtbenchLM(path=str(pair_dir / "free-k0p5"), z_draws=4, z_seed=7, z_samples=3)
    assert lm.protocol_record() == {"arch": "free", "z_protocol": "posterior", "z_draws": 4,
                                    "z_seed": 7, "protocols": ["posterior"], "z_samples": 3}
    (lp, _), = lm.loglikelihood([_ll(("Q>____", "QQQQ"))], disable_tqdm=True)
    assert lp < 0


def test_other_protocol_is_replayed_from_the_same_pass(pair_dir, monkeypatch):
    lm = FtbenchLM(path=str(pair_dir / "free-k0p5"), z_draws=3, z_seed=2,
                   protocols="posterior,prior")
    reqs = [("Q>____", "QQQQ"), ("Q>____", "____"), ("B>", "__!_")]
    head = lm.loglikelihood([_ll(r) for r in reqs], disable_tqdm=True)
    import ftbench.evaluation.lm_eval_adapter as adapter

    def no_rescoring(*a, **k):
        raise AssertionError("replay must not score again")
    monkeypatch.setattr(adapter, "score_requests", no_rescoring)
    lm.replay = "prior"
    replayed = lm.loglikelihood([_ll(r) for r in reqs], disable_tqdm=True)
    monkeypatch.undo()
    pairs = [(lm.tok_encode(c), lm.tok_encode(t)) for c, t in reqs]
    for protocol, got in (("posterior", head), ("prior", replayed)):
        ref = score_requests(lm.model, pairs, protocols=(protocol,), draws=3, seed=2)[protocol]
        assert [lp for lp, _ in got] == [s.logp for s in ref]
    assert all(len(lm.scores_by_text[r]["prior"].draws) == 3 for r in reqs)


def test_generation_samples_have_their_own_z_streams(pair_dir):
    lm = FtbenchLM(path=str(pair_dir / "free-k0p5"), z_samples=3, z_seed=4, max_gen_toks=12)
    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(p, {"until": ["\n"], "max_gen_toks": 12}))
            for p in ("M>", "K>__", "M>")]
    per_pass = []
    for i in range(3):
        lm.sample_index = i
        per_pass.append(lm.generate_until(reqs, disable_tqdm=True))
    assert all(p[0] == p[2] for p in per_pass)  # a request's samples depend on its content
    # Sample i equals a lone generation seeded by (seed, i, prompt): no batch dependence.
    ids = lm.tok_encode("K>__")
    for i in range(3):
        key = context_key(ids)
        out = generate(lm.model, [ids], SamplingConfig(max_new_tokens=12,
                                                       stop_token_ids=(lm.eot_token_id,)),
                       pad_id=lm.tokenizer.pad_id,
                       z_streams=[stream_generator(4, key, i, "gen-z")],
                       token_streams=[stream_generator(4, key, i, "gen-tokens")],
                       stop_strings=["\n"], decode=lm.tok_decode)
        toks = out.tokens[0][:-1] if out.tokens[0][-1:] == [lm.eot_token_id] else out.tokens[0]
        assert per_pass[i][1] == lm.tok_decode(toks).split("\n")[0]


def test_rolling_windows_cover_texts_longer_than_the_context(pair_dir):
    lm = FtbenchLM(path=str(pair_dir / "baseline"))
    short, long = "K>___KKKKKKKK___!" * 3, "K>___KKKKKKKK___!" * 12
    totals = lm.loglikelihood_rolling(
        [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0)
         for t in (short, long)], disable_tqdm=True)
    assert totals[1] < totals[0] < 0
    # The long text's total is the sum over all of lm-eval's windows (about 200 tokens in
    # windows of 64) of a direct forward per window: each token scored once, none dropped.
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    ids = lm.tok_encode(long)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=ids, prefix_token=lm.eot_token_id, max_seq_len=64, context_len=1)]
    assert len(windows) >= 4 and sum(len(c) for _, c in windows) == len(ids)
    ref = 0.0
    for ctx, cont in windows:
        with torch.no_grad():
            logp = F.log_softmax(lm.model(torch.tensor([ctx + cont[:-1]])).logits_BTV[0], -1)
        ref += sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert abs(totals[1] - ref) < 1e-4 * len(ids)


def test_generation_shortened_to_fit_the_context_is_counted_and_logged(pair_dir, caplog):
    import logging

    from ftbench.evaluation.lm_eval_adapter import generation_budget

    lm = FtbenchLM(path=str(pair_dir / "baseline"))  # max_seq_len 64: at most 32 new tokens
    long_prompt = "K>___KKKKKKKK___!" * 4  # 68 tokens: 36 must go to leave room for 32
    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(long_prompt, {"until": [], "max_gen_toks": 40})),
            Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=("M>", {"until": [], "max_gen_toks": 40})),
            Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=("M>", {"until": [], "max_gen_toks": 8}))]
    with caplog.at_level(logging.WARNING, logger="ftbench.evaluation.lm_eval_adapter"):
        out = lm.generate_until(reqs, disable_tqdm=True)
    assert len(lm.tok_encode(long_prompt)) == 68
    assert lm.gen_limits.record() == {
        "max_seq_len": 64, "cap": 32, "requests": 3, "max_gen_toks_requested": [8, 40],
        "capped": 2, "context_truncated": 1, "context_tokens_dropped": 36,
        "context_tokens_dropped_max": 36}
    assert all(len(lm.tok_encode(t)) <= 32 for t in out[:2]) and len(lm.tok_encode(out[2])) <= 8
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "2/3 requests asked for 40 new tokens, capped at 32" in warning
    assert "1/3 prompts lost their first tokens" in warning
    # The kept prompt is the end of the long one, the same as a direct budget computation.
    ids = lm.tok_encode(long_prompt)
    assert generation_budget(ids, 40, 64) == (ids[36:], 32, 36)
    # Replaying stored samples counts nothing again and warns no more.
    caplog.clear()
    lm.generate_until(reqs, disable_tqdm=True)
    assert lm.gen_limits.requests == 3 and not caplog.records


def test_requests_within_the_context_are_not_shortened(pair_dir, caplog):
    import logging

    lm = FtbenchLM(path=str(pair_dir / "baseline"))
    with caplog.at_level(logging.WARNING):
        lm.generate_until([Instance(request_type="generate_until", doc={}, idx=0,
                                    arguments=("M>", {"until": [], "max_gen_toks": 32}))],
                          disable_tqdm=True)
    assert lm.gen_limits.summary() is None and not caplog.records
    assert lm.gen_limits.record()["capped"] == 0
    with pytest.raises(ValueError, match="max_gen_toks: must be at least 1"):
        lm.generate_until([Instance(request_type="generate_until", doc={}, idx=0,
                                    arguments=("M>", {"until": [], "max_gen_toks": 0}))],
                          disable_tqdm=True)
