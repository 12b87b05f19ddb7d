"""EchoFlow modules under ComfyUI's model management: ModelPatcher wrapping, loading with an activation
memory estimate (so ComfyUI can free or offload other models first), out-of-memory handling."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._host import HAS_COMFY, log  # noqa: F401
from ._host import OVERRIDES as _OVERRIDES
from ._host import mm as _mm
from ._host import mp as _mp
from .devices import offload_device, torch_device


class _Holder(torch.nn.Module):
    """What ComfyUI's ModelPatcher manages: a plain container, so the patcher's bookkeeping attributes
    never collide with the EchoFlow module's own."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self._echoflow_dtype = dtype

    def get_dtype(self) -> torch.dtype:
        return self._echoflow_dtype


_HOLDERS: dict[str, type] = {}


def _holder_class(kind: str) -> type:
    """A named subclass per kind, so ComfyUI's log says "Requested to load EchoFlowLIFM"."""
    if kind not in _HOLDERS:
        _HOLDERS[kind] = type("EchoFlow" + {"ef": "EFRegressor", "reid": "ReID", "seg": "LVSeg"}.get(kind, kind.upper()),
                              (_Holder,), {})
    return _HOLDERS[kind]


class ManagedModel:
    """A loaded EchoFlow module plus what ComfyUI needs to place, offload and free it."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, kind: str, name: str, **extra: Any):
        module = module.eval().requires_grad_(False).to(dtype=dtype)
        self.kind, self.name, self.dtype = kind, name, dtype
        self.extra = dict(extra)
        self._holder = _holder_class(kind)(module, dtype)
        self.patcher = None
        if HAS_COMFY and _OVERRIDES["device"] is None:
            self.patcher = _mp.ModelPatcher(self._holder, load_device=torch_device(), offload_device=offload_device())

    @property
    def module(self) -> torch.nn.Module:
        return self._holder.module

    @property
    def device(self) -> torch.device:
        try:
            return next(self._holder.parameters()).device
        except StopIteration:
            return torch_device()

    def __repr__(self) -> str:
        return f"<EchoFlow {self.kind} {self.name!r} {str(self.dtype).replace('torch.', '')}>"


def load_models(models: Iterable[ManagedModel | None], memory_required: int = 0) -> torch.device:
    """Move models to the compute device (through ``load_models_gpu`` in ComfyUI); returns the device.

    ``memory_required``: activation bytes the coming forward passes need (``activation_memory``), which
    ComfyUI reserves by freeing or offloading other models first. Ours load fully: ComfyUI can only part-load
    modules built from its own ``comfy.ops`` layers, and a plain torch module split between devices fails."""
    models = [m for m in models if m is not None]
    device = torch_device()
    patchers = [m.patcher for m in models if m.patcher is not None]
    if patchers:
        _mm.load_models_gpu(patchers, memory_required=int(memory_required), force_full_load=True)
    for m in models:
        if m.patcher is None and m.device != device:
            m._holder.to(device)
    return device


def is_oom(exc: BaseException) -> bool:
    if HAS_COMFY and hasattr(_mm, "is_oom"):
        try:
            return bool(_mm.is_oom(exc))
        except Exception:
            pass
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def empty_cache() -> None:
    if HAS_COMFY:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def activation_memory(model: ManagedModel | None, batch: int) -> int:
    """Activation bytes of one forward of ``model`` on ``batch`` items in its dtype (0 without a model)."""
    if model is None:
        return 0
    from echoflow_models.memory import activation_bytes

    try:
        return activation_bytes(model.module, max(1, int(batch)), model.dtype)
    except ValueError:  # a module without an estimate: ComfyUI's own minimum reserve applies
        log.debug("EchoFlow: no activation estimate for %s", type(model.module).__name__)
        return 0
