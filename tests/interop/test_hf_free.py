"""A Free arm exported for transformers (trust_remote_code): it loads without ftbench,
gives ftbench's logits for a fixed Z, generates ftbench's tokens for the same Z seed, and a
plain forward never lets the encoder see the tokens it scores."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.data import synthetic
from ftbench.data.tokenizer import char_tokenizer
from ftbench.inference.generation import SamplingConfig, generate, left_pad
from ftbench.model import build_model, get_preset
from ftbench.training.export import load_pretrained, save_pretrained

ARM = "free-k1"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A Free arm with a large init (so that Z visibly moves the logits; a toy-trained arm
    barely uses Z), exported through the CLI with one evaluation result beside it."""
    tmp = tmp_path_factory.mktemp("hf-free")
    cfg = get_preset("toy").replace(vocab_size=31, d_model=32, n_layers=2, n_heads=2,
                                    n_kv_heads=1, ffn_hidden=64, max_seq_len=64, init_std=0.3,
                                    latent_bits=4, tie_embeddings=False)
    model = build_model(cfg, "free", seed=3)
    arm = tmp / "models" / "run" / ARM
    save_pretrained(model.state_dict(), cfg, "free", char_tokenizer(synthetic.ALPHABET), arm,
                    extra={"arm": ARM, "kappa_bits": 1.0, "steps": 6, "seed": 0})
    results = tmp / "results" / "run" / ARM
    results.mkdir(parents=True)
    (results / "gsm8k.json").write_text(json.dumps({
        "schema_version": 2, "task": "gsm8k", "n_items": 10, "limit": 10,
        "metrics": {"exact_match,strict-match": {"value": 0.125, "stderr": 0.05}},
        "protocol": {"z_protocol": "posterior", "z_samples": 5,
                     "estimator": "mean of p(continuation | context, Z)"}}))
    out = tmp / "hf"
    r = CliRunner().invoke(app, ["export", str(arm), "--hf", str(out),
                                 "--results", str(tmp / "results")])
    assert r.exit_code == 0, r.output
    assert "trust_remote_code=True" in r.output
    ours, tok, _ = load_pretrained(arm)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        out, trust_remote_code=True, local_files_only=True).eval()
    return {"out": out, "ours": ours.double(), "hf": hf.double(), "tok": tok, "arm": arm}


def _ids(tok, text="K>___!KKKKKKKK______KKK!"):
    return tok.encode(text)


