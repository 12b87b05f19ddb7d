"""The one place that talks to ComfyUI.

Every other module in ``nodes/`` goes through these functions, which use ComfyUI's ``folder_paths``,
``comfy.model_management``, ``comfy.model_patcher`` and ``comfy.utils`` when the pack runs inside ComfyUI,
and fall back to plain behaviour (CPU, a configurable output folder, no progress bar) when it does not:
in the unit tests, and in ``echoflow run`` without ``--server``.

Model folders follow the released ``HReynaud/EchoFlow`` layout (``vae/<name>/``, ``lifm/<name>/``,
``lvfm/<name>/``, ``reid/<name>/``, ``ef/<name>/``, ``assets/*.pt``) under every ``echoflow`` model root:
``ComfyUI/models/echoflow/`` plus whatever ``extra_model_paths.yaml`` adds under an ``echoflow:`` key.
Outside ComfyUI the roots come from ``ECHOFLOW_MODEL_PATH`` (``os.pathsep``-separated). The bundled demo
weights are always listed too, under names starting with ``demo/``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("echoflow")

try:  # pragma: no cover - exercised by the integration tests against a real ComfyUI
    import comfy.model_management as _mm
    import comfy.model_patcher as _mp
    import comfy.utils as _cu
    import folder_paths as _fp

    HAS_COMFY = hasattr(_fp, "get_folder_paths") and hasattr(_mm, "get_torch_device")
except Exception:  # ComfyUI is not installed / not running this pack
    _mm = _mp = _cu = _fp = None
    HAS_COMFY = False

FOLDER_NAME = "echoflow"
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".json", ".yaml", ".yml"}
DEMO_PREFIX = "demo/"
KINDS = ("vae", "lifm", "lvfm", "reid", "ef")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

# config class name -> model kind; anything else found in a model root is ignored
CLASS_KINDS = {
    "AutoencoderKL": "vae",
    "SegDiTTransformer2DModel": "lifm",
    "DiffuserSTDiT": "lvfm",
    "UNetSTIC": "lvfm",
    "ReID": "reid",
    "ReIDResNet18": "reid",
    "ContrastiveModel": "reid",
    "ResNet18": "reid",
    "EFRegressor": "ef",
}

_OVERRIDES: dict[str, Any] = {"output_dir": None, "temp_dir": None, "device": None}


# --------------------------------------------------------------------------------------------- folders
def register_model_folder() -> None:
    """Register ``models/echoflow`` with ComfyUI (keeps roots added by ``extra_model_paths.yaml``)."""
    if not HAS_COMFY:
        return
    default = os.path.join(_fp.models_dir, FOLDER_NAME)
    _fp.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    paths, _exts = _fp.folder_names_and_paths[FOLDER_NAME]
    _fp.folder_names_and_paths[FOLDER_NAME] = (paths, set(MODEL_EXTENSIONS))
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:  # read-only install: listing still works
        pass


def model_roots() -> list[Path]:
    """User model roots, first wins on name clashes."""
    roots: list[str] = []
    if HAS_COMFY:
        try:
            roots += _fp.get_folder_paths(FOLDER_NAME)
        except KeyError:
            pass
    env = os.environ.get("ECHOFLOW_MODEL_PATH", "")
    roots += [p for p in env.split(os.pathsep) if p]
    if os.environ.get("ECHOFLOW_WEIGHTS"):
        roots.append(os.environ["ECHOFLOW_WEIGHTS"])
    seen, out = set(), []
    for r in roots:
        p = Path(r).expanduser()
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def demo_root() -> Path | None:
    try:
        from echoflow_models.weights import bundled_weights_root

        root = Path(bundled_weights_root())
    except Exception:
        return None
    return root if root.is_dir() else None


def _folder_kind(folder: Path) -> str | None:
    return _classify(folder)[0]


def _classify(folder: Path) -> tuple[str | None, str | None]:
    """(kind, None) for a model folder this pack lists; (None, why not) for a folder that has a config but
    cannot be listed; (None, None) for a folder that is not a model folder at all."""
    if not ((folder / "config.json").is_file() or (folder / "config.yaml").is_file()):
        return None, None
    try:
        from echoflow_models.checkpoint import read_model_class

        cls = read_model_class(folder)
    except Exception as exc:
        cls = _read_class_fallback(folder)
        if not cls:
            return None, f"{exc}"
    kind = CLASS_KINDS.get(str(cls))
    if kind is None:
        return None, f"its config names the class {cls!r}, which is not an EchoFlow network this pack runs"
    return kind, None


_REPORTED: set[str] = set()


def unlisted_model_folders() -> list[tuple[Path, str]]:
    """Folders under the model roots that hold a config but are not listed by the loaders, with the reason.
    Each is also logged once as a warning, so a user who dropped a folder in never wonders where it went."""
    out = []
    for root in model_roots():
        for folder, reason in _scan_unlisted(root):
            out.append((folder, reason))
            if str(folder) not in _REPORTED:
                _REPORTED.add(str(folder))
                log.warning("EchoFlow: %s is not listed in the loaders: %s", folder, reason)
    return out


def _walk(root: Path, max_depth: int = 3) -> list[tuple[Path, str | None, str | None]]:
    """(folder, kind, why not listed) for every folder under root that holds a model config, sorted; the
    search does not descend into model folders."""
    found = []
    stack = [(root, 0)] if root.is_dir() else []
    while stack:
        d, depth = stack.pop()
        try:
            entries = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for sub in entries:
            kind, reason = _classify(sub)
            if kind or reason:
                found.append((sub, kind, reason))
            elif depth + 1 < max_depth:
                stack.append((sub, depth + 1))
    return sorted(found, key=lambda item: str(item[0]))


def _scan_unlisted(root: Path) -> list[tuple[Path, str]]:
    return [(folder, reason) for folder, _kind, reason in _walk(root) if reason]


def _read_class_fallback(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("_class_name")
        except (OSError, ValueError):
            return None
    if (folder / "config.yaml").is_file():
        return "ReID"
    return None


def _scan(root: Path) -> list[tuple[str, Path, str]]:
    """(relative posix path, folder, kind) for every listable model folder under root, sorted."""
    return [(folder.relative_to(root).as_posix(), folder, kind) for folder, kind, _why in _walk(root) if kind]


DEMO = "demo"  # the bundled demo model of a kind (the release's preferred one when several)
AUTO = "auto"  # an asset found next to the model it belongs to


def list_models(kind: str) -> list[str]:
    """Names for a loader combo: ``demo`` (always offered, so shipped workflows validate), each bundled
    model as ``demo/<kind>/<name>`` when there are several, then user folders by relative path."""
    if kind not in KINDS:
        raise ValueError(f"unknown EchoFlow model kind {kind!r}; expected one of {KINDS}")
    names: list[str] = [DEMO]
    demo = demo_root()
    if demo is not None:
        bundled = [DEMO_PREFIX + rel for rel, _p, k in _scan(demo) if k == kind]
        if len(bundled) > 1:
            names += bundled
    seen = set()
    for root in model_roots():
        for rel, _p, k in _scan(root):
            if k == kind and rel not in seen:
                seen.add(rel)
                names.append(rel)
    unlisted_model_folders()  # logs every folder that has a config but cannot be listed, once
    return names


def resolve_model(kind: str, name: str) -> Path:
    """Folder for a combo value; a clear FileNotFoundError naming every place searched."""
    if os.path.isabs(name) and Path(name).is_dir():
        return Path(name)
    searched: list[str] = []
    if name == DEMO or name.startswith(DEMO_PREFIX):
        demo = demo_root()
        if demo is None:
            raise FileNotFoundError(
                f"the bundled EchoFlow demo weights are not installed (expected under "
                f"echoflow_models/weights/phantom); pick a {kind} model from ComfyUI/models/{FOLDER_NAME}/{kind}/"
            )
        if name == DEMO:
            from echoflow_models.weights import resolve_model as _resolve

            return Path(_resolve(demo, kind, None))
        cand = demo / name[len(DEMO_PREFIX):]
        searched.append(str(cand))
        if _folder_kind(cand) == kind:
            return cand
    else:
        for root in model_roots():
            cand = root / name
            searched.append(str(cand))
            if _folder_kind(cand) == kind:
                return cand
    raise FileNotFoundError(
        f"EchoFlow {kind} model {name!r} not found (looked in: {', '.join(searched) or 'no model roots'}). "
        f"Put released weights under ComfyUI/models/{FOLDER_NAME}/{kind}/<name>/ (config + safetensors) "
        "or pick one of: " + ", ".join(list_models(kind))
    )


def model_root_of(folder: Path) -> Path:
    """The weights root a model folder belongs to (``<root>/<kind>/<name>`` in the released layout)."""
    return Path(folder).parent.parent


def list_assets(prefix: str) -> list[str]:
    """``auto`` then ``*.pt`` files whose name starts with prefix (bundled as ``demo/assets/...``)."""
    names: list[str] = [AUTO]
    demo = demo_root()
    if demo is not None and (demo / "assets").is_dir():
        names += [DEMO_PREFIX + "assets/" + p.name for p in sorted((demo / "assets").glob(prefix + "*.pt"))]
    seen = set()
    for root in model_roots():
        for p in sorted(root.glob("**/" + prefix + "*.pt")) if root.is_dir() else []:
            rel = p.relative_to(root).as_posix()
            if rel not in seen:
                seen.add(rel)
                names.append(rel)
    return names


def resolve_asset(name: str) -> Path:
    """A concrete asset file (``auto`` is resolved by the caller, which knows the model's root)."""
    if os.path.isabs(name) and Path(name).is_file():
        return Path(name)
    searched = []
    if name.startswith(DEMO_PREFIX):
        demo = demo_root()
        if demo is not None:
            cand = demo / name[len(DEMO_PREFIX):]
            searched.append(str(cand))
            if cand.is_file():
                return cand
        else:
            searched.append("(bundled demo weights are not installed)")
    else:
        for root in model_roots():
            cand = root / name
            searched.append(str(cand))
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"EchoFlow asset {name!r} not found (looked in: {', '.join(searched) or 'no model roots'}); "
        f"assets such as scaling.pt and anatomies_*.pt go in ComfyUI/models/{FOLDER_NAME}/assets/"
    )


