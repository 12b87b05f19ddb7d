"""The one import of ComfyUI's own modules. When the pack does not run inside ComfyUI (unit tests, the in-process
workflow runner) they are None and `HAS_COMFY` is False: every bridge module then falls back to plain behaviour."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("echoflow")

try:  # pragma: no cover - exercised by the integration tests against a real ComfyUI
    import comfy.model_management as mm
    import comfy.model_patcher as mp
    import comfy.utils as cu
    import folder_paths as fp

    HAS_COMFY = hasattr(fp, "get_folder_paths") and hasattr(mm, "get_torch_device")
except Exception:  # ComfyUI is not installed / not running this pack
    mm = mp = cu = fp = None
    HAS_COMFY = False

# What the in-process runner sets instead of ComfyUI: output/temp folders and the compute device.
OVERRIDES: dict[str, Any] = {"output_dir": None, "temp_dir": None, "device": None}


def core_video_from_file(path: str) -> Any:
    """ComfyUI's own VIDEO object for a saved file, or None outside ComfyUI (or in a version without it)."""
    if not HAS_COMFY:
        return None
    try:
        from comfy_api.latest import InputImpl

        return InputImpl.VideoFromFile(path)
    except Exception:
        return None


def latent_previews_on() -> bool:
    """Whether ComfyUI was started with latent previews (--preview-method other than none)."""
    if not HAS_COMFY:
        return False
    try:
        from comfy.cli_args import LatentPreviewMethod, args

        return args.preview_method != LatentPreviewMethod.NoPreviews
    except Exception:
        return False
