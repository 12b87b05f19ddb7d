"""Where weights live: the bundled phantom demo weights and a user's copy of the released `HReynaud/EchoFlow`.

Both use the released layout:

    <root>/vae/<name>/      config.json + diffusion_pytorch_model.safetensors
    <root>/lifm/<name>/     "
    <root>/lvfm/<name>/     "
    <root>/reid/<name>/     config.yaml + backbone.safetensors
    <root>/ef/<name>/       config.json + diffusion_pytorch_model.safetensors (EF regressor; ours)
    <root>/assets/          scaling.pt, anatomies_<name>.pt

Which ReID model and anatomy banks guard which view, and at which tau, is `privacy.py`'s business
(`<root>/gates.json` when present, else the release's own mapping).
"""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("vae", "lifm", "lvfm", "reid", "ef", "seg")
ENV_WEIGHTS = "ECHOFLOW_WEIGHTS"

RELEASED_VAE = "avae-4f4"  # the only VAE the released generative models and scaling.pt were trained on


def bundled_weights_root() -> Path:
    """The demo weights shipped inside the package (trained on the procedural phantom)."""
    return Path(__file__).resolve().parent / "weights" / "phantom"


def default_weights_root() -> Path:
    """$ECHOFLOW_WEIGHTS if set, else the bundled demo weights."""
    env = os.environ.get(ENV_WEIGHTS)
    return Path(env).expanduser() if env else bundled_weights_root()


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "config.yaml").is_file()


def find_model_folders(root: str | Path, kind: str) -> dict[str, Path]:
    """{name: folder} of the models of one kind under a weights root (empty if none)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    base = Path(root) / kind
    if not base.is_dir():
        return {}
    return {p.name: p for p in sorted(base.iterdir()) if p.is_dir() and is_model_folder(p)}


def resolve_model(root: str | Path, kind: str, name: str | None = None) -> Path:
    """The folder of `kind/name`, or the only/first-preferred one when name is None; clear error if absent."""
    found = find_model_folders(root, kind)
    if name:
        candidate = Path(name)
        if candidate.is_dir() and is_model_folder(candidate):
            return candidate
        if name in found:
            return found[name]
        raise FileNotFoundError(
            f"no {kind} model {name!r} under {Path(root) / kind} (found: {', '.join(found) or 'none'}); "
            f"download the released folders into {root} or pass a model folder path"
        )
    if not found:
        raise FileNotFoundError(
            f"no {kind} model under {Path(root) / kind}; expected {kind}/<name>/config.json (released layout)"
        )
    if kind == "vae" and RELEASED_VAE in found:
        return found[RELEASED_VAE]
    return next(iter(found.values()))


def weights_source(root: str | Path | None) -> str:
    """Where a run's weights come from, for metadata and summaries, without the machine's absolute paths."""
    if root is None:
        root = default_weights_root()
    root = Path(root).expanduser()
    if root.resolve() == bundled_weights_root():
        return "bundled phantom demo"
    env = os.environ.get(ENV_WEIGHTS)
    if env and Path(env).expanduser().resolve() == root.resolve():
        return f"${ENV_WEIGHTS} (weights root '{root.resolve().name}')"
    return f"weights root '{root.resolve().name}'"