# ---------------------------------------------------------------------------------- output folders
def set_output_directory(path: str | os.PathLike | None) -> None:
    """Used by the in-process runner (ComfyUI's own folder wins when it is running)."""
    _OVERRIDES["output_dir"] = None if path is None else str(path)


def set_temp_directory(path: str | os.PathLike | None) -> None:
    _OVERRIDES["temp_dir"] = None if path is None else str(path)


def output_directory() -> Path:
    if HAS_COMFY and _OVERRIDES["output_dir"] is None:
        return Path(_fp.get_output_directory())
    return Path(_OVERRIDES["output_dir"] or os.environ.get("ECHOFLOW_OUTPUT_DIR", "output"))


def temp_directory() -> Path:
    if HAS_COMFY and _OVERRIDES["temp_dir"] is None:
        return Path(_fp.get_temp_directory())
    if _OVERRIDES["temp_dir"]:
        return Path(_OVERRIDES["temp_dir"])
    return output_directory() / ".echoflow_temp"


def safe_subpath(base: Path, relative: str) -> Path:
    """``base / relative``, refusing anything that would leave base (like ComfyUI's save-path check)."""
    base_r = base.resolve()
    out = (base / relative).resolve()
    if out != base_r and base_r not in out.parents:
        raise ValueError(f"{relative!r} points outside the output folder {base_r}")
    return out


