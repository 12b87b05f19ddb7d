"""The one place that talks to ComfyUI, split by job.

Every other module in ``nodes/`` goes through these functions, which use ComfyUI's ``folder_paths``,
``comfy.model_management``, ``comfy.model_patcher`` and ``comfy.utils`` when the pack runs inside ComfyUI,
and fall back to plain behaviour (CPU, a configurable output folder, no progress bar) when it does not:
in the unit tests, and in ``python -m headless run`` without ``--server``.

Model folders follow the released ``HReynaud/EchoFlow`` layout (``vae/<name>/``, ``lifm/<name>/``,
``lvfm/<name>/``, ``reid/<name>/``, ``ef/<name>/``, ``seg/<name>/``, ``assets/*.pt``) under every ``echoflow`` model root:
``ComfyUI/models/echoflow/`` plus whatever ``extra_model_paths.yaml`` adds under an ``echoflow:`` key.
Outside ComfyUI the roots come from ``ECHOFLOW_MODEL_PATH`` (``os.pathsep``-separated). The bundled demo
weights are always listed too, under names starting with ``demo/``.

    _host.py     the one import of ComfyUI's modules (HAS_COMFY) and the in-process runner's overrides
    folders.py   model roots, listing and resolving models and assets, unlisted folders reported
    files.py     output/temp folders, safe paths, save counters, VIDEO objects
    devices.py   compute device and precision per model role
    models.py    ManagedModel (ModelPatcher), load_models with activation-memory estimates, OOM helpers
    progress.py  progress bars, previews, interrupts

Nodes use it as `from . import bridge` and call `bridge.<name>`; the names below are that interface.
"""

from __future__ import annotations

from ._host import HAS_COMFY, log
from .devices import PRECISIONS, intermediate_device, offload_device, pick_dtype, set_device, torch_device
from .files import (
    VideoFile,
    next_save_name,
    output_directory,
    safe_subpath,
    set_output_directory,
    set_temp_directory,
    temp_directory,
    video_from_file,
)
from .folders import (
    AUTO,
    CLASS_KINDS,
    DEMO,
    DEMO_PREFIX,
    FOLDER_NAME,
    KINDS,
    demo_root,
    list_assets,
    list_models,
    model_root_of,
    model_roots,
    register_model_folder,
    resolve_asset,
    resolve_model,
    unlisted_model_folders,
)
from .models import ManagedModel, activation_memory, empty_cache, is_oom, load_models
from .progress import (
    Interrupted,
    Progress,
    check_interrupt,
    clear_interrupt,
    preview_enabled,
    request_interrupt,
)

__all__ = [
    "AUTO", "CLASS_KINDS", "DEMO", "DEMO_PREFIX", "FOLDER_NAME", "HAS_COMFY", "KINDS", "PRECISIONS", "Interrupted",
    "ManagedModel", "Progress", "activation_memory", "VideoFile", "check_interrupt", "clear_interrupt", "demo_root", "empty_cache",
    "intermediate_device", "is_oom", "list_assets", "list_models", "load_models", "log", "model_root_of",
    "model_roots", "next_save_name", "offload_device", "output_directory", "pick_dtype", "preview_enabled",
    "register_model_folder", "request_interrupt", "resolve_asset", "resolve_model", "safe_subpath", "set_device",
    "set_output_directory", "set_temp_directory", "temp_directory", "torch_device", "unlisted_model_folders",
    "video_from_file",
]

register_model_folder()
