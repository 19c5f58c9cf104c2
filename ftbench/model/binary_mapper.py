"""The Binary Mapper (paper section 3.4) and the KL of its code distribution.

The encoder gives H logits L_t per token. Bits are sampled independently,
P(B_h = 1) = sigmoid(L_h), and the code index is idx = sum_h 2^h b_h. The output is
R_t = (Y_t + G_t - sg(G_t)) W_post, where Y_t is the one-hot of idx and G_t the
probabilities of all 2^H codes (Eq. 8): the value is the gathered row W_post[idx],
the gradient reaches L through every one of the 2^H codes.

Neither the one-hot nor G is ever materialised for the whole batch: forward is a gather,
backward walks the tokens in chunks so its memory depends on the chunk, not on the
number of tokens times 2^H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_CODE_BITS: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def code_bits(n_bits: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """U: the (2^H, H) matrix whose row d holds the bits of d, least significant first."""
    key = (n_bits, torch.device(device), dtype)
    if key not in _CODE_BITS:
        d = torch.arange(2**n_bits, device=device)
        _CODE_BITS[key] = ((d[:, None] >> torch.arange(n_bits, device=device)) & 1).to(dtype)
    return _CODE_BITS[key]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are promoted: G is about 2^-H near the prior."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def sample_codes(logits_NH: torch.Tensor, generator: torch.Generator | None = None,
                 uniform_NH: torch.Tensor | None = None) -> torch.Tensor:
    """Sample idx = sum_h 2^h b_h with b_h ~ Bernoulli(sigmoid(L_h)), over any leading dims.

    Sampling happens at evaluation and prefill too: the paper keeps the VAE stochastic.
    `uniform_NH` (U(0,1) draws of the logits' shape) replaces the generator when the
    caller seeds the draws itself, e.g. per sequence so that sharding cannot change them.
    """
    n_bits = logits_NH.shape[-1]
    if uniform_NH is not None:
        u_NH = uniform_NH
    else:
        gen_device = generator.device if generator is not None else logits_NH.device
        u_NH = torch.rand(logits_NH.shape, generator=generator, device=gen_device)
    bits_NH = (u_NH.to(logits_NH.device) < torch.sigmoid(logits_NH.detach().float())).long()
    weights_H = 2 ** torch.arange(n_bits, device=logits_NH.device)
    return (bits_NH * weights_H).sum(-1)


def sample_uniform_codes(shape, n_bits: int, device: torch.device,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """The prior: code indices uniform on {0 .. 2^H - 1}, i.i.d."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, 2**n_bits, shape, generator=generator, device=gen_device).to(device)


def code_probabilities(logits_NH: torch.Tensor) -> torch.Tensor:
    """G_N,2^H: the probability of every code, as a Kronecker product of the per-bit
    (1-p, p) pairs. Costs about 2 * 2^H multiplies per token and no exp."""
    p_NH = torch.sigmoid(_at_least_fp32(logits_NH))
    G = torch.ones(p_NH.shape[0], 1, dtype=p_NH.dtype, device=p_NH.device)
    for h in range(p_NH.shape[1]):
        # Bit h becomes the most significant so far: [codes with b_h = 0 | with b_h = 1].
        G = torch.cat((G * (1 - p_NH[:, h:h + 1]), G * p_NH[:, h:h + 1]), dim=-1)
    return G


class _BinaryMapper(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_NH, weight_CD, idx_N, tiles):
        ctx.save_for_backward(logits_NH, weight_CD, idx_N)
        ctx.tiles = tiles
        # Backward runs outside autocast: decide the matmul precision from the forward's.
        ctx.matmul_dtype = tiles.matmul_dtype(logits_NH.device.type)
        return F.embedding(idx_N, weight_CD)

    @staticmethod
    def backward(ctx, grad_ND):
        logits_NH, weight_CD, idx_N = ctx.saved_tensors
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[1]:
            # Only Y carries value, so W_post's gradient is the embedding's scatter-add.
            grad_weight = torch.zeros_like(weight_CD).index_add_(0, idx_N, grad_ND.to(weight_CD.dtype))
        if ctx.needs_input_grad[0]:
            grad_logits = _logits_grad(logits_NH, weight_CD, grad_ND, ctx.tiles,
                                       ctx.matmul_dtype)
        return grad_logits, grad_weight, None, None


def _logits_grad(logits_NH, weight_CD, grad_ND, tiles: "MapperTiles",
                 matmul_dtype: torch.dtype | None = None):
    """dl/dL_{t,h} = sum_d a_{t,d} G_{t,d} (U_h(d) - sigmoid(L_{t,h})), a = g W_post^T.

    The code index splits into low and high halves of the bits, d = lo + 2^H_lo * hi, so
    G_{t,d} = G^lo_{t,lo} G^hi_{t,hi}. For a tile of codes and a chunk of tokens, a^T seen
    as (hi, lo, c) is written by a GEMM, scaled in place by G^lo and summed over lo by a
    batched matmul; G^hi weights the small result. G is never built, and the scratch is
    one (codes tile x token chunk) buffer, whatever the number of tokens.

    `matmul_dtype` bf16: the GEMM a = g W_post^T (nearly all of the FLOPs) reads bf16
    copies of g and W_post and accumulates in fp32; everything after it (a, G, A and the
    sums over 2^H codes) stays fp32, since G is about 2^-H near the prior and a bf16 sum
    of 65,536 terms would lose the gradient. On CUDA the GEMM writes fp32 directly
    (out_dtype); elsewhere its bf16 result is widened, one more rounding of a.
    """
    N, H = logits_NH.shape
    H_lo = H // 2
    n_lo, n_hi = 2**H_lo, 2 ** (H - H_lo)
    work = _at_least_fp32(logits_NH).dtype
    device = logits_NH.device
    # [1 | U_lo]^T: row 0 sums over lo, row 1+h keeps the codes whose low bit h is set.
    ones_U_lo_T = torch.cat((torch.ones(n_lo, 1, device=device, dtype=work),
                             code_bits(H_lo, device, work)), dim=1).t().contiguous()
    U_hi_T = code_bits(H - H_lo, device, work).t().contiguous()  # (H_hi, n_hi)
    lowp = matmul_dtype is not None and matmul_dtype != work
    gemm_dtype = matmul_dtype if lowp else work
    # One cast of W_post per backward (C x D x 2 bytes), not one per chunk.
    weight = weight_CD if weight_CD.dtype == gemm_dtype else weight_CD.to(gemm_dtype)
    grad_NH = torch.empty(N, H, dtype=work, device=device)
    c_max = min(tiles.tokens, N)
    hi_per_tile = max(1, min(n_hi, tiles.codes // n_lo))
    buf = torch.empty(hi_per_tile * n_lo * c_max, dtype=work, device=device)
    S = torch.empty(n_hi, 1 + H_lo, c_max, dtype=work, device=device)
    for s in range(0, N, c_max):
        e = min(s + c_max, N)
        c = e - s
        g_T = grad_ND[s:e].to(gemm_dtype).t()
        G_lo = code_probabilities(logits_NH[s:e, :H_lo]).t().contiguous()   # (n_lo, c)
        for h0 in range(0, n_hi, hi_per_tile):
            h1 = min(h0 + hi_per_tile, n_hi)
            aT = buf[:(h1 - h0) * n_lo * c].view((h1 - h0) * n_lo, c)
            if lowp:
                _mm_widened(weight[h0 * n_lo:h1 * n_lo], g_T, aT)
            else:
                torch.mm(weight[h0 * n_lo:h1 * n_lo], g_T, out=aT)         # a^T tile
            a3 = aT.view(h1 - h0, n_lo, c)
            a3.mul_(G_lo)
            torch.matmul(ones_U_lo_T, a3, out=S[h0:h1, :, :c])              # sum over lo
        S_c = S[:, :, :c]
        S_c.mul_(code_probabilities(logits_NH[s:e, H_lo:]).t()[:, None, :])  # times G^hi
        low = S_c.sum(0)                                                    # (1 + H_lo, c)
        high = U_hi_T @ S_c[:, 0, :]                                        # (H_hi, c)
        p_cH = torch.sigmoid(logits_NH[s:e].to(work))
        grad_NH[s:e] = torch.cat((low[1:], high), dim=0).t() - p_cH * low[0][:, None]
    return grad_NH.to(logits_NH.dtype)


_OUT_DTYPE_MM: dict[str, bool] = {}


def _mm_widened(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out (fp32) = a @ b for low-precision a, b, accumulated in fp32."""
    kind = a.device.type
    if _OUT_DTYPE_MM.get(kind, True):
        try:
            torch.mm(a, b, out_dtype=out.dtype, out=out)
            _OUT_DTYPE_MM[kind] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_MM[kind] = False  # e.g. CPU builds: no fp32-output bf16 GEMM
    out.copy_(torch.mm(a, b))


@dataclass(frozen=True)
class MapperTiles:
    """Work sizes of the chunked backward: scratch is tokens x codes x 4 bytes.

    `matmul`: precision of the GEMM a = g W_post^T. "auto": bf16 when the forward ran
    under bf16 autocast, else the input's (fp32, which CUDA runs as TF32 when
    torch.backends.cuda.matmul allows it); "bf16" or "fp32" force it.
    """

    tokens: int = 256
    codes: int = 4096
    matmul: str = "auto"

    def matmul_dtype(self, device_type: str) -> torch.dtype | None:
        if self.matmul == "bf16":
            return torch.bfloat16
        if self.matmul == "fp32":
            return None
        if self.matmul != "auto":
            raise ValueError(f"MapperTiles.matmul: {self.matmul!r} is not one of auto, bf16, fp32")
        if torch.is_autocast_enabled(device_type) and \
                torch.get_autocast_dtype(device_type) == torch.bfloat16:
            return torch.bfloat16
        return None

    @staticmethod
    def for_device(device: torch.device) -> "MapperTiles":
        return MapperTiles.for_device_type(torch.device(device).type)

    @staticmethod
    def for_device_type(device_type: str) -> "MapperTiles":
        # CPUs like cache-sized tiles; GPUs like few, large kernels (256 MiB of scratch).
        return MapperTiles(1024, 2**16) if device_type == "cuda" else MapperTiles()


def binary_mapper(logits_NH: torch.Tensor, weight_CD: torch.Tensor, idx_N: torch.Tensor,
                  tiles: MapperTiles | None = None) -> torch.Tensor:
    """R_N,D = W_post[idx] with the exact Eq. 8 gradient into the logits.

    idx_N must be the codes sampled from these logits (see `sample_codes`).
    """
    return _BinaryMapper.apply(logits_NH, weight_CD, idx_N,
                               tiles or MapperTiles.for_device(logits_NH.device))


def dense_binary_mapper(logits_NH: torch.Tensor, weight_CD: torch.Tensor,
                        idx_N: torch.Tensor) -> torch.Tensor:
    """Eq. 8 written literally with (N, 2^H) tensors: the reference the fast path is
    tested and benchmarked against. Never use it for training at H = 16."""
    U = code_bits(logits_NH.shape[-1], logits_NH.device, logits_NH.dtype)
    log_G = F.logsigmoid(logits_NH) @ U.t() + F.logsigmoid(-logits_NH) @ (1 - U).t()
    G = log_G.exp()
    Y = F.one_hot(idx_N, weight_CD.shape[0]).to(G.dtype)
    return (Y + G - G.detach()) @ weight_CD


def kl_to_uniform(logits_NH: torch.Tensor) -> torch.Tensor:
    """KL(Q(Z_t|S) || Uniform(2^H)) in nats per token: sum_h [log 2 - H_b(sigmoid(L_h))].

    Exact because the bits are independent under Q and under the uniform prior.
    """
    x = _at_least_fp32(logits_NH)
    p = torch.sigmoid(x)
    neg_entropy = p * F.logsigmoid(x) + (1 - p) * F.logsigmoid(-x)
    return (neg_entropy + math.log(2.0)).sum(-1)
