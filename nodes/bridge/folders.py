"""Model roots and what the loaders list: `models/echoflow/` (and `extra_model_paths.yaml` roots), $ECHOFLOW_MODEL_PATH,
the bundled demo weights; resolving a listed name to its folder; anatomy banks and other assets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from echoflow_models.checkpoint import model_kinds
from echoflow_models.weights import KINDS as WEIGHT_KINDS

from ._host import HAS_COMFY, log  # noqa: F401
from ._host import fp as _fp

FOLDER_NAME = "echoflow"
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".json", ".yaml", ".yml"}
DEMO_PREFIX = "demo/"
KINDS = WEIGHT_KINDS  # the library's folder kinds: vae, lifm, lvfm, reid, ef, seg
CLASS_KINDS = model_kinds()  # the library's registry: _class_name -> kind


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
