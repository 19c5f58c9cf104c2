"""What a traced training step does, op by op: FLOPs, memory traffic, collectives, memory.

Two dispatch modes for ftbench.doctor.rehearsal, which runs a real training step on fake
tensors (shapes, dtypes and devices, no data) under a fake process group:

- `OpLog` counts, per phase of the step, the FLOPs of matmuls and attention, the bytes
  that every other (memory-bound) op reads and writes, and every collective: its op,
  bytes, dtype, the process group's ranks, and whether a host tensor was handed to it
  (which NCCL refuses; see ftbench.training.device_rule).
- `MemoryTracker` is torch's FSDPMemTracker (peak memory per rank by category: sharded
  and gathered parameters, gradients, optimiser state, activations, temporaries), taught
  FSDP2's grouped units: ftbench shards the encoder with W_post as one unit, and the
  stock tracker would replace the group's forward hooks by per-module ones, resharding
  W_post before the Binary Mapper reads it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional")
_NOT_COLLECTIVES = {"wait_tensor", "wait", "monitored_barrier_"}
# Bus bytes per byte of the full tensor on n ranks (ring algorithms, as NCCL's busbw).
_RING = {"allreduce_": 2.0, "all_reduce": 2.0, "_allgather_base_": 1.0,
         "all_gather_into_tensor": 1.0, "allgather_": 1.0, "_reduce_scatter_base_": 1.0,
         "reduce_scatter_tensor": 1.0, "reduce_scatter_": 1.0, "broadcast_": 1.0,
         "broadcast": 1.0}
_ATTENTION = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention",
              "_scaled_dot_product_flash_attention_for_cpu")


@dataclass
class Collective:
    op: str
    phase: str
    bytes: int
    """The full tensor's size: the gathered output, the reduce-scatter's input."""
    dtype: str
    ranks: int
    group_ranks: tuple
    host_tensors: int
    after_compute: bool
    """Whether any compute of the phase came before it (else it cannot be overlapped)."""
    before_compute: bool = False

    @property
    def bus_bytes(self) -> float:
        n = max(1, self.ranks)
        return _RING.get(self.op, 1.0) * self.bytes * (n - 1) / n


@dataclass
class PhaseCounts:
    flops: float = 0.0
    attention_flops: float = 0.0
    memory_bytes: float = 0.0
    ops: int = 0
    flops_by_op: dict = field(default_factory=dict)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _attention_flops(name: str, args, kwargs, out) -> float:
    """QK^T and AV (forward, 2 matmuls) or their gradients (backward, 4 matmuls: the
    convention of torch's flop counter and of ftbench.model.accounting, which counts
    training as 3 forwards). Causal attention counts the unmasked half, as flash kernels
    skip the masked tiles."""
    q, k = args[0], args[1]
    if name.endswith("_backward"):
        q, k = args[1], args[2]  # (grad_out, query, key, value, ...)
    B, Hq, Tq, d = q.shape
    Tk = k.shape[-2]
    causal = bool(kwargs.get("is_causal", False))
    if not causal:
        for a in args:
            if isinstance(a, bool):
                causal = causal or a  # is_causal is the only positional bool
    mult = 8 if name.endswith("_backward") else 4
    flops = mult * B * Hq * Tq * Tk * d
    return flops / 2 if causal and Tq == Tk else flops


class OpLog(TorchDispatchMode):
    """Counts FLOPs, memory-bound bytes and collectives of what runs under it, by phase
    (set `.phase`). `host_check(tensor) -> bool` says whether a tensor is a host tensor
    (ftbench.training.device_rule); `node_of(rank)` maps a rank to its node."""

    def __init__(self, host_check=None, node_of=None):
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.flop_registry = flop_registry
        self.host_check = host_check or (lambda t: False)
        self.node_of = node_of or (lambda r: 0)
        self.phase = "step"
        self.phases: dict[str, PhaseCounts] = {}
        self.collectives: list[Collective] = []
        self._pending: list[Collective] = []

    def counts(self, phase: str) -> PhaseCounts:
        return self.phases.setdefault(phase, PhaseCounts())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        from torch.distributed.tensor import DTensor

        if any(t is DTensor or (isinstance(t, type) and issubclass(t, DTensor)) for t in types):
            return NotImplemented  # let DTensor desugar into local ops first
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        namespace = func.namespace
        c = self.counts(self.phase)
        c.ops += 1
        if namespace in COLLECTIVE_NAMESPACES:
            if name not in _NOT_COLLECTIVES:
                self._collective(name, args, kwargs, out)
            return out
        flops = 0.0
        if name in _ATTENTION or name.removesuffix("_backward") in _ATTENTION:
            flops = _attention_flops(name, args, kwargs, out)
            c.attention_flops += flops
        elif func._overloadpacket in self.flop_registry:
            flops = self.flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        if flops:
            c.flops += flops
            c.flops_by_op[name] = c.flops_by_op.get(name, 0.0) + flops
            for coll in self._pending:
                coll.before_compute = True
            self._pending = []
            self._computed = True
        elif not func.is_view and not _is_free(func):
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            if outs:  # an op that returns no tensor reads metadata (prim.device, sizes)
                ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
                c.memory_bytes += sum(_nbytes(t) for t in ins + outs)
        return out

    _computed = False

    def new_phase(self, phase: str, same_step: bool = False) -> None:
        """Count what follows as `phase`; `same_step`: a collective that no compute
        followed in the previous phase may still be overlapped by this one's."""
        self.phase = phase
        if not same_step:
            self._computed = False
            self._pending = []

    def _collective(self, name, args, kwargs, out) -> None:
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        size = max([_nbytes(t) for t in tensors + outs] or [0])
        group = _group_ranks(args, kwargs)
        dtype = str(tensors[0].dtype).removeprefix("torch.") if tensors else "?"
        host = sum(1 for t in tensors if self.host_check(t))
        coll = Collective(op=name, phase=self.phase, bytes=size, dtype=dtype,
                          ranks=len(group), group_ranks=tuple(group), host_tensors=host,
                          after_compute=self._computed)
        self.collectives.append(coll)
        self._pending.append(coll)

    def nodes_spanned(self, coll: Collective) -> int:
        return len({self.node_of(r) for r in coll.group_ranks}) or 1


