"""Checkpoint I/O in the released layout, strict and safe.

* diffusers-style folders: `config.json` (`_class_name` picks the class) + `diffusion_pytorch_model.safetensors`
* ReID folders: `config.yaml` + `backbone.safetensors`
* `.pt` assets (`scaling.pt`, `anatomies_*.pt`): read with `torch.load(weights_only=True)` only.

Everything refuses loudly: a wrong key, shape, class name, a truncated file or a pickle with code in it
raises `CheckpointError` naming the folder and what to do. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .lifm import SegDiTTransformer2DModel
from .lvfm import DiffuserSTDiT
from .reid import ReIDConfig, ReIDResNet18
from .vae import AutoencoderKL
from .weights import KINDS

log = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
REID_WEIGHTS_NAME = "backbone.safetensors"
DIFFUSERS_VERSION = "0.30.3"
REID_CLASS = "ReID"
# Optional, beside a video model's config: sampling defaults measured for that model (not part of the
# release; `python -m research tune-guidance` writes it). Only "guidance" is read.
SAMPLING_NAME = "sampling.json"
MAX_GUIDANCE = 20.0

# Classes that EchoFlow's codebase defines but this package does not implement (yet): (kind, what it is).
# They are listed under their kind, so that choosing one says "not supported yet" instead of vanishing.
KNOWN_UNSUPPORTED = {
    "SegUnet2DModel": ("lifm", "the UNet LIFM variant (diffusers UNet2DModel clone with a mask channel)"),
    "UNetSTIC": ("lvfm", "the spatio-temporal UNet LVFM variant (SVD-style UNet)"),
    "EDM2UNet": ("lifm", "the EDM2 magnitude-preserving UNet"),
    "UNet2DModel": ("lifm", "a plain diffusers UNet"),
    "UNetSpatioTemporalConditionModel": ("lvfm", "a plain diffusers SVD UNet"),
}
# Names the release's ReID configs may carry for the backbone (config.yaml folders are ReID whatever they say).
REID_ALIASES = ("ReIDResNet18", "ContrastiveModel", "ResNet18")

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    cls.class_name: cls for cls in (AutoencoderKL, SegDiTTransformer2DModel, DiffuserSTDiT, ReIDResNet18)
}


class CheckpointError(RuntimeError):
    """A model folder or asset that cannot be loaded as it is; the message says why and how to fix it."""


def register_model_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a class loadable by `_class_name` (it needs `class_name`, `kind`, `config_class` and `config`)."""
    if getattr(cls, "kind", None) not in KINDS:
        raise TypeError(f"{cls.__name__}.kind must be one of {KINDS} (the folder it lives under)")
    MODEL_CLASSES[cls.class_name] = cls
    return cls


def model_kinds() -> dict[str, str]:
    """The one registry: `_class_name` -> the kind (folder) of every network this package knows, the
    unsupported ones included. The loaders, the ComfyUI bridge and `echoflow info` derive from it."""
    kinds = {name: cls.kind for name, cls in MODEL_CLASSES.items()}
    kinds.update({name: kind for name, (kind, _what) in KNOWN_UNSUPPORTED.items()})
    kinds.update({name: "reid" for name in REID_ALIASES})
    return kinds


# ----------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read config ({exc}); re-download the model folder") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    return data


def read_model_class(folder: str | Path) -> str:
    """The class a model folder holds: `_class_name` of config.json, or "ReID" for a config.yaml folder."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        name = _read_json(folder / "config.json").get("_class_name")
        if not isinstance(name, str):
            raise CheckpointError(f"{folder / 'config.json'}: no '_class_name'; cannot tell which network it is")
        return name
    if (folder / "config.yaml").is_file():
        return REID_CLASS
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    raise CheckpointError(
        f"{folder}: neither config.json nor config.yaml found; a model folder holds a config and its "
        f"weights, e.g. vae/avae-4f4/{{config.json,{WEIGHTS_NAME}}}"
    )


def config_from_dict(config_class: type, data: dict, source: str) -> object:
    fields = {f.name for f in dataclasses.fields(config_class)}
    known = {k: v for k, v in data.items() if k in fields}
    unknown = sorted(k for k in data if k not in fields and not k.startswith("_"))
    if unknown:
        log.warning("%s: ignoring config keys this loader does not use: %s", source, ", ".join(unknown))
    try:
        return config_class(**known)
    except TypeError as exc:
        raise CheckpointError(f"{source}: invalid config ({exc})") from exc


def config_to_dict(model: nn.Module) -> dict:
    data = {"_class_name": model.class_name, "_diffusers_version": DIFFUSERS_VERSION}
    data.update(dataclasses.asdict(model.config))
    return data


def build_model(class_name: str, config: dict, source: str = "<config>") -> nn.Module:
    """Instantiate the network named by `_class_name` from a config dict (weights uninitialised)."""
    if class_name in KNOWN_UNSUPPORTED:
        raise CheckpointError(
            f"{source}: `{class_name}` ({KNOWN_UNSUPPORTED[class_name][1]}) is not supported yet by this pack; "
            f"supported classes: {', '.join(sorted(MODEL_CLASSES))}"
        )
    if class_name not in MODEL_CLASSES:
        raise CheckpointError(
            f"{source}: unknown model class `{class_name}`; supported classes: {', '.join(sorted(MODEL_CLASSES))}"
        )
    cls = MODEL_CLASSES[class_name]
    cfg = config_from_dict(cls.config_class, config, source)
    try:
        return cls(cfg)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
        hint = ""
        if any(name.endswith((".bin", ".pt", ".ckpt")) for name in siblings):
            hint = " Pickled weights (.bin/.pt/.ckpt) are never loaded; convert them to safetensors."
        raise CheckpointError(f"{path}: weights file missing (folder holds {siblings}).{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupt, download it again"
        ) from exc


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{', ...' if len(keys) > limit else ''}"


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict comparison of key names and shapes; raises one CheckpointError listing what differs."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = sorted(k for k in expected if k in state and tuple(state[k].shape) != expected[k])
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_describe(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_describe(unexpected)})")
    if misshaped:
        shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k])}" for k in misshaped]
        parts.append(f"{len(misshaped)} mis-shaped tensors ({_describe(shapes, 3)})")
    raise CheckpointError(
        f"{source}: weights do not match the {model.class_name} its config describes: " + "; ".join(parts)
        + ". The config and weights must come from the same release folder."
    )


def read_recommended_guidance(folder: str | Path) -> float | None:
    """The EF guidance a model folder's `sampling.json` recommends, or None when it has none."""
    path = Path(folder) / SAMPLING_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc}); fix or delete the file") from exc
    value = data.get("guidance") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= MAX_GUIDANCE:
        raise CheckpointError(f"{path}: \"guidance\" must be a number in [0, {MAX_GUIDANCE:g}], got {value!r}; "
                              "fix or delete the file (`python -m research tune-guidance --write` re-creates it)")
    return float(value)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or inf in any floating tensor: they give black or NaN outputs, never an error."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold NaN or inf ({_describe(bad)}); the file is corrupt or was "
            "saved from a diverged training run. Download it again (or retrain), do not use it"
        )


