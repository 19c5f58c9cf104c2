"""How much information the Free Transformer's latent carries, beside what it costs.

The KL per token, KL(Q(Z_t|S) ‖ P) with P uniform, is the rate the model pays for Z. It
bounds the information Z carries but does not measure it: an encoder that outputs the
same non-uniform bit probabilities at every position pays a KL and tells the decoder
nothing. The mutual information separates the two:

    I(X; Z) ≈ mean_t KL(Q_t ‖ P) − KL(Q̄ ‖ P),   Q̄ = mean_t Q_t (the aggregate posterior),

which equals mean_t KL(Q_t ‖ Q̄) = H(Q̄) − mean_t H(Q_t): zero when every position gets
the same posterior, whatever the KL.

Approximation (stated in the report too). Q_t factorises over the H bits, but Q̄, a
mixture of N factorised distributions over 2^H codes, does not. Q̄ is replaced by the
product of its per-bit marginals p̄_h = mean_t σ(L_{t,h}), which gives

    MI ≈ Σ_h [ H_b(p̄_h) − mean_t H_b(σ(L_{t,h})) ]   (bits per token),

the sum over bits of I(position; B_h). Since H(Q̄) ≤ Σ_h H_b(p̄_h), this is an UPPER
bound on the mixture's mutual information (it counts twice what redundant bits say), so
an estimate near zero proves the latent unused; a large one does not prove it useful.
Two further limits: it is the information about which of the N validation positions Z_t
came from (at most log2 N bits), measured on a finite sample, so it is biased upward a
little; and it counts information about the position t itself, which the decoder already
has. `mi_content_bits` removes the latter by aggregating per position across sequences
(Q̄_t = mean over sequences at position t): I(S; Z_t | t), the information about the
sequence beyond its position (needs at least two sequences).

The statistics are sums, so validation batches (and ranks) can be accumulated apart and
combined: `LatentInfoAccumulator`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)
# Below this many bits per token the latent carries (almost) nothing, whatever its KL.
UNUSED_MI_BITS = 0.01


def binary_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """H_b(p) in bits, 0 at p in {0, 1}."""
    p = p.double()
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / LN2


def _entropy_of_logits_bits(logits: torch.Tensor) -> torch.Tensor:
    """H_b(σ(L)) in bits, stable for large |L| (where σ rounds to 0 or 1)."""
    x = logits.double()
    p = torch.sigmoid(x)
    return -(p * F.logsigmoid(x) + (1 - p) * F.logsigmoid(-x)) / LN2


@dataclass(frozen=True)
class LatentInfo:
    kl_bits: float
    """mean_t KL(Q_t ‖ uniform), bits/token: what Z costs."""
    mi_bits: float
    """The per-bit estimate of I(X; Z_t) above, bits/token: what Z carries (upper bound)."""
    mi_content_bits: float | None
    """I(S; Z_t | t), the same estimate with Q̄ taken per position: None for one sequence."""
    logit_std: float
    """Standard deviation of the bit logits across all positions, averaged over the bits:
    0 when the encoder answers the same at every position."""
    n_tokens: int

    @property
    def unused(self) -> bool:
        return self.mi_bits < UNUSED_MI_BITS

    def as_dict(self) -> dict:
        return {**asdict(self), "unused": self.unused}


class LatentInfoAccumulator:
    """Sums over validation tokens from which `LatentInfo` is computed; `add` batches as
    they come, `tensors`/`load_tensors` to combine ranks (sum or mean: only ratios of the
    sums are used)."""

    def __init__(self):
        self.sum_p = None       # (H,) Σ_t p_{t,h}
        self.sum_h = None       # (H,) Σ_t H_b(p_{t,h})
        self.sum_l = None       # (H,) Σ_t L_{t,h}
        self.sum_l2 = None      # (H,) Σ_t L_{t,h}^2
        self.pos_p = None       # (T, H) Σ_sequences p_{t,h}
        self.pos_n = None       # (T,) sequences seen at t
        self.n = None           # () tokens

    def add(self, logits_BTH: torch.Tensor, valid_BT: torch.Tensor | None = None) -> None:
        x = logits_BTH.detach().double()
        B, T, H = x.shape
        w = (torch.ones(B, T, dtype=torch.float64, device=x.device) if valid_BT is None
             else valid_BT.to(x.device, torch.float64))
        p = torch.sigmoid(x)
        wx = w[..., None]
        parts = {"sum_p": (p * wx).sum((0, 1)),
                 "sum_h": (_entropy_of_logits_bits(x) * wx).sum((0, 1)),
                 "sum_l": (x * wx).sum((0, 1)), "sum_l2": (x * x * wx).sum((0, 1)),
                 "n": w.sum()}
        pos_p, pos_n = (p * wx).sum(0), w.sum(0)
        first = self.n is None
        for name, value in parts.items():
            old = getattr(self, name)
            setattr(self, name, value if old is None else old + value)
        if first:
            self.pos_p, self.pos_n = pos_p, pos_n
        elif self.pos_p is not None and self.pos_p.shape[0] == T:
            self.pos_p, self.pos_n = self.pos_p + pos_p, self.pos_n + pos_n
        else:
            # Batches of other lengths: positions no longer line up; drop the per-position part.
            self.pos_p = self.pos_n = None

    _FIELDS = ("sum_p", "sum_h", "sum_l", "sum_l2", "pos_p", "pos_n", "n")

    def tensors(self) -> list[torch.Tensor]:
        if self.n is None:
            raise ValueError("no encoder logits were added")
        return [getattr(self, k) for k in self._FIELDS]

    def load_tensors(self, tensors: list[torch.Tensor]) -> None:
        for k, v in zip(self._FIELDS, tensors):
            setattr(self, k, v)

    def result(self) -> LatentInfo:
        n = float(self.tensors()[-1])
        if n <= 0:
            raise ValueError("no valid positions were added")
        H = self.sum_p.shape[0]
        p_bar = self.sum_p / n
        mean_h = self.sum_h / n
        mi = (binary_entropy_bits(p_bar) - mean_h).clamp(min=0.0).sum()
        var = (self.sum_l2 / n - (self.sum_l / n) ** 2).clamp(min=0.0)
        content = None
        if self.pos_n is not None and float(self.pos_n.max()) >= 2:
            seen = self.pos_n > 0
            p_t = self.pos_p[seen] / self.pos_n[seen, None]
            # H_b(p̄_t) weighted by the tokens at t, as mean_h weights every token once.
            h_pos = (binary_entropy_bits(p_t) * self.pos_n[seen, None]).sum(0) / n
            content = float((h_pos - mean_h).clamp(min=0.0).sum())
        return LatentInfo(kl_bits=float((H - self.sum_h.sum() / n)),
                          mi_bits=float(mi), mi_content_bits=content,
                          logit_std=float(var.sqrt().mean()), n_tokens=int(round(n)))


def latent_info(logits_BTH: torch.Tensor, valid_BT: torch.Tensor | None = None) -> LatentInfo:
    """`LatentInfo` of one batch of encoder bit logits (B, T, H)."""
    acc = LatentInfoAccumulator()
    acc.add(logits_BTH, valid_BT)
    return acc.result()


def exact_mixture_mi_bits(logits_NH: torch.Tensor) -> float:
    """H(Q̄) − mean_t H(Q_t) over all 2^H codes, for small H: the quantity the per-bit
    estimate bounds from above (tests, and a check of the bound's slack)."""
    x = logits_NH.double()
    N, H = x.shape
    if H > 16:
        raise ValueError("exact mixture MI enumerates 2^H codes; H is too large")
    codes = ((torch.arange(2 ** H)[:, None] >> torch.arange(H)) & 1).double()  # (C, H)
    log_q = F.logsigmoid(x) @ codes.T + F.logsigmoid(-x) @ (1 - codes).T     # (N, C)
    q_bar = log_q.exp().mean(0)
    h_bar = -torch.special.xlogy(q_bar, q_bar).sum() / LN2
    h_each = _entropy_of_logits_bits(x).sum(1).mean()
    return float(h_bar - h_each)


FILE = "latent_info.json"


@torch.no_grad()
def measure_arm(arm_dir: Path, val_tokens=None, seq_len: int | None = None,
                max_windows: int = 64, batch_size: int = 8) -> LatentInfo:
    """`LatentInfo` of an exported Free arm on its run's validation split (the first
    `max_windows` windows of seq_len tokens), for arms trained before training logged it."""
    import numpy as np

    from ftbench.data.pipeline import open_prepared
    from ftbench.training.export import load_pretrained

    arm_dir = Path(arm_dir)
    model, _, meta = load_pretrained(arm_dir)
    if meta.get("arch") != "free":
        raise ValueError(f"{arm_dir} is not a Free Transformer (arch {meta.get('arch')!r})")
    seq_len = seq_len or ((meta.get("pair_config") or {}).get("data", {}).get("seq_len")
                          or model.cfg.max_seq_len)
    if val_tokens is None:
        data_dir = arm_dir.parent / "data" / str(meta.get("data_key"))
        prepared = open_prepared(data_dir)
        if prepared is None:
            raise FileNotFoundError(f"no prepared data at {data_dir}; pass the validation tokens")
        val_tokens = prepared.val
    n = min(max_windows, len(val_tokens) // seq_len)
    if n < 1:
        raise ValueError("the validation split is shorter than one sequence")
    acc = LatentInfoAccumulator()
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        batch = torch.from_numpy(np.stack([np.asarray(val_tokens[k * seq_len:(k + 1) * seq_len],
                                                      dtype=np.int64) for k in rows]))
        acc.add(model.latent_logits(batch))
    return acc.result()


def write_arm_info(arm_dir: Path, info: LatentInfo, source: str) -> Path:
    from ftbench.report.render import write_atomic

    path = Path(arm_dir) / FILE
    write_atomic(path, json.dumps({**info.as_dict(), "source": source}, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m ftbench.diagnostics.latent_info",
        description="Mutual information carried by a Free arm's latent, on its validation "
                    f"split; written to <arm>/{FILE} for the report.")
    ap.add_argument("arms", nargs="+", type=Path, help="exported Free arm folders")
    ap.add_argument("--windows", type=int, default=64, help="validation sequences to read")
    args = ap.parse_args(argv)
    from ftbench.training.export import ModelLoadError

    for arm in args.arms:
        try:
            info = measure_arm(arm, max_windows=args.windows)
        except (ValueError, FileNotFoundError, ModelLoadError) as e:
            print(f"error: {arm}: {e}", file=sys.stderr)
            return 2
        path = write_arm_info(arm, info, f"validation split, {info.n_tokens} tokens")
        flag = "  LATENT UNUSED" if info.unused else ""
        content = ("n/a" if info.mi_content_bits is None else f"{info.mi_content_bits:.4f}")
        print(f"{arm}: KL {info.kl_bits:.4f} bit/token, MI {info.mi_bits:.4f} (beyond "
              f"position {content}), logit sd {info.logit_std:.4f}{flag} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
