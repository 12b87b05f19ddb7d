"""Synthetic datasets in the EchoNet layout: what every generated row records and when two are the same.

Used by `echoflow generate-dataset` and the Save EchoNet Dataset node alike:

* `SYNTHETIC_COLUMNS`: where a row comes from (`Source`, `Weights`), the privacy verdict it passed
  (`MaxSimilarity`, `Tau`), its seeds, its `Generation` key and the hash of its frames (`ContentHash`);
* `generation_key`: equal keys mean the same video (weights fingerprints, view, steps, solver, guidance,
  seeds, EF); neither `append_synthetic` (the node's path, under the writer's lock) nor generate-dataset's
  shards (`dataset_shards`, no lock) write a generation, or byte-identical frames, twice;
* `check_dataset_folder`: everything a writer would refuse, checked read-only before any model loads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from . import video_io
from .echonet import (
    _NAME_RE,
    FILELIST_NAME,
    VIDEOS_DIR,
    EchoNetFormatError,
    EchoNetRecord,
    _parse_filelist_text,
    journal_names,
    missing_columns,
    open_writer,
)

# Columns of a synthetic dataset (generate-dataset and the Save EchoNet Dataset node): where every row comes
# from, the privacy verdict it passed, and what identifies its generation, so it is never written twice.
SYNTHETIC_COLUMNS = ("Source", "View", "MaxSimilarity", "Tau", "Seed", "VideoSeed", "Weights", "Generation",
                     "ContentHash")
SYNTHETIC_SOURCE = "EchoFlow"


def generation_key(**settings: object) -> str:
    """A short hash of everything that decides a generated video (weights fingerprints, view, steps, solver,
    guidance, seeds, EF, mask): equal keys mean the same video, whoever made it (CLI or node)."""
    import hashlib
    import json

    text = json.dumps({k: v for k, v in settings.items() if v is not None}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def content_hash(frames: np.ndarray) -> str:
    """A short hash of a video's frames: byte-identical videos are never written twice."""
    import hashlib

    array = np.ascontiguousarray(frames)
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()[:20]


def check_name_prefix(prefix: str, what: str = "prefix") -> str:
    """A file-name prefix for ``<prefix>_<n>`` names: no folders, no dots in front, EchoNet-safe characters."""
    if not isinstance(prefix, str) or not _NAME_RE.match(prefix) or "." in prefix:
        raise ValueError(f"{what} {prefix!r} must be letters, digits, '_' or '-' (no folders, dots or spaces)")
    return prefix


def check_dataset_folder(root: str | os.PathLike, extra_columns: Sequence[str], *, add_missing_columns: bool = False,
                         reserved: re.Pattern | None = None, ours: Collection[str] = ()) -> list[Path]:
    """Everything a writer would refuse, checked without writing anything: a FileList without the columns
    (unless opted in), a FileList that does not parse, user videos whose names match `reserved` (names the
    caller will write). `ours`: names of videos this tool wrote that FileList.csv does not list (yet), e.g.
    the rows and journals of generate-dataset's shards. Returns the user's videos, which are left alone."""
    root = Path(root).expanduser()
    csv_path, videos = root / FILELIST_NAME, root / VIDEOS_DIR
    rows: set[str] = set()
    if csv_path.is_file():
        raw = csv_path.read_bytes()
        missing_columns(csv_path, raw, extra_columns, add_missing_columns)
        text = raw.decode("utf-8-sig")
        cut = text.rfind("\n") + 1 if not text.endswith("\n") else len(text)  # a half-written last row is ours
        rows = {r.file_name for r in _parse_filelist_text(text[:cut] or text, csv_path)[1]}
    ours = {f"{name}.avi" for name in (*journal_names(root), *ours)}
    foreign = []
    if videos.is_dir():
        foreign = sorted(p for p in videos.iterdir() if p.suffix.lower() == ".avi" and not video_io.is_partial_file(p)
                         and not (p.suffix == ".avi" and p.stem in rows) and p.name not in ours)
        if not csv_path.is_file() and foreign:
            raise EchoNetFormatError(
                f"{videos} already holds {len(foreign)} video(s) ({', '.join(p.name for p in foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}) but {csv_path} is missing; this folder was not made by this "
                "tool. Use an empty folder, or restore FileList.csv"
            )
    clash = [p.name for p in foreign if reserved is not None and reserved.match(p.stem)]
    if clash:
        raise EchoNetFormatError(
            f"{videos} holds {len(clash)} video(s) not in FileList.csv whose names this run would use "
            f"({', '.join(clash[:5])}{', ...' if len(clash) > 5 else ''}); they are not this tool's to replace. Move "
            "them away, or choose another prefix"
        )
    return foreign


def synthetic_extra(frames: np.ndarray, extra: dict) -> dict[str, str]:
    """A generated row's `SYNTHETIC_COLUMNS` from `extra` (None values dropped): Source defaults to EchoFlow,
    ContentHash is the frames' hash. ValueError for a column that is not one of them."""
    extra = {"Source": SYNTHETIC_SOURCE, **{k: v for k, v in extra.items() if v is not None},
             "ContentHash": content_hash(frames)}
    unknown = sorted(set(extra) - set(SYNTHETIC_COLUMNS))
    if unknown:
        raise ValueError(f"unknown synthetic column(s) {', '.join(unknown)}; use {SYNTHETIC_COLUMNS}")
    return {k: str(v) for k, v in extra.items()}


def append_synthetic(
    root: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    ef: float,
    split: str,
    extra: dict,
    *,
    name: str | None = None,
    prefix: str = "synth",
    add_missing_columns: bool = False,
    timeout: float = 300.0,
) -> tuple[EchoNetRecord, bool]:
    """Append one generated video to a synthetic dataset, holding the lock only while writing.

    `extra` fills `SYNTHETIC_COLUMNS` (Source defaults to EchoFlow, ContentHash is computed). If a row with
    the same `Generation` key (see `generation_key`) or the same frames exists, nothing is written: returns
    (that row, False). Else (new row, True). `name` None: the next free ``<prefix>_<n>``.
    """
    extra = synthetic_extra(frames, extra)
    with open_writer(root, SYNTHETIC_COLUMNS, timeout=timeout, add_missing_columns=add_missing_columns) as writer:
        same = writer.find(ContentHash=extra["ContentHash"])
        if same is None and extra.get("Generation"):
            same = writer.find(Generation=extra["Generation"])
        if same is not None:
            return same, False
        name = name or writer.next_free_name(check_name_prefix(prefix))
        if name in writer:
            return writer.get(name), False
        rec = writer.add(name, frames, fps, ef=ef, esv=float("nan"), edv=float("nan"), split=split, extra=extra)
    return rec, True
