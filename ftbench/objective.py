"""Training objectives: next-token cross-entropy, and the Free Transformer's Eq. 5."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor | None) -> torch.Tensor:
    if mask_BT is None:
        return x_BT.mean()
    m = mask_BT.to(x_BT.dtype)
    return (x_BT * m).sum() / m.sum().clamp(min=1.0)


def token_cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """Per-token CE in nats, computed in fp32 whatever the logits' dtype."""
    return F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten(),
                           reduction="none").view_as(targets_BT)


def mean_cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor,
                       mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CE over the tokens where mask_BT is True (all by default), from logits."""
    return _masked_mean(token_cross_entropy(logits_BTV, targets_BT), mask_BT)


def lm_loss(ce: torch.Tensor) -> dict[str, torch.Tensor]:
    """The baseline's objective from its mean CE (the model's output given targets)."""
    return {"loss": ce, "ce": ce}


def free_transformer_loss(ce: torch.Tensor, kl_BT: torch.Tensor, kappa_nats: float,
                          mask_BT: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Eq. 5 with token-wise free bits: CE + mean_t max(0, KL_t - kappa), kappa in nats.

    `ce`: the mean CE over the same tokens (the model's output given targets, or
    `mean_cross_entropy`). The hinge is applied to each token's KL before any averaging;
    pad tokens (mask False) count in neither term.
    """
    hinge = _masked_mean(torch.clamp(kl_BT - kappa_nats, min=0.0), mask_BT)
    return {"loss": ce + hinge, "ce": ce, "hinge": hinge,
            "kl_nats": _masked_mean(kl_BT, mask_BT),
            "frac_above_kappa": _masked_mean((kl_BT > kappa_nats).float(), mask_BT)}


LN2 = 0.6931471805599453


def bits_to_nats(bits: float) -> float:
    """kappa is given to users in bits per token; the loss works in nats."""
    return bits * LN2


def nats_to_bits(nats: float) -> float:
    return nats / LN2
