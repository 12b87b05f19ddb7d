"""Where nodes write: ComfyUI's output and temp folders (or the runner's), safe sub-paths, ComfyUI-style
counters that never overwrite, and the core VIDEO object for saved files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._host import HAS_COMFY, core_video_from_file, log  # noqa: F401
from ._host import OVERRIDES as _OVERRIDES
from ._host import fp as _fp


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
    if base_r not in out.parents:  # the output folder itself is refused too: its parent is outside
        raise ValueError(f"{relative!r} points outside the output folder {base_r} (or at the folder itself); "
                         "give a sub-folder or file prefix inside it, e.g. echoflow/EchoFlow")
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




def video_from_file(path: str | os.PathLike) -> Any:
    """A core ``VIDEO`` (``VideoFromFile``) when ComfyUI's video types exist, else a light stand-in."""
    core = core_video_from_file(str(path))
    return core if core is not None else VideoFile(str(path))


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
