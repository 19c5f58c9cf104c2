"""NCCL's device rule, enforced on CPU: collectives take device tensors only.

NCCL serves CUDA tensors and nothing else: a CPU tensor handed to `all_reduce` on an
NCCL-only process group raises "No backend type associated with device type cpu". On a
CPU machine every rank runs gloo, which takes CPU tensors, so a loop that all-reduces
`torch.tensor(python_float)` passes every CPU test and dies on the first GPU step.

With FTBENCH_DEVICE_RULE=nccl (set by the distributed tests; `install()` directly), a CPU
process tells host tensors from device tensors even though both live in CPU memory:

- host: made by a factory call that names no device (`torch.tensor(x)`, `torch.zeros(n)`),
  by `torch.from_numpy`, or by `.cpu()` - what lands in host memory on a GPU machine too;
- device: made with an explicit `device=` or moved with `.to(device)`, and everything the
  model, the optimiser or autograd computes from device tensors;
- an op's result is a host tensor when all its tensor inputs are host tensors.

Every tensor collective then refuses a host tensor with NCCL's own message. Object
collectives (`broadcast_object_list`, `gather_object`, ...) are exempt: torch moves their
byte tensors to the device itself when the backend is NCCL.

What it cannot see: an explicit `device="cpu"` or `.to("cpu")` counts as placed (on CPU
the run's device is "cpu"), and CUDA's own same-device checks between tensors of one op.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

ENV = "FTBENCH_DEVICE_RULE"

NCCL_MESSAGE = "No backend type associated with device type cpu"

_FACTORIES = {
    torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.zeros, torch.ones, torch.empty,
    torch.full, torch.arange, torch.linspace, torch.rand, torch.randn, torch.randint,
    torch.randperm, torch.eye, torch.empty_strided,
}
_TENSOR_COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
    "reduce_scatter_tensor", "broadcast", "reduce", "gather", "scatter", "all_to_all",
    "all_to_all_single", "send", "recv", "isend", "irecv",
)
_OBJECT_COLLECTIVES = ("all_gather_object", "gather_object", "broadcast_object_list",
                       "scatter_object_list")


class HostTensors(TorchFunctionMode):
    """Marks host tensors as they are made (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.host = WeakIdKeyDictionary()
        self.exempt = 0

    def is_host(self, t: torch.Tensor) -> bool:
        return self.exempt == 0 and t in self.host

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            if isinstance(out, (tuple, list)) and func not in _FACTORIES:
                self._mark_all(out, self._inputs_on_host(args, kwargs))
            return out
        if func in _FACTORIES:
            self._set(out, kwargs.get("device") is None)
        elif func is torch.Tensor.cpu:
            self._set(out, True)
        elif func is torch.Tensor.to or func is torch.Tensor.cuda:
            target = _to_target(args, kwargs) if func is torch.Tensor.to else "cuda"
            if isinstance(target, torch.Tensor):  # .to(other): where other is
                self._set(out, target in self.host)
            else:
                self._set(out, args[0] in self.host if target is None else False)
        elif kwargs.get("device") is not None:  # zeros_like(x, device=...), x.new_zeros(...)
            self._set(out, False)
        elif args and out is args[0]:
            pass  # in place (copy_, add_, ...): the destination stays where it is
        else:
            self._set(out, self._inputs_on_host(args, kwargs))
        return out

    def _inputs_on_host(self, args, kwargs) -> bool:
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        return bool(tensors) and all(t in self.host for t in tensors)

    def _mark_all(self, outs, host: bool) -> None:
        for t in tree_flatten(outs)[0]:
            if isinstance(t, torch.Tensor):
                self._set(t, host)

    def _set(self, t: torch.Tensor, host: bool) -> None:
        if host:
            self.host[t] = True
        else:
            self.host.pop(t, None)


def _to_target(args, kwargs):
    """What a `Tensor.to(...)` call moves to: a device, another tensor, or None."""
    if kwargs.get("device") is not None:
        return kwargs["device"]
    for a in args[1:]:
        if isinstance(a, (str, torch.device, torch.Tensor)):
            return a
    return None


_mode: HostTensors | None = None


def installed() -> bool:
    return _mode is not None


def install() -> HostTensors:
    """Enforce the rule in this process from now on (idempotent)."""
    global _mode
    if _mode is not None:
        return _mode
    _mode = HostTensors()
    _mode.__enter__()
    torch.from_numpy = _from_numpy(torch.from_numpy)  # not routed through function modes
    for module in (dist, dist.distributed_c10d):
        for name in _TENSOR_COLLECTIVES:
            if hasattr(module, name):
                setattr(module, name, _refusing(getattr(module, name), name))
        for name in _OBJECT_COLLECTIVES:
            if hasattr(module, name):
                setattr(module, name, _exempt(getattr(module, name)))
    return _mode


def install_from_env() -> bool:
    """install() when FTBENCH_DEVICE_RULE=nccl; CPU only (a GPU enforces the real rule)."""
    value = os.environ.get(ENV, "")
    if not value:
        return False
    if value != "nccl":
        raise ValueError(f"{ENV}={value!r}: the only rule is 'nccl'")
    if torch.cuda.is_available():
        return False
    install()
    return True


def _wrap_once(fn, wrapper):
    """`wrapper` standing in for `fn`, unless `fn` is already one of ours (install twice)."""
    if getattr(fn, "_ftbench_device_rule", False):
        return fn
    wrapper = functools.wraps(fn)(wrapper)
    wrapper._ftbench_device_rule = True
    return wrapper


def _refusing(fn, name: str):
    def wrapper(*args, **kwargs):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and _mode is not None and _mode.is_host(t):
                raise RuntimeError(
                    f"{NCCL_MESSAGE} (dist.{name} got a host tensor of shape "
                    f"{tuple(t.shape)}: NCCL takes tensors on the run's device only; make it "
                    "with device=... or move it with .to(device))")
        return fn(*args, **kwargs)
    return _wrap_once(fn, wrapper)


def _from_numpy(fn):
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if _mode is not None:
            _mode.host[out] = True
        return out
    return _wrap_once(fn, wrapper)


def _exempt(fn):
    def wrapper(*args, **kwargs):
        if _mode is None:
            return fn(*args, **kwargs)
        _mode.exempt += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _mode.exempt -= 1
    return _wrap_once(fn, wrapper)
