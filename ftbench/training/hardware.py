"""Peak FLOP rates (for model-FLOPs utilisation) and peak memory, per device."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPUSpec:
    """Vendor datasheet figures, per GPU: the roofline of ftbench.doctor.roofline and the
    peak behind MFU. Bandwidths are one direction (NVLink's 900 GB/s is 450 each way);
    the network is the GPU's share of the node's fabric (one 400 Gb/s NIC per GPU)."""
    name: str
    bf16_flops: float
    """Dense tensor-core bf16 FLOP/s (no sparsity)."""
    memory_bytes: float
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float
    network_bytes_per_s: float
    name_fragments: tuple[str, ...]
    """Parts of torch.cuda.get_device_name() that identify it (most specific first)."""


GPUS = {
    "h100": GPUSpec("H100 SXM 80GB", 989e12, 80e9, 3.35e12, 450e9, 50e9, ("H100 80GB HBM3",
                                                                        "H100 SXM", "H100")),
    "h100-pcie": GPUSpec("H100 PCIe 80GB", 756e12, 80e9, 2.0e12, 64e9, 50e9, ("H100 PCIe",)),
    "h100-nvl": GPUSpec("H100 NVL 94GB", 835e12, 94e9, 3.9e12, 300e9, 50e9, ("H100 NVL",)),
    "h200": GPUSpec("H200 141GB", 989e12, 141e9, 4.8e12, 450e9, 50e9, ("H200",)),
    "a100": GPUSpec("A100 SXM 80GB", 312e12, 80e9, 2.039e12, 300e9, 25e9, ("A100",)),
    "l40s": GPUSpec("L40S 48GB", 362e12, 48e9, 0.864e12, 32e9, 25e9, ("L40S",)),
    "a10g": GPUSpec("A10G 24GB", 125e12, 24e9, 0.6e12, 32e9, 12.5e9, ("A10G",)),
    "rtx4090": GPUSpec("RTX 4090 24GB", 165e12, 24e9, 1.0e12, 32e9, 12.5e9, ("4090",)),
}


def gpu_spec(name: str) -> GPUSpec:
    """A GPUS entry by key (h100, h200, a100, ...) or by the name a GPU reports
    (nvidia-smi, torch.cuda.get_device_name: "NVIDIA H100 80GB HBM3")."""
    key = name.lower().replace(" ", "-")
    if key in GPUS:
        return GPUS[key]
    spec = spec_of_device_name(name)
    if spec is None:
        raise ValueError(f"unknown GPU {name!r}: give one of {', '.join(GPUS)}")
    return spec


def spec_of_device_name(device_name: str) -> GPUSpec | None:
    """The GPUS entry whose most specific name fragment occurs in a CUDA device name."""
    matches = [(len(f), spec) for spec in GPUS.values() for f in spec.name_fragments
               if f in device_name]
    return max(matches, key=lambda m: m[0])[1] if matches else None


@functools.lru_cache(maxsize=None)
def _cpu_matmul_peak(threads: int, n: int = 2048, repeats: int = 4,
                     cpu_time: bool = False) -> float:
    """fp32 matmul rate measured on this machine (best of a few 2048^2 products). With
    `cpu_time`: FLOPs per second of the process's CPU time spread over the threads, which
    other jobs on shared cores do not stretch as they stretch wall time."""
    clock = time.process_time if cpu_time else time.perf_counter
    scale = threads if cpu_time else 1
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        a @ b
        best = min(best, (clock() - t0) / scale)
    return 2 * n**3 / best if best > 0 else float("nan")


def peak_flops(device: torch.device, amp: torch.dtype | None) -> float | None:
    if device.type == "cpu":
        return _cpu_matmul_peak(torch.get_num_threads())
    if device.type == "cuda":
        spec = spec_of_device_name(torch.cuda.get_device_name(device))
        if spec is not None:
            # fp32 matmuls run as TF32 only when enabled; then half of bf16's rate.
            return spec.bf16_flops if amp == torch.bfloat16 else spec.bf16_flops / 2
    return None


class PeakMemory:
    """Peak memory: allocated bytes on CUDA; the process's resident high-water mark on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            # Arms train one after another in one process: reset the high-water mark
            # (Linux: "5" > clear_refs) so each arm reports its own peak, not an earlier one's.
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the platform has none): measured speed
    is judged by it, since a busy machine makes time ratios noise."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
