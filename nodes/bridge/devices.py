"""The compute device and the precision of each model role, as ComfyUI would choose them."""

from __future__ import annotations

import torch

from echoflow_models.conventions import PRECISION_NAMES, dtype_of

from ._host import HAS_COMFY, log  # noqa: F401
from ._host import OVERRIDES as _OVERRIDES
from ._host import mm as _mm

PRECISIONS = ("auto", "fp32", "fp16", "bf16")

def set_device(device: str | torch.device | None) -> None:
    """Device for the in-process runner (``None``: CPU outside ComfyUI)."""
    _OVERRIDES["device"] = None if device is None else torch.device(device)


def torch_device() -> torch.device:
    if _OVERRIDES["device"] is not None:
        return _OVERRIDES["device"]
    if HAS_COMFY:
        return _mm.get_torch_device()
    return torch.device("cpu")


def offload_device() -> torch.device:
    if HAS_COMFY and _OVERRIDES["device"] is None:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    if HAS_COMFY:
        return _mm.intermediate_device()
    return torch.device("cpu")


_DTYPES = {name: dtype_of(name) for name in PRECISION_NAMES}


def pick_dtype(precision: str, role: str = "flow") -> torch.dtype:
    """``auto`` follows ComfyUI: bf16/fp16 for the flow models where the device supports them, the VAE's
    dtype from ComfyUI's VAE policy, fp32 for ReID, EF and LV segmentation (privacy scores at tau=0.9997
    need fp32; the EF instruments should not read differently on another GPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    device = torch_device()
    if device.type == "cpu" or role in ("reid", "ef", "seg"):
        return torch.float32
    if HAS_COMFY:
        try:
            if role == "vae":
                return _mm.vae_dtype(device, [torch.bfloat16, torch.float32])
            if _mm.should_use_bf16(device):
                return torch.bfloat16
            if _mm.should_use_fp16(device):
                return torch.float16
        except Exception:  # older/newer ComfyUI signatures: stay safe
            return torch.float32
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
