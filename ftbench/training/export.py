"""A trained arm as a single folder that loads without FSDP: weights (safetensors), model
config, tokenizer and training summary."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ftbench.data.tokenizer import Tokenizer
from ftbench.model.config import ModelConfig
from ftbench.model.factory import build_model, canonical_name

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class ModelLoadError(RuntimeError):
    pass


def save_pretrained(state_dict: dict, cfg: ModelConfig, arch: str, tokenizer: Tokenizer,
                    directory: Path, extra: dict | None = None) -> None:
    """Write atomically: a crash leaves the old export or none, never half of one."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {canonical_name(k): v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"arch": arch})
    os.replace(tmp, directory / WEIGHTS)
    tokenizer.save(directory)
    meta = {"arch": arch, "model": asdict(cfg), "tokenizer_sha256": tokenizer.fingerprint(),
            **(extra or {})}
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, directory / CONFIG)


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, metadata) from an exported arm folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise ModelLoadError(f"{directory} is not an exported ftbench model (needs {CONFIG} and "
                             f"{WEIGHTS}); train one with `ftbench train-pair`")
    meta = json.loads((directory / CONFIG).read_text())
    cfg = ModelConfig(**meta["model"])
    model = build_model(cfg, meta["arch"], seed=None, device=device)
    try:
        state = load_file(str(directory / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{directory / WEIGHTS} is corrupt or unreadable ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{directory / WEIGHTS} does not match its config: missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}")
    tokenizer = Tokenizer.load(directory)
    expected = meta.get("tokenizer_sha256")
    if expected and tokenizer.fingerprint() != expected:
        raise ModelLoadError(f"the tokenizer in {directory} is not the one this model was "
                             "trained with (sha256 differs); restore the original tokenizer.json")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ModelLoadError(f"tokenizer in {directory} has {tokenizer.vocab_size} tokens but "
                             f"the model only {cfg.vocab_size}")
    return model.eval(), tokenizer, meta
