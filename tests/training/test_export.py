import json
import os
import stat

import pytest
import torch

from ftbench.data.tokenizer import char_tokenizer
from ftbench.model import build_model, get_preset
from ftbench.training.export import (CONFIG, WEIGHTS, ModelLoadError, file_sha256,
                                     load_pretrained, save_pretrained)

CFG = get_preset("toy").replace(vocab_size=40, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                ffn_hidden=64, latent_bits=4, max_seq_len=32)


@pytest.fixture
def exported(tmp_path):
    model = build_model(CFG, "free", seed=1)
    save_pretrained(model.state_dict(), CFG, "free", char_tokenizer("abcdefgh_!"),
                    tmp_path / "arm")
    return tmp_path / "arm", model


def test_weights_hash_is_recorded_and_a_clean_export_loads(exported):
    folder, model = exported
    meta = json.loads((folder / CONFIG).read_text())
    assert meta["weights_sha256"] == file_sha256(folder / WEIGHTS)
    loaded, _, _ = load_pretrained(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_corrupted_weights_with_an_intact_header_are_refused_unless_asked(exported):
    folder, _ = exported
    data = bytearray((folder / WEIGHTS).read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    middle = 8 + header_len + (len(data) - 8 - header_len) // 2
    data[middle:middle + 4] = b"\x7f\x7f\x7f\x7f"  # a finite float32 in a tensor's bytes
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"not the file exported.*sha256.*"
                                             r"--no-verify-weights"):
        load_pretrained(folder)
    model, _, _ = load_pretrained(folder, verify=False)  # the header still parses
    assert model is not None


def test_exports_without_a_recorded_hash_still_load(exported):
    folder, model = exported
    meta = json.loads((folder / CONFIG).read_text())
    del meta["weights_sha256"]
    (folder / CONFIG).write_text(json.dumps(meta))
    loaded, tok, loaded_meta = load_pretrained(folder)
    assert "weights_sha256" not in loaded_meta and tok.decode(tok.encode("a_b!")) == "a_b!"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_files_get_the_mode_of_a_plain_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        model = build_model(CFG, "baseline", seed=1)
        save_pretrained(model.state_dict(), CFG, "baseline", char_tokenizer("ab"), tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    # safetensors alone writes 0600: the weights must match the other files.
    assert modes == {WEIGHTS: 0o666 & ~umask, CONFIG: 0o666 & ~umask,
                     "tokenizer.json": 0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}


def test_an_unreadable_config_is_a_load_error(exported):
    folder, _ = exported
    (folder / CONFIG).write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable.*train-pair"):
        load_pretrained(folder)
