"""Pick the Hugging Face exporter by the arm's architecture: a baseline becomes a
LlamaForCausalLM folder, a Free arm a trust_remote_code folder with its own modeling file."""

from __future__ import annotations

import json
from pathlib import Path

HF_ARCHITECTURES = ("LlamaForCausalLM", "FreeTransformerForCausalLM")


def arm_architecture(model_dir: Path) -> str | None:
    """The `arch` recorded in an exported arm's config.json (None if unreadable: the
    exporter's own loader then says what is wrong)."""
    try:
        meta = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("arch") if isinstance(meta, dict) else None


def is_hf_export(folder: Path) -> bool:
    """Whether `folder` holds a Hugging Face export that ftbench wrote (either kind)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(
        set(HF_ARCHITECTURES) & set(config.get("architectures") or []))


def export_hf_any(model_dir: Path, out_dir: Path, results_root: Path | None = None) -> Path:
    """Export either kind of arm; `results_root` (default results/) feeds a Free arm's
    model card with results/<run>/<arm>/*.json."""
    model_dir = Path(model_dir)
    if arm_architecture(model_dir) == "free":
        from ftbench.interop.hf_free import export_hf_free

        root = Path(results_root) if results_root is not None else Path("results")
        return export_hf_free(model_dir, out_dir,
                              root / model_dir.resolve().parent.name / model_dir.name)
    from ftbench.interop.hf_llama import export_hf

    return export_hf(model_dir, out_dir)
