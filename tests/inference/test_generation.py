import pytest
import torch

from ftbench.inference import SamplingConfig, generate
from ftbench.inference.generation import left_pad
from tests.conftest import z_gen

PROMPTS = [[5, 9, 13, 2, 7], [40, 41], [3, 3, 3, 8]]


def _full_forward_logits(model, prompts, out):
    """Rerun the whole left-padded sequence in one uncached forward, Z held fixed."""
    tokens, valid, positions = left_pad(prompts, 0, "cpu")
    # The last sampled token is never fed back, so it has no slot (and no Z).
    n = len(out.step_logits)
    new = torch.tensor([(row + [0] * (n - len(row)))[:n - 1] for row in out.tokens])
    seq = torch.cat((tokens, new), dim=1)
    seq_valid = torch.cat((valid, torch.ones_like(new, dtype=torch.bool)), dim=1)
    seq_pos = torch.cat((positions, positions[:, -1:] + 1 + torch.arange(new.shape[1])), dim=1)
    kw = {}
    if model.arch == "free":
        kw = {"latent": "fixed", "z_BT": out.z_BS[:, :seq.shape[1]]}
    logits = model(seq, positions_BT=seq_pos, valid_BT=seq_valid, **kw).logits_BTV
    P = tokens.shape[1]
    return logits[:, P - 1:]


@pytest.mark.parametrize("arch", ["baseline", "free"])
def test_kv_cache_generation_matches_full_forward(toy_pair, arch):
    model = toy_pair[0] if arch == "baseline" else toy_pair[1]
    out = generate(model, PROMPTS, SamplingConfig(max_new_tokens=12), z_generator=z_gen(2),
                   return_logits=True)
    assert len(out.step_logits) == 12
    cached = torch.stack(out.step_logits, dim=1).double()
    full = _full_forward_logits(model, PROMPTS, out)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["baseline", "free"])
def test_left_padding_does_not_change_a_row(toy_pair, arch):
    model = toy_pair[0] if arch == "baseline" else toy_pair[1]
    cfg = SamplingConfig(max_new_tokens=8)
    batched = generate(model, PROMPTS, cfg, z_generator=z_gen(0), return_logits=True)
    for i, prompt in enumerate(PROMPTS):
        kw = {}
        if arch == "free":  # impose the Z this row had in the batch
            P = batched.prompt_slots
            z = batched.z_BS[i:i + 1, P - len(prompt):]
            z = torch.cat((z, torch.zeros(1, 1, dtype=z.dtype)), dim=1)
            kw = {"shared_z_BS": z}
        alone = generate(model, [prompt], cfg, return_logits=True, **kw)
        assert alone.tokens[0] == batched.tokens[i]
        for step, logits in enumerate(alone.step_logits):
            torch.testing.assert_close(logits[0], batched.step_logits[step][i], rtol=0, atol=1e-10)


def test_free_generation_uses_posterior_prefill_then_fresh_prior_z(toy_pair):
    _, free = toy_pair
    prompt = [[5, 9, 13, 2, 7, 11, 4]]
    cfg = SamplingConfig(max_new_tokens=6)
    a = generate(free, prompt, cfg, z_generator=z_gen(1))
    b = generate(free, prompt * 2, cfg, z_generator=z_gen(1))
    assert a.z_BS.shape == (1, 7 + 5)  # the last token is sampled, never fed back
    assert not torch.equal(b.z_BS[0], b.z_BS[1])  # each row its own Z
    # Prefill Z comes from the encoder: strongly-peaked posterior logits show in the codes.
    with torch.no_grad():
        free.encoder.readout.weight.mul_(1000.0)
    enc_logits = free(torch.tensor(prompt), z_generator=z_gen(5)).latent_logits_BTH
    forced = ((enc_logits > 0).long() << torch.arange(free.cfg.latent_bits)).sum(-1)
    c = generate(free, prompt, cfg, z_generator=z_gen(9))
    assert torch.equal(c.z_BS[:, :7], forced)
    d = generate(free, prompt, cfg, z_generator=z_gen(9), z_protocol="prior")
    assert not torch.equal(d.z_BS[:, :7], forced)