def next_save_name(folder: Path, stem: str, exts: Iterable[str]) -> tuple[Path, int]:
    """``<stem>_<counter:05d>_`` not used yet with any of ``exts`` in folder (ComfyUI's counter style)."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = 1
    prefix = stem + "_"
    for p in folder.iterdir():
        if p.name.startswith(prefix):
            digits = p.name[len(prefix):].split("_")[0].split(".")[0]
            if digits.isdigit():
                counter = max(counter, int(digits) + 1)
    while any((folder / f"{stem}_{counter:05d}_{e}").exists() for e in exts):
        counter += 1
    return folder / f"{stem}_{counter:05d}_", counter


# --------------------------------------------------------------------------------- devices / dtypes
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


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(precision: str, role: str = "flow") -> torch.dtype:
    """``auto`` follows ComfyUI: bf16/fp16 for the flow models where the device supports them, the VAE's
    dtype from ComfyUI's VAE policy, fp32 for ReID and EF (privacy scores at tau=0.9997 need fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    device = torch_device()
    if device.type == "cpu" or role in ("reid", "ef"):
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


# ------------------------------------------------------------------------------- model management
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
        _HOLDERS[kind] = type("EchoFlow" + {"ef": "EFRegressor", "reid": "ReID"}.get(kind, kind.upper()),
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
    """Move models to the compute device (through ``load_models_gpu`` in ComfyUI); returns the device."""
    models = [m for m in models if m is not None]
    device = torch_device()
    patchers = [m.patcher for m in models if m.patcher is not None]
    if patchers:
        _mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
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


# ------------------------------------------------------------------------------ progress/interrupt
class Interrupted(Exception):
    """Raised by the plain fallback when ``request_interrupt()`` was called (headless Ctrl-C)."""


_INTERRUPT = {"flag": False}


def request_interrupt() -> None:
    _INTERRUPT["flag"] = True


def clear_interrupt() -> None:
    _INTERRUPT["flag"] = False


def check_interrupt() -> None:
    """ComfyUI's ``throw_exception_if_processing_interrupted`` (the Cancel button / ``POST /interrupt``)."""
    if HAS_COMFY:
        _mm.throw_exception_if_processing_interrupted()
    if _INTERRUPT["flag"]:
        _INTERRUPT["flag"] = False
        raise Interrupted("EchoFlow run interrupted")


class Progress:
    """Step counter for one node: ComfyUI's ProgressBar in ComfyUI, an optional printer outside.

    ``callback`` has the pipeline's signature ``(step, total, latents)``; it checks for an interrupt on
    every step (raising aborts the solver) and may send a small preview image to the UI.
    """

    listener: Callable[[str, int, int], None] | None = None  # set by the headless runner

    def __init__(self, total: int, label: str = "", node_id: str | None = None, preview: Callable | None = None):
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.preview = preview if preview_enabled() else None
        self.bar = _cu.ProgressBar(self.total, node_id=node_id) if HAS_COMFY else None

    def update(self, n: int = 1, latents: torch.Tensor | None = None) -> None:
        check_interrupt()
        self.done = min(self.total, self.done + n)
        if self.bar is not None:
            pv = None
            if self.preview is not None and latents is not None:
                try:
                    pv = ("JPEG", self.preview(latents), 512)
                except Exception:  # a preview must never break sampling
                    pv = None
            self.bar.update_absolute(self.done, self.total, pv)
        if Progress.listener is not None:
            Progress.listener(self.label, self.done, self.total)

    def callback(self, weight: int = 1) -> Callable:
        """Pipeline callback: every call is one solver step worth ``weight`` units of this bar (e.g. the
        number of batch items the step advanced), so one bar spans several solver runs."""

        def cb(step: int, total: int, latents: torch.Tensor) -> None:
            self.update(weight, latents)

        return cb


def preview_enabled() -> bool:
    if not HAS_COMFY:
        return False
    try:
        from comfy.cli_args import LatentPreviewMethod, args

        return args.preview_method != LatentPreviewMethod.NoPreviews
    except Exception:
        return False


# ---------------------------------------------------------------------------------- video objects
def video_from_file(path: str | os.PathLike) -> Any:
    """A core ``VIDEO`` (``VideoFromFile``) when ComfyUI's video types exist, else a light stand-in."""
    if HAS_COMFY:
        try:
            from comfy_api.latest import InputImpl

            return InputImpl.VideoFromFile(str(path))
        except Exception:
            pass
    return VideoFile(str(path))


class VideoFile:
    """Stand-in for ComfyUI's VIDEO outside ComfyUI: just the saved file."""

    def __init__(self, path: str):
        self.path = path

    def get_stream_source(self) -> str:
        return self.path

    def save_to(self, path: str, **_kw: Any) -> None:
        import shutil

        shutil.copyfile(self.path, path)

    def __repr__(self) -> str:
        return f"<VideoFile {self.path}>"


register_model_folder()