_FINGERPRINTS: dict[tuple, str] = {}


def weights_fingerprint(folder: str | Path) -> str:
    """A short hash of a model folder's config and weights bytes: two folders with the same name but other
    weights differ, a copy of the same weights does not. Cached per (path, size, modification time)."""
    import hashlib

    folder = Path(folder)
    files = [p for p in (folder / "config.json", folder / "config.yaml", folder / WEIGHTS_NAME,
                         folder / REID_WEIGHTS_NAME) if p.is_file()]
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


def load_model(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Load any EchoFlow network from its released folder, strictly, in eval mode."""
    folder = Path(folder)
    class_name = read_model_class(folder)
    if class_name == REID_CLASS:
        try:
            data = yaml.safe_load((folder / "config.yaml").read_text())
            config = ReIDConfig.from_yaml_dict(data)
        except (yaml.YAMLError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'config.yaml'}: {exc}") from exc
        model: nn.Module = ReIDResNet18(config)
        weights = folder / REID_WEIGHTS_NAME
    else:
        model = build_model(class_name, _read_json(folder / "config.json"), str(folder / "config.json"))
        weights = folder / WEIGHTS_NAME
    state = read_safetensors(weights)
    check_state_dict(model, state, str(weights))
    check_finite(state, str(weights))
    model.load_state_dict(state, strict=True)
    model.source_folder = str(folder)
    model.fingerprint = weights_fingerprint(folder)
    if class_name != REID_CLASS:
        model.recommended_guidance = read_recommended_guidance(folder)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write a model in the released layout (config + safetensors); ReID models as config.yaml +
    backbone.safetensors. Tensors are saved contiguous and detached, float as they are."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if isinstance(model, ReIDResNet18):
        (folder / "config.yaml").write_text(yaml.safe_dump(model.config.to_yaml_dict(), sort_keys=False))
        save_file(state, str(folder / REID_WEIGHTS_NAME), metadata={"format": "pt"})
    else:
        (folder / "config.json").write_text(json.dumps(config_to_dict(model), indent=2) + "\n")
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


# ----------------------------------------------------------------------------------------------------
# .pt assets
# ----------------------------------------------------------------------------------------------------

_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def _is_plain(obj: object) -> bool:
    if isinstance(obj, _PLAIN):
        return True
    if isinstance(obj, dict):
        return all(isinstance(k, str | int) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return all(_is_plain(v) for v in obj)
    return False


def load_tensor_asset(path: str | Path) -> object:
    """A `.pt` asset holding tensors (or dicts/lists of them) only; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: asset not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message goes on to suggest weights_only=False, i.e. running the pickle's code: only the
        # name of the offending object is passed on.
        culprit = re.search(r"GLOBAL ([\w.]+)", str(exc))
        found = f" ({culprit.group(1)})" if culprit else ""
        raise CheckpointError(
            f"{path}: refusing to load: it holds Python objects{found}, not plain tensors. "
            "Assets are read as tensors only and code in pickles never runs; re-create the file with "
            "torch.save of plain tensors (e.g. {'mean': tensor, 'std': tensor} for scaling.pt)"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the asset ({exc}); it is truncated or corrupt") from exc
    if not _is_plain(obj):
        raise CheckpointError(f"{path}: holds {type(obj).__name__}, not tensors; refusing it")
    return obj


def load_anatomy_bank(path: str | Path) -> torch.Tensor:
    """`anatomies_*.pt` -> float32 [N, D] bank of ReID (sigmoid) embeddings."""
    obj = load_tensor_asset(path)
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise CheckpointError(f"{path}: expected one [N, D] tensor, found a dict with keys {list(obj)}")
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2 or obj.shape[0] == 0:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise CheckpointError(f"{path}: an anatomy bank must be a non-empty [N, D] tensor, got {shape}")
    if not obj.is_floating_point() or not bool(torch.isfinite(obj).all()):
        raise CheckpointError(f"{path}: the anatomy bank holds NaN/inf or non-float values; it is corrupt")
    return obj.float()


