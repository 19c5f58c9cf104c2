"""Build either architecture on any device, with weights that depend only on (seed, name).

Every parameter is drawn from its own generator, seeded by the run seed and the
parameter's name. A baseline and a Free Transformer built from one seed therefore share
their decoder weights exactly, whatever extra modules the Free model has and whatever
order they are created in; and a model built on the meta device, moved with
`to_empty()`, gets the same weights as one built directly.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ftbench.model.baseline import BaselineDecoder
from ftbench.model.blocks import Rotary, output_projection_std
from ftbench.model.config import ARCHITECTURES, ConfigError, ModelConfig
from ftbench.model.free_transformer import FreeTransformer

_CLASSES = {"baseline": BaselineDecoder, "free": FreeTransformer}


def model_class(arch: str) -> type[BaselineDecoder]:
    if arch not in _CLASSES:
        raise ConfigError(f"arch: {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    return _CLASSES[arch]


WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.")


def canonical_name(name: str) -> str:
    """A parameter's name without torch.compile / activation-checkpointing wrappers, so
    seeds, checkpoints and exports do not depend on those run-time choices."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def param_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def init_std_for(cfg: ModelConfig, name: str) -> float | None:
    """The init std of a parameter by name; None means ones (norm gains)."""
    if name.endswith("norm.weight"):
        return None
    if name.endswith(("attn.wo.weight", "mlp.w2.weight")):
        return output_projection_std(cfg)
    # Embeddings, projections, zeta, readout and W_post: the standard init (the paper
    # leaves W_post, the readout and zeta unstated).
    return cfg.init_std


def _copy_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full tensor into a parameter, or into its local shard under FSDP2."""
    if hasattr(param, "device_mesh"):  # a DTensor
        from torch.distributed.tensor import distribute_tensor

        shard = distribute_tensor(full.to(param.device), param.device_mesh, param.placements)
        param.to_local().copy_(shard.to_local())
    else:
        param.copy_(full.to(param.device))


@torch.no_grad()
def init_weights(model: BaselineDecoder, seed: int) -> None:
    cfg = model.cfg
    for name, param in model.named_parameters():
        name = canonical_name(name)
        std = init_std_for(cfg, name)
        if std is None:
            _copy_full(param, torch.ones(param.shape, dtype=param.dtype))
            continue
        # Drawn on the CPU so that weights do not depend on the device.
        g = torch.Generator().manual_seed(param_seed(seed, name))
        values = (torch.randn(param.shape, generator=g, dtype=torch.float32) * std).to(param.dtype)
        _copy_full(param, values)
    for module in model.modules():
        if isinstance(module, Rotary):
            module.reset_tables()


def build_model(cfg: ModelConfig, arch: str, *, seed: int | None = 0,
                device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> BaselineDecoder:
    """Build on the meta device, then materialise on `device` and initialise from `seed`.

    `device="meta"` returns a model with shapes only (free to inspect at any size);
    `seed=None` leaves the materialised weights uninitialised (they are about to be
    loaded from a checkpoint).
    """
    cls = model_class(arch)
    cfg.validate(arch)
    with torch.device("meta"):
        model = cls(cfg)
    if torch.device(device).type == "meta":
        return model
    model = model.to_empty(device=device).to(dtype)
    if seed is not None:
        init_weights(model, seed)
    else:
        for module in model.modules():
            if isinstance(module, Rotary):
                module.reset_tables()
    return model


def shared_parameter_names(baseline: nn.Module, free: nn.Module) -> list[str]:
    """The names both models have: the decoder that a pair starts from identically."""
    free_names = dict(free.named_parameters())
    return [n for n, _ in baseline.named_parameters() if n in free_names]