def _is_free(func) -> bool:
    """Ops that move no data: allocation without a fill, metadata."""
    return func._overloadpacket.__name__ in ("empty", "empty_strided", "empty_like",
                                             "detach", "alias", "lift_fresh", "_unsafe_view",
                                             "set_", "resize_", "record_stream")


def _group_ranks(args, kwargs) -> list[int]:
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    for a in tree_flatten((args, kwargs))[0]:
        group = None
        if isinstance(a, str):
            try:
                group = c10d._resolve_process_group(a)
            except Exception:
                continue
        elif isinstance(a, torch.ScriptObject) or type(a).__name__ == "ProcessGroup":
            group = a
            if isinstance(a, torch.ScriptObject):
                try:
                    group = dist.ProcessGroup.unbox(a)
                except Exception:
                    continue
        if group is not None:
            try:
                return dist.get_process_group_ranks(group)
            except Exception:
                return list(range(group.size()))
    return list(range(dist.get_world_size())) if dist.is_initialized() else [0]


def memory_tracker(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """FSDPMemTracker over `model`, with FSDP2's grouped units kept as groups."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    class GroupAwareMemTracker(FSDPMemTracker):
        def _instrument_fsdp_module(self) -> None:
            super()._instrument_fsdp_module()
            _regroup(self)

        def _fsdp_state_pre_forward(self, fsdp_mod, orig):
            inner = super()._fsdp_state_pre_forward(fsdp_mod, orig)
            if fsdp_mod is not self._root_mod:
                return inner
            import functools

            @functools.wraps(orig)
            def root_pre_forward(*args, **kwargs):
                # A step calls the model more than once (micro-batches under
                # run.grad_accum; validation's passes): per-module statistics start
                # again at each call, the peaks are kept.
                if fsdp_mod in self.memory_tracking:
                    self.reset_mod_stats()
                return inner(*args, **kwargs)
            return root_pre_forward

    tracker = GroupAwareMemTracker(model, optimizer)
    _no_grad_safe(tracker._mod_tracker)
    return tracker


def _no_grad_safe(mod_tracker) -> None:
    """The tracker's module hooks register backward hooks on inputs that require grad; a
    parameter passed as a module's input under no_grad (validation: the encoder's zeta)
    has no grad_fn there and would fail. Under no_grad there is no backward to track."""
    from torch.utils._pytree import tree_map_only

    original = mod_tracker._fw_pre_hook

    def pre_hook(module, inputs):
        if not torch.is_grad_enabled():
            inputs = tree_map_only(torch.Tensor, lambda t: t.detach(), inputs)
        return original(module, inputs)

    mod_tracker._fw_pre_hook = pre_hook


def _regroup(tracker) -> None:
    """Undo the per-module forward hooks the stock tracker put on a grouped unit's
    modules and register its (tracking) hooks on the group as FSDP2 does, so that the
    unit reshards once, when the whole group is done (or the root completes it)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard import _fsdp_state

    seen = set()
    for module in tracker._root_mod.modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        members = tuple(getattr(state, "_modules", ()) or ())
        if len(members) < 2 or id(state) in seen:
            continue
        seen.add(id(state))
        lead = members[0]
        pre = post = None
        for member in members:
            for hooks in (member._forward_pre_hooks, member._forward_hooks):
                for hid, hook in list(hooks.items()):
                    wrapped = getattr(hook, "__wrapped__", None)
                    if wrapped is None:
                        continue
                    if wrapped == state._pre_forward:
                        pre = hook if member is lead or pre is None else pre
                    elif wrapped == state._post_forward:
                        post = hook if member is lead or post is None else post
                    else:
                        continue
                    del hooks[hid]
                    member._forward_pre_hooks_with_kwargs.pop(hid, None)
                    member._forward_hooks_always_called.pop(hid, None)
        if pre is None or post is None:
            raise RuntimeError("the memory tracker's hooks on a grouped FSDP unit were not "
                               "found; this torch version instruments FSDP2 differently")
        params = inspect.signature(_fsdp_state._register_group_forward_hooks).parameters
        extra = ([state._cast_output_dtype] if "cast_output_dtype" in params else [])
        handle = _fsdp_state._register_group_forward_hooks(
            members, pre, post, state._modules_to_run_forward, *extra)
        state._pre_forward_hook_handle = handle
        state._post_forward_hook_handle = handle
        # The stock tracker wrapped the group's backward hooks once per member: keep one
        # wrapper (the lead's), around the original methods.
        saved = tracker._fsdp_mod_to_saved_methods
        originals = [saved[m] for m in members if m in saved]
        group = state._fsdp_param_group
        if group is not None and originals:
            first = next((o for o in originals
                          if not hasattr(o.pre_backward, "__wrapped__")), originals[0])
            group.pre_backward = tracker._fsdp_param_group_pre_backward(lead, first.pre_backward)
            group.post_backward = tracker._fsdp_param_group_post_backward(
                lead, first.post_backward)
            for m in members:
                saved.pop(m, None)
            saved[lead] = first
