"""The memory plan against measured peaks: every shape the tests hold to ±20 %, printed.

Each peak is two training steps in a fresh subprocess (ftbench.doctor.memory: on CPU the
resident high-water mark above the resident size before the model is built; on CUDA
`max_memory_allocated`). Memory does not depend on how busy the machine is, only the
time to measure it does (about 3 minutes on 2 CPU cores).

Usage: python benchmarks/bench_memory_plan.py
"""

from __future__ import annotations

from ftbench.doctor.memory import measure_many, step_config
from ftbench.training.memory_plan import arm_memory

WIDE_FFN = {"vocab_size": 512, "d_model": 128, "ffn_hidden": 2048, "n_heads": 4,
            "n_kv_heads": 2, "latent_bits": 8}


def cases() -> list[dict]:
    out = []
    for size, ckpt in (("toy", False), ("toy", True), ("tiny", False), ("tiny", True),
                       ("small", False), ("small", True)):
        out += [dict(size=size, arch=a, batch=8, seq=256, ckpt=ckpt) for a in ("baseline", "free")]
    out.append(dict(size="small", arch="free", batch=2, seq=64, ckpt=False))  # AdamW state
    out.append(dict(size="small", arch="free", batch=2, seq=64, ckpt=False, fsdp=True))
    out += [dict(size="tiny", arch=a, batch=8, seq=1024, ckpt=c, layers=2, overrides=WIDE_FFN)
            for a in ("baseline", "free") for c in (True, False)]  # a block's backward
    out += [dict(size="toy", arch=a, batch=8, seq=256, ckpt=c, dtype="bfloat16", fsdp=f)
            for a in ("baseline", "free") for c, f in ((False, True), (True, True), (False, False))]
    return out


def main() -> None:
    specs = cases()
    print(f"{'case':58s} {'measured':>10s} {'planned':>10s}  plan/measured  peak phase")
    for spec, got in zip(specs, measure_many(specs)):
        cfg = step_config(spec["size"], spec["batch"], spec["seq"], spec["ckpt"],
                          layers=spec.get("layers"), overrides=spec.get("overrides"))
        bf16 = spec.get("dtype") == "bfloat16" or got["device"] == "cuda"
        want = arm_memory(cfg.model, spec["arch"], seq_len=spec["seq"],
                          micro_batch=spec["batch"], checkpointing=spec["ckpt"],
                          bf16=bf16, device_type=got["device"],
                          fsdp=spec.get("fsdp", False))
        label = (f"{spec['size']}{' wide-FFN' if 'overrides' in spec else ''} {spec['arch']} "
                 f"{spec['batch']}x{spec['seq']} {'ckpt' if spec['ckpt'] else 'no ckpt'} "
                 f"{'bf16' if bf16 else 'fp32'}{' fsdp' if spec.get('fsdp') else ''}")
        m, p = got["peak_bytes"] / 2**20, want["peak_bytes"] / 2**20
        print(f"{label:58s} {m:8.1f} MiB {p:8.1f} MiB  {p / m - 1:+7.1%}       "
              f"{want['peak_phase']}")


if __name__ == "__main__":
    main()
