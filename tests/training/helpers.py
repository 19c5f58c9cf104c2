"""A pair config small enough to train in about a second per arm."""

from ftbench.config import pair_config_from_dict


def tiny_pair_config(out_dir, **run):
    return pair_config_from_dict({
        "size": "toy",
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64,
                  "latent_bits": 4, "max_seq_len": 64},
        "data": {"sources": [{"kind": "synthetic"}], "train_tokens": 30_000, "seq_len": 32,
                 "tokenizer": {"kind": "char"}, "val_fraction": 0.05},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "latent": {"kappas_bits": [0.5]},
        "run": {"name": "tiny", "steps": 6, "batch_size": 4, "checkpoint_every": 3,
                "eval_every": 3, "val_batches": 1, "out_dir": str(out_dir), **run},
    })