def test_loads_without_ftbench_in_a_subprocess(exported, tmp_path):
    # Run from an empty folder with every path that provides ftbench removed (its editable
    # install adds a finder to sys.meta_path), so only the copied modeling file can serve.
    code = f"""
import os, sys
sys.meta_path[:] = [f for f in sys.meta_path if 'ftbench' not in repr(f).lower()]
sys.path[:] = [p for p in sys.path
               if p not in ('', '.') and not os.path.isdir(os.path.join(p, 'ftbench'))]
try:
    import ftbench
    sys.exit('ftbench is importable here: ' + ftbench.__file__)
except ImportError:
    pass
import torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained({str(exported['out'])!r},
        trust_remote_code=True, local_files_only=True).eval()
tok = transformers.AutoTokenizer.from_pretrained({str(exported['out'])!r},
        trust_remote_code=True)
ids = tok('K>___!KK', return_tensors='pt', add_special_tokens=False).input_ids
z = torch.zeros_like(ids)
print(type(m).__name__, m(ids, z=z).logits.shape[-1], m.generate(ids, max_new_tokens=3,
      do_sample=False, z_seed=0).shape[1] - ids.shape[1])
print('ftbench' in sys.modules)
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-4:] == ["FreeTransformerForCausalLM", "31", "3", "False"], r.stdout


def test_logits_match_ftbench_for_a_fixed_z(exported):
    x = torch.tensor([_ids(exported["tok"])] * 2)
    z = torch.randint(0, 16, x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf = exported["hf"](x, z=z).logits
        ours = exported["ours"](x, latent="fixed", z_BT=z).logits_BTV
        other_z = exported["hf"](x, z=(z + 5) % 16).logits
    torch.testing.assert_close(hf, ours, rtol=0, atol=1e-5)
    assert (hf - other_z).abs().max() > 1e-2  # Z does reach the logits


def test_generate_with_a_cache_equals_ftbench_generation(exported):
    tok, hf, ours = exported["tok"], exported["hf"], exported["ours"]
    ids = _ids(tok)
    prompts = [ids[:5], ids[:11]]  # different lengths: left padding on the first row
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    for seed in (0, 1):
        want = generate(ours, prompts, cfg, pad_id=tok.pad_id, return_logits=True,
                        z_generator=torch.Generator().manual_seed(seed))
        tokens, valid, _ = left_pad(prompts, tok.pad_id, "cpu")
        got = hf.generate(tokens, attention_mask=valid.long(), max_new_tokens=10,
                          do_sample=False, z_seed=seed, pad_token_id=tok.pad_id,
                          use_cache=True, output_logits=True, return_dict_in_generate=True)
        assert got.sequences[:, tokens.shape[1]:].tolist() == want.tokens
        torch.testing.assert_close(torch.stack(got.logits, 1).double(),
                                   torch.stack(want.step_logits, 1).double(), rtol=0, atol=1e-5)
    # Z is seeded: other seeds give other logits (the prompt's posterior Z changed).
    first = hf.generate(tokens, attention_mask=valid.long(), max_new_tokens=1, z_seed=0,
                        do_sample=False, output_logits=True, return_dict_in_generate=True)
    other = hf.generate(tokens, attention_mask=valid.long(), max_new_tokens=1, z_seed=7,
                        do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert (first.logits[0] - other.logits[0]).abs().max() > 1e-3


def test_default_forward_does_not_leak_later_tokens(exported):
    hf = exported["hf"]
    ids = _ids(exported["tok"])
    a, b = torch.tensor([ids]), torch.tensor([ids])
    b[0, 12:] = (b[0, 12:] + 3) % 31  # change every token after position 11

    def logits(x, **kw):
        with torch.no_grad():
            return hf(x, z_generator=torch.Generator().manual_seed(0), **kw).logits[0, :12]
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=1e-9)
    # A posterior-Z forward (an explicit choice) runs the non-causal encoder: it may leak.
    assert (logits(a, latent="posterior") - logits(b, latent="posterior")).abs().max() > 1e-6


def test_model_card_states_arm_kappa_protocol_and_results(exported):
    card = (exported["out"] / "README.md").read_text()
    assert f"arm: `{ARM}`" in card and "kappa (free bits of KL per token): 1.0" in card
    assert "prior Z" in card and "trust_remote_code=True" in card
    assert ("| gsm8k | exact_match,strict-match | 0.125 | 0.05 | 10 | 10 | "
            "z_protocol=posterior, z_samples=5 |") in card
    assert "`--model ftbench`) is the reference" in card
    modes = {p.name: p.stat().st_mode & 0o777 for p in exported["out"].iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_lm_eval_hf_backend_scores_it_with_prior_z(exported):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok, out = exported["tok"], str(exported["out"])
    lm = HFLM(pretrained=out, trust_remote_code=True, device="cpu", dtype="float64",
              batch_size=1)
    ctx, cont = "K>___", "!KK"
    req = Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=0)
    torch.manual_seed(0)
    ((logp, _),) = lm.loglikelihood([req])
    # The same prior-Z forward by hand: the global RNG gives it the same Z.
    ids = tok.encode(ctx + cont)
    torch.manual_seed(0)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids[:-1]])).logits.log_softmax(-1)[0]
    n = len(tok.encode(cont))
    want = sum(logits[len(ids) - 1 - n + i, t] for i, t in enumerate(ids[-n:]))
    assert abs(logp - float(want)) < 1e-6


def test_force_replaces_an_earlier_free_export_whole(exported, tmp_path):
    out = tmp_path / "hf"
    args = ["export", str(exported["arm"]), "--hf", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    first = sorted(p.name for p in out.iterdir())
    (out / "stray.bin").write_bytes(b"from another export")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(app, args + ["--force"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == first
    assert "modeling_free_transformer.py" in first and "README.md" in first


def test_card_counts_training_tokens_from_the_global_batch():
    # run.batch_size is the global batch, already summed over the 8 ranks and the 4
    # accumulation steps: 1000 steps x 64 sequences x 2048 tokens = 131,072,000.
    from ftbench.interop.hf_free import model_card, training_tokens

    meta = {"arm": ARM, "steps": 1000, "seed": 0,
            "model": {"latent_bits": 4, "kv_injection": "kv"},
            "summary": {"world_size": 8},
            "pair_config": {"run": {"batch_size": 64, "grad_accum": 4},
                            "data": {"seq_len": 2048}}}
    assert training_tokens(meta) == 131_072_000
    assert "- training tokens: 131072000 (1000 steps, seed 0)" in model_card(meta, [])
