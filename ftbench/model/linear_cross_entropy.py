"""The output projection fused with the cross-entropy: the full-vocabulary logits never
exist at once.

Materialised, the logits of N tokens cost N x V x (2 bf16 + 4 fp32 upcast + 4 fp32
log-softmax) bytes in the forward and about 12 N V in the backward: 96 GiB at 16 x 4,096
tokens and V = 2^17. Here the tokens go through in chunks of about CHUNK_ELEMENTS / V:
each chunk's logits, softmax and gradients are computed in the forward and freed before
the next, as in Liger's fused linear cross-entropy, so the loss never holds more than
one chunk's (chunk x V) buffers, and the backward only scales the gradients kept from the
forward (no second pass over the vocabulary). Numerics follow the unfused path: logits
in the input dtype, softmax and loss in fp32, gradients handed back in the input dtype;
the weight's gradient is summed over chunks in fp32.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 2**27
"""Logit entries per chunk (512 MiB in fp32): 1,024 tokens at V = 2^17."""


def chunk_tokens(vocab_size: int, chunk_elements: int | None = None) -> int:
    return max(1, (chunk_elements or CHUNK_ELEMENTS) // vocab_size)


def linear_cross_entropy(h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """mean_n CE(h_n W^T, targets_n) in fp32, without holding the (N, V) logits.

    Under autocast the matmuls run in the autocast dtype, as `h @ W.t()` would."""
    device_type = h_ND.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        h_ND, weight_VD = h_ND.to(dtype), weight_VD.to(dtype)
    elif h_ND.dtype != weight_VD.dtype:
        raise TypeError(f"h ({h_ND.dtype}) and the weight ({weight_VD.dtype}) differ in dtype")
    chunk = chunk or chunk_tokens(weight_VD.shape[0])
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (h_ND.requires_grad or weight_VD.requires_grad):
            return _LinearCrossEntropy.apply(h_ND, weight_VD, targets_N, chunk)
        return _loss_sum(h_ND, weight_VD, targets_N, chunk) / max(1, len(targets_N))


def _loss_sum(h_ND, weight_VD, targets_N, chunk) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float32, device=h_ND.device)
    for s in range(0, len(targets_N), chunk):
        logits = (h_ND[s:s + chunk] @ weight_VD.t()).float()
        y = targets_N[s:s + chunk]
        total += (torch.logsumexp(logits, dim=-1) - logits.gather(1, y[:, None])[:, 0]).sum()
    return total


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_ND, weight_VD, targets_N, chunk):
        N = len(targets_N)
        scale = 1.0 / max(1, N)
        total = torch.zeros((), dtype=torch.float32, device=h_ND.device)
        grad_h = torch.empty_like(h_ND) if ctx.needs_input_grad[0] else None
        grad_w = (torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
                  if ctx.needs_input_grad[1] else None)
        for s in range(0, N, chunk):
            h = h_ND[s:s + chunk]
            y = targets_N[s:s + chunk]
            logits = (h @ weight_VD.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None])[:, 0]).sum()
            # d(mean CE)/d logits = (softmax - onehot) / N, built in the logits' buffer.
            g = logits.sub_(lse[:, None]).exp_()
            g.scatter_add_(1, y[:, None], torch.full_like(y[:, None], -1.0, dtype=g.dtype))
            g = g.mul_(scale).to(h.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = g @ weight_VD
            if grad_w is not None:
                _accumulate(grad_w, g.t(), h)
            del logits, g
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight_VD.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def _accumulate(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out (fp32) += a @ b, accumulated in fp32 also for low-precision a and b."""
    if a.dtype == torch.float32:
        out.addmm_(a, b)
        return
    try:
        out.add_(torch.mm(a, b, out_dtype=torch.float32))
    except (RuntimeError, TypeError, NotImplementedError):  # builds without fp32-output GEMMs
        out.add_(torch.mm(a, b).float())
