import pytest
import torch
import transformers

from ftbench.data import synthetic
from ftbench.data.tokenizer import char_tokenizer
from ftbench.model import build_model, get_preset
from ftbench.interop.hf_llama import export_hf
from ftbench.training.export import ModelLoadError, load_pretrained, save_pretrained
from ftbench.training.pair import run_dir, train_pair
from ftbench.training.distributed import DistContext
from tests.training.helpers import tiny_pair_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    cfg = tiny_pair_config(tmp)
    train_pair(cfg, log=lambda m: None, ctx=DistContext())
    return run_dir(cfg)


def test_exported_llama_gives_the_same_logits(trained, tmp_path):
    out = export_hf(trained / "baseline", tmp_path / "hf")
    ours, tok, _ = load_pretrained(trained / "baseline")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "K>___!KKKKKKKK____________"
    ids = tok.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x).logits_BTV, rtol=1e-4, atol=1e-4)
    # The weights are as readable as the other files (safetensors alone would write 0600).
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_free_models_have_no_llama_export(trained, tmp_path):
    with pytest.raises(ModelLoadError, match="only baselines"):
        export_hf(trained / "free-k0p5", tmp_path / "hf")


def test_untied_gqa_model_exports_too(tmp_path):
    cfg = get_preset("toy").replace(vocab_size=31, tie_embeddings=False, n_heads=4, n_kv_heads=1,
                                    max_seq_len=64)
    model = build_model(cfg, "baseline", seed=1)
    save_pretrained(model.state_dict(), cfg, "baseline", char_tokenizer(synthetic.ALPHABET),
                    tmp_path / "arm")
    out = export_hf(tmp_path / "arm", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    x = torch.randint(0, 31, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x).logits_BTV, rtol=1e-4, atol=1e-4)
