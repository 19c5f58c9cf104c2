"""A trained Free arm as a Hugging Face folder that loads with trust_remote_code.

transformers has no Free Transformer, so the folder carries its own modeling file
(hf_free_modeling.py, which needs torch and transformers only), registered in config.json
through `auto_map`. The weights keep ftbench's names: the export is a copy of the state
dict, and the modeling file is what must agree with ftbench (tests/interop/test_hf_free.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftbench.interop.hf_llama import write_hf_folder
from ftbench.training.export import ModelLoadError, load_pretrained

MODELING_SOURCE = Path(__file__).with_name("hf_free_modeling.py")
MODELING_FILE = "modeling_free_transformer.py"
ARCHITECTURE = "FreeTransformerForCausalLM"
MODEL_TYPE = "ftbench_free"


def free_config(cfg, meta: dict, eot_id: int, pad_id: int) -> dict:
    module = MODELING_FILE.removesuffix(".py")
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "auto_map": {"AutoConfig": f"{module}.FreeTransformerConfig",
                     "AutoModelForCausalLM": f"{module}.{ARCHITECTURE}"},
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "intermediate_size": cfg.ffn_hidden,
        "max_position_embeddings": cfg.max_seq_len, "rope_base": cfg.rope_base,
        "rms_norm_eps": cfg.norm_eps, "tie_embeddings": cfg.tie_embeddings,
        "latent_bits": cfg.latent_bits, "kv_injection": cfg.kv_injection,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": pad_id,
        "torch_dtype": "float32",
        # Provenance for the model card and for whoever finds the folder later.
        "ftbench": {"arm": meta.get("arm"), "kappa_bits": meta.get("kappa_bits"),
                    "steps": meta.get("steps"), "seed": meta.get("seed"),
                    "weights_sha256": meta.get("weights_sha256")},
    }


def training_tokens(meta: dict) -> int | None:
    """Tokens the arm was trained on: steps x batch_size x seq_len.

    run.batch_size is the global batch (all ranks and all accumulation steps together), so
    neither the world size nor grad_accum multiplies it."""
    pair = meta.get("pair_config") or {}
    run, data = pair.get("run") or {}, pair.get("data") or {}
    try:
        return int(meta["steps"]) * int(run["batch_size"]) * int(data["seq_len"])
    except (KeyError, TypeError, ValueError):
        return None


def evaluation_results(results_dir: Path) -> list[dict]:
    """The headline metrics of results/<run>/<arm>/<task>.json, if the arm was evaluated."""
    rows = []
    for path in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict) or "task" not in result or "metrics" not in result:
            continue  # sandbox records and other side files
        for name, m in result["metrics"].items():
            if "/" in name or not isinstance(m, dict):  # per-subtask rows of a group
                continue
            rows.append({"task": result["task"], "metric": name, "value": m.get("value"),
                         "stderr": m.get("stderr"), "n_items": result.get("n_items"),
                         "limit": result.get("limit"),
                         "protocol": _protocol_text(result.get("protocol"))})
    return rows


# The protocol fields a reader of the card needs; the full record stays in results/.
PROTOCOL_KEYS = ("z_protocol", "z_draws", "z_samples", "token_sampling")


def _protocol_text(protocol) -> str:
    if isinstance(protocol, dict):
        text = ", ".join(f"{k}={protocol[k]}" for k in PROTOCOL_KEYS if k in protocol)
    else:
        text = "" if protocol is None else str(protocol)
    return text.replace("|", "/")  # a pipe would split the Markdown table's cell


def _source_text(source: dict) -> str:
    where = source.get("path") or source.get("hf_id")
    kind = f"{source.get('kind')}:{where}" if where else str(source.get("kind"))
    return f"{kind} (weight {source.get('weight', 1.0):g})"


def model_card(meta: dict, results: list[dict]) -> str:
    pair = meta.get("pair_config") or {}
    sources = (pair.get("data") or {}).get("sources") or []
    mix = ", ".join(_source_text(s) for s in sources) or "not recorded"
    tokens = training_tokens(meta)
    lines = [
        f"# {meta.get('arm', 'free')}: a Free Transformer exported by ftbench", "",
        "A Free Transformer (Fleuret 2025, arXiv 2510.17558) trained with ftbench.", "",
        f"- arm: `{meta.get('arm')}`",
        f"- kappa (free bits of KL per token): {meta.get('kappa_bits')}",
        f"- latent: {meta['model']['latent_bits']} bits per token "
        f"({2 ** meta['model']['latent_bits']} codes), injection `{meta['model']['kv_injection']}`",
        f"- training tokens: {tokens if tokens is not None else 'not recorded'} "
        f"({meta.get('steps')} steps, seed {meta.get('seed')})",
        f"- data mix: {mix}",
        f"- weights sha256 (ftbench export): {meta.get('weights_sha256')}", "",
        "## Loading", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)",
        "tok = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)",
        "ids = tok('...', return_tensors='pt').input_ids",
        "out = model.generate(ids, max_new_tokens=32, do_sample=False, z_seed=0)",
        "```", "",
        "## Z protocol", "",
        "- A plain forward uses **prior Z** (uniform codes; the encoder never runs), so the "
        "encoder never sees the tokens it scores. Log-likelihoods from a plain forward, and "
        "so from lm-eval's `hf` backend (`--model hf --model_args pretrained=FOLDER,"
        "trust_remote_code=True`), are prior-Z log-likelihoods from one Z draw per forward; "
        "its generation tasks call generate(), so they get posterior Z over the prompt.",
        "- `model(ids, latent='posterior')` runs the encoder over the tokens of the call "
        "(first call only): use it only over tokens that may be shown to Z, e.g. a context.",
        "- `model(ids, z=codes)` fixes Z.",
        "- `generate()` samples posterior Z over the prompt and a fresh prior Z per new token, "
        "as ftbench does; `z_protocol='prior'` uses prior Z for the prompt too; "
        "`z_seed` / `z_generator` seed Z apart from token sampling.",
        "- ftbench's own lm-eval adapter (`--model ftbench`) is the reference for this "
        "model's benchmark numbers (posterior Z over the context only, prior Z for the "
        "continuation).", "",
        "## Evaluation", "",
    ]
    if results:
        lines += ["| task | metric | value | stderr | items | limit | protocol |",
                  "|---|---|---|---|---|---|---|"]
        for r in results:
            value = "" if r["value"] is None else f"{r['value']:.4g}"
            stderr = "" if r["stderr"] is None else f"{r['stderr']:.3g}"
            lines.append(f"| {r['task']} | {r['metric']} | {value} | {stderr} | "
                         f"{r['n_items']} | {r['limit']} | {r['protocol']} |")
    else:
        lines.append("No evaluation results were found for this arm at export time.")
    return "\n".join(lines) + "\n"


def export_hf_free(model_dir: str | Path, out_dir: str | Path,
                   results_dir: Path | None = None) -> Path:
    """Write config, weights, tokenizer, modeling file and model card into `out_dir`.
    `results_dir` (the arm's results/<run>/<arm> folder, if any) supplies the card's
    evaluation table."""
    model_dir = Path(model_dir)
    model, tokenizer, meta = load_pretrained(model_dir)
    if meta["arch"] != "free":
        raise ModelLoadError(f"{model_dir} is a {meta['arch']} model, not a Free Transformer")
    out = Path(out_dir)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_hf_folder(out, tensors, free_config(model.cfg, meta, tokenizer.eot_id, tokenizer.pad_id),
                    model.cfg, tokenizer)
    shutil.copyfile(MODELING_SOURCE, out / MODELING_FILE)
    results = evaluation_results(Path(results_dir)) if results_dir is not None else []
    (out / "README.md").write_text(model_card(meta, results))
    return out

