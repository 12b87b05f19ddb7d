"""Where weights live: the bundled phantom demo weights and a user's copy of the released `HReynaud/EchoFlow`.

Both use the released layout:

    <root>/vae/<name>/      config.json + diffusion_pytorch_model.safetensors
    <root>/lifm/<name>/     "
    <root>/lvfm/<name>/     "
    <root>/reid/<name>/     config.yaml + backbone.safetensors
    <root>/ef/<name>/       config.json + diffusion_pytorch_model.safetensors (EF regressor; ours)
    <root>/assets/          scaling.pt, anatomies_<name>.pt

Which ReID model and anatomy banks guard which view comes from `<root>/gates.json` when present, else
from the release's own mapping (the reference demo's `reid_urls` / `anatomies`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

KINDS = ("vae", "lifm", "lvfm", "reid", "ef")
ENV_WEIGHTS = "ECHOFLOW_WEIGHTS"

# The released mapping from the reference demo (spec 1.4).
RELEASED_GATES = {
    "A4C": ("dynamic-4f4", ["anatomies_dynamic.pt", "anatomies_ped_a4c.pt"]),
    "PSAX": ("ped_psax-4f4", ["anatomies_ped_psax.pt"]),
    "PLAX": ("lvh-4f4", ["anatomies_lvh.pt"]),
}
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


@dataclass
class GateSpec:
    reid_folder: Path
    bank_paths: list[Path]
    tau: float | None = None


def gate_spec(root: str | Path, view: str) -> GateSpec:
    """Which ReID folder and anatomy banks guard `view` under this weights root."""
    root = Path(root)
    manifest = root / "gates.json"
    if manifest.is_file():
        table = json.loads(manifest.read_text())
        if view not in table:
            raise KeyError(f"{manifest} has no privacy gate for view {view!r} (has {', '.join(table)})")
        entry = table[view]
        reid, banks, tau = entry["reid"], entry["banks"], entry.get("tau")
    elif view in RELEASED_GATES:
        reid, banks = RELEASED_GATES[view]
        tau = None
    else:
        raise KeyError(f"no privacy gate known for view {view!r}")
    spec = GateSpec(root / "reid" / reid, [root / "assets" / b for b in banks], tau)
    missing = [str(p) for p in [spec.reid_folder, *spec.bank_paths] if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"privacy gate for {view} is incomplete under {root}: missing {', '.join(missing)}. Without the "
            "ReID model and its anatomy banks no latent can be released."
        )
    return spec
