"""Peak FLOP rates (for model-FLOPs utilisation) and peak memory, per device."""

from __future__ import annotations

import functools
import os
import time

import torch

# Dense tensor-core peaks (no sparsity), FLOP/s, by device-name fragment.
_GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                  "A10G": 125e12, "4090": 165e12}


@functools.lru_cache(maxsize=None)
def _cpu_matmul_peak(threads: int, n: int = 2048, repeats: int = 4) -> float:
    """fp32 matmul rate measured on this machine (best of a few 2048^2 products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, amp: torch.dtype | None) -> float | None:
    if device.type == "cpu":
        return _cpu_matmul_peak(torch.get_num_threads())
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in _GPU_BF16_PEAK.items():
            if key in name:
                return peak if amp == torch.bfloat16 else peak / 2  # tf32 is half of bf16
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
