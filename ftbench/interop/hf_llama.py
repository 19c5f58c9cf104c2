"""A trained baseline as a Hugging Face `LlamaForCausalLM` folder (config, safetensors,
tokenizer) that `transformers` loads offline. The baseline is a Llama block for block
(rotate-half RoPE, RMSNorm, SwiGLU, GQA, no biases), so this is a renaming of weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ftbench.data.tokenizer import EOT, PAD
from ftbench.training.export import ModelLoadError, load_pretrained, publish_mode


def llama_config(cfg, eot_id: int, pad_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
        # transformers 4.x reads rope_theta, 5.x rope_parameters: write both.
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }


def llama_state_dict(state: dict[str, torch.Tensor], n_layers: int,
                     tied: bool) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": state["tok_emb.weight"],
           "model.norm.weight": state["norm.weight"]}
    names = {"attn_norm.weight": "input_layernorm.weight",
             "mlp_norm.weight": "post_attention_layernorm.weight",
             "attn.wq.weight": "self_attn.q_proj.weight", "attn.wk.weight": "self_attn.k_proj.weight",
             "attn.wv.weight": "self_attn.v_proj.weight", "attn.wo.weight": "self_attn.o_proj.weight",
             "mlp.w1.weight": "mlp.gate_proj.weight", "mlp.w3.weight": "mlp.up_proj.weight",
             "mlp.w2.weight": "mlp.down_proj.weight"}
    for i in range(n_layers):
        for ours, theirs in names.items():
            out[f"model.layers.{i}.{theirs}"] = state[f"blocks.{i}.{ours}"]
    if not tied:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    model, tokenizer, meta = load_pretrained(model_dir)
    if meta["arch"] != "baseline":
        raise ModelLoadError(f"{model_dir} is a {meta['arch']} model; only baselines have a "
                             "Hugging Face (Llama) equivalent")
    out = Path(out_dir)
    cfg = model.cfg
    write_hf_folder(out, llama_state_dict(model.state_dict(), cfg.n_layers, cfg.tie_embeddings),
                    llama_config(cfg, tokenizer.eot_id, tokenizer.pad_id), cfg, tokenizer)
    return out


def write_hf_folder(out: Path, tensors: dict, config: dict, cfg, tokenizer) -> None:
    """What every Hugging Face export holds: the weights (renamed into place, 0644), config,
    generation and tokenizer settings, and the tokenizer."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    publish_mode(tmp)  # safetensors writes 0600; the rest of the export is 0644
    os.replace(tmp, out / "model.safetensors")
    files = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": tokenizer.eot_id,
                                   "eos_token_id": tokenizer.eot_id,
                                   "pad_token_id": tokenizer.pad_id},
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                  "eos_token": EOT, "bos_token": EOT, "pad_token": PAD,
                                  "model_max_length": cfg.max_seq_len,
                                  "clean_up_tokenization_spaces": False},
        "special_tokens_map.json": {"eos_token": EOT, "bos_token": EOT, "pad_token": PAD},
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2))
    tokenizer.save(out)
