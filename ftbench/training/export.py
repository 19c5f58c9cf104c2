"""A trained arm as a single folder that loads without FSDP: weights (safetensors), model
config, tokenizer and training summary."""

from __future__ import annotations

import hashlib
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


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Streamed, so that hashing an 8B model's weights does not hold them in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    try:  # Linux states it without changing it; os.umask can only be read by setting it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """The mode a plain write would give (0644 under the usual umask 022).

    safetensors creates its files 0600, and a file renamed into place keeps that mode, so
    without this the weights alone would be unreadable to the other users of a shared
    machine while every other output is readable.
    """
    os.chmod(path, 0o666 & ~_umask())


def save_pretrained(state_dict: dict, cfg: ModelConfig, arch: str, tokenizer: Tokenizer,
                    directory: Path, extra: dict | None = None) -> None:
    """Write atomically: a crash leaves the old export or none, never half of one.

    The weights' sha256 goes into config.json, which is written last: load_pretrained
    checks it, so bytes changed after export (a bad copy, a disk fault) are refused rather
    than evaluated.
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {canonical_name(k): v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"arch": arch})
    publish_mode(tmp)
    weights_sha256 = file_sha256(tmp)
    os.replace(tmp, directory / WEIGHTS)
    tokenizer.save(directory)
    meta = {"arch": arch, "model": asdict(cfg), "tokenizer_sha256": tokenizer.fingerprint(),
            "weights_sha256": weights_sha256, **(extra or {})}
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, directory / CONFIG)


def check_weights(directory: str | Path, meta: dict | None = None) -> None:
    """Refuse weights whose sha256 differs from the one recorded at export."""
    directory = Path(directory)
    if meta is None:
        meta = json.loads((directory / CONFIG).read_text())
    expected = meta.get("weights_sha256")
    if not expected:  # exported before hashes were recorded: nothing to check against
        return
    actual = file_sha256(directory / WEIGHTS)
    if actual != expected:
        raise ModelLoadError(
            f"{directory / WEIGHTS} is not the file exported with this model: its sha256 "
            f"{actual[:12]}... differs from the {expected[:12]}... recorded in {CONFIG} "
            "(a bad copy or a disk fault?). Copy the weights again or retrain; to load them "
            "anyway pass --no-verify-weights (verify=False in Python)")


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu", *,
                    verify: bool = True):
    """(model in eval mode, tokenizer, metadata) from an exported arm folder.

    verify: check the weights against the sha256 recorded at export (exports from before
    hashes were recorded have none to check). verify=False skips it, for weights changed
    on purpose (e.g. edited by hand for an experiment).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise ModelLoadError(f"{directory} is not an exported ftbench model (needs {CONFIG} and "
                             f"{WEIGHTS}); train one with `ftbench train-pair`")
    try:
        meta = json.loads((directory / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{directory / CONFIG} is unreadable ({e}); re-export the arm "
                             "with `ftbench train-pair`") from None
    if verify:
        check_weights(directory, meta)
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