def test_z_generator_is_apart_from_token_sampling(toy_pair):
    _, free = toy_pair
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    a = generate(free, PROMPTS, cfg, token_generator=z_gen(1), z_generator=z_gen(2))
    b = generate(free, PROMPTS, cfg, token_generator=z_gen(1), z_generator=z_gen(2))
    c = generate(free, PROMPTS, cfg, token_generator=z_gen(1), z_generator=z_gen(3))
    assert a.tokens == b.tokens and torch.equal(a.z_BS, b.z_BS)
    assert not torch.equal(a.z_BS, c.z_BS)


def test_sampling_options(toy_pair):
    base, _ = toy_pair
    greedy = generate(base, PROMPTS, SamplingConfig(max_new_tokens=6))
    # A nucleus this small keeps only the top token: the same as greedy.
    narrow = generate(base, PROMPTS, SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6),
                      token_generator=z_gen(0))
    assert narrow.tokens == greedy.tokens
    hot = [generate(base, PROMPTS, SamplingConfig(max_new_tokens=6, temperature=2.0),
                    token_generator=z_gen(s)).tokens for s in range(3)]
    assert hot[0] != hot[1] or hot[1] != hot[2]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_stop_tokens_end_rows_independently(toy_pair):
    base, _ = toy_pair
    free_run = generate(base, PROMPTS, SamplingConfig(max_new_tokens=10))
    stop = free_run.tokens[0][3]
    out = generate(base, PROMPTS, SamplingConfig(max_new_tokens=10, stop_token_ids=(stop,)))
    first = free_run.tokens[0].index(stop)
    assert out.tokens[0] == free_run.tokens[0][:first + 1] and out.stopped[0]
    for i in (1, 2):
        row = free_run.tokens[i]
        expect = row[:row.index(stop) + 1] if stop in row else row
        assert out.tokens[i] == expect


def test_empty_prompt_is_a_clear_error(toy_pair):
    with pytest.raises(ValueError, match="at least one token"):
        generate(toy_pair[0], [[1], []], SamplingConfig(max_new_tokens=2))


@pytest.mark.parametrize("protocol", ["posterior", "prior"])
def test_row_streams_make_each_row_independent_of_its_batch(toy_pair, protocol):
    """Each (prompt, sample) seeded by its own streams generates the same alone or batched,
    so an evaluator may batch samples freely; different streams give different Z."""
    _, free = toy_pair
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0)

    def streams(seeds):
        return [z_gen(s) for s in seeds]
    batched = generate(free, PROMPTS, cfg, z_protocol=protocol, z_streams=streams([1, 2, 3]),
                       token_streams=streams([11, 12, 13]), return_logits=True)
    P = batched.prompt_slots
    for i, prompt in enumerate(PROMPTS):
        alone = generate(free, [prompt], cfg, z_protocol=protocol, z_streams=streams([i + 1]),
                         token_streams=streams([i + 11]), return_logits=True)
        assert alone.tokens[0] == batched.tokens[i]
        n = len(alone.tokens[0]) - 1 + len(prompt)
        assert torch.equal(alone.z_BS[0, -n:], batched.z_BS[i, P - len(prompt):][:n])
        for step, logits in enumerate(alone.step_logits):
            torch.testing.assert_close(logits[0], batched.step_logits[step][i], rtol=0,
                                       atol=1e-10)
    other = generate(free, PROMPTS[:1], cfg, z_protocol=protocol, z_streams=streams([7]),
                     token_streams=streams([11]))
    first_row = batched.z_BS[0, P - len(PROMPTS[0]):]
    assert not torch.equal(other.z_BS[0], first_row[:other.z_BS.shape[1]])
