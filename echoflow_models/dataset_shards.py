"""Per-rank shards of a synthetic dataset, and the merge that assembles them into one FileList.csv.

Under torchrun every rank of `echoflow generate-dataset` writes only files of its own, so no rank waits for
or locks another (file locks are unreliable on the network file systems clusters share)::

    OUT/
      FileList.csv                   the merged list (temp file + os.replace; rows already there keep their bytes)
      Videos/<prefix>_<slot>.avi     each slot's video, written by the one rank that owns the slot
      shards/<prefix>.rank<r>.csv        rank r's rows (FileList columns), appended and fsynced per video
      shards/<prefix>.rank<r>.journal    names rank r began to write, append-only: the proof that a video
                                         without a row is ours, so the next owner of its slot may replace it
      shards/<prefix>.rank<r>.skipped.csv  slots rank r settled without a new video: a gate rejection (per
                                         attempt, so a resumed run goes on with the next attempt) or a duplicate
      shards/<prefix>.rank<r>.tmp/       videos being encoded (moved into Videos/ when complete)

A video is written in this order: its name is journalled, it is encoded under tmp/, moved into `Videos/`
(never over a file that is not a proven orphan of ours), then its row is appended to the rank's CSV. An
interruption leaves at most a half-written last row (cut off on the next open: the shard is ours) and a
journalled video without a row, which the slot's next owner replaces. Shards are never deleted: they are
the record a resumed run (with any number of ranks) reads to skip finished slots.

`merge_shards` adds every complete shard row that FileList.csv lacks, in name order (so the merged list does
not depend on which rank made what), skipping a row whose `Generation` key or `ContentHash` is already
listed; it writes nothing when nothing is new, and may run at any time, any number of times.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import video_io
from .echonet import (
    FILELIST_COLUMNS,
    FILELIST_NAME,
    VIDEOS_DIR,
    EchoNetFormatError,
    EchoNetRecord,
    EchoNetWriter,
    _parse_filelist_text,
    read_filelist,
)
from .synthetic_dataset import SYNTHETIC_COLUMNS, synthetic_extra

SHARDS_DIR = "shards"
SHARD_COLUMNS = (*FILELIST_COLUMNS, *SYNTHETIC_COLUMNS)
SKIPPED_FIELDS = ("Slot", "Attempt", "Seed", "Outcome", "MaxSimilarity", "NearestIndex", "Tau", "SameAs")
_SHARD_FILE = re.compile(r"^(?P<prefix>[A-Za-z0-9_-]+)\.rank(?P<rank>\d+)\.csv$")


class ShardBusyError(RuntimeError):
    """Another process on this machine writes the same shard (the same prefix and rank)."""


def shard_stem(root: Path, prefix: str, rank: int) -> Path:
    return Path(root) / SHARDS_DIR / f"{prefix}.rank{rank}"


def shard_files(root: str | os.PathLike, prefix: str | None = None) -> list[Path]:
    """The shard CSVs under `root` (of one prefix, or all), in name order."""
    folder = Path(root) / SHARDS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (m := _SHARD_FILE.match(p.name))
                  and (prefix is None or m.group("prefix") == prefix))


def _complete_text(path: Path) -> str:
    """A file's complete lines: a last line without its newline is a write still under way (or interrupted)."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return text[: text.rfind("\n") + 1]


def read_shard_rows(path: Path) -> list[EchoNetRecord]:
    text = _complete_text(path)
    return _parse_filelist_text(text, path)[1] if text else []


@dataclass
class ShardState:
    """What every shard of a folder records, read without writing (other ranks may be writing meanwhile)."""

    rows: list[EchoNetRecord] = field(default_factory=list)
    journalled: set[str] = field(default_factory=set)  # names some rank began to write (videos that are ours)
    skipped: list[dict[str, str]] = field(default_factory=list)  # rows of the *.skipped.csv files

    @property
    def names(self) -> set[str]:
        return {r.file_name for r in self.rows}


def read_shards(root: str | os.PathLike, prefix: str | None = None) -> ShardState:
    state = ShardState()
    for path in shard_files(root, prefix):
        state.rows += read_shard_rows(path)
        stem = path.with_suffix("")
        journal = stem.with_name(stem.name + ".journal")
        if journal.is_file():
            state.journalled |= {n.strip() for n in _complete_text(journal).splitlines() if n.strip()}
        skipped = stem.with_name(stem.name + ".skipped.csv")
        if skipped.is_file():
            state.skipped += list(csv.DictReader(io.StringIO(_complete_text(skipped))))
    return state


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _csv_line(values: Sequence[object]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}{video_io.PARTIAL_MARKER}{os.getpid()}-{os.urandom(3).hex()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Rank `rank`'s shard of a dataset under `prefix` (see the module docstring). `ours`: names of videos
    this tool wrote that no row lists (journalled by any rank), which `add` may replace."""

    def __init__(self, root: str | os.PathLike, prefix: str, rank: int, ours: set[str] = frozenset()) -> None:
        self.root = Path(root)
        stem = shard_stem(self.root, prefix, rank)
        self.csv_path = stem.with_name(stem.name + ".csv")
        self.journal_path = stem.with_name(stem.name + ".journal")
        self.skipped_path = stem.with_name(stem.name + ".skipped.csv")
        self.tmp_dir = stem.with_name(stem.name + ".tmp")
        self.videos_dir = self.root / VIDEOS_DIR
        self.ours = set(ours)
        for folder in (self.videos_dir, self.tmp_dir):
            video_io.make_folder(folder, "generate-dataset")
        self._guard = open(self.journal_path, "a")
        self._hold_guard()
        for leftover in self.tmp_dir.iterdir():  # an interrupted encode of this shard's own
            leftover.unlink()
        if self.csv_path.is_file():
            raw = self.csv_path.read_bytes()
            if raw and not raw.endswith(b"\n"):  # a row cut short by an interruption: this shard's own file
                with open(self.csv_path, "r+b") as fh:
                    fh.truncate(raw.rfind(b"\n") + 1)
                    os.fsync(fh.fileno())
        if not self.csv_path.is_file() or self.csv_path.stat().st_size == 0:
            _write_atomic(self.csv_path, _csv_line(SHARD_COLUMNS).encode())
        self.columns = _parse_filelist_text(self.csv_path.read_text(encoding="utf-8-sig"), self.csv_path)[0]

    def _hold_guard(self) -> None:
        """Two processes writing one shard would interleave rows: refuse the second on this machine. Only a
        guard against a mistake (the same --prefix twice at once); ranks never share a shard."""
        try:
            import fcntl

            fcntl.flock(self._guard.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows
            return
        except BlockingIOError:
            self._guard.close()
            raise ShardBusyError(f"{self.csv_path}: another process is writing this shard (the same --prefix and "
                                 "rank); wait for it, or use another --prefix") from None
        except OSError:  # a file system without advisory locks: ranks do not need them
            return

    def add(self, file_name: str, frames: np.ndarray, fps: float, ef: float, split: str,
            extra: dict) -> EchoNetRecord:
        """Write Videos/<file_name>.avi and this shard's row for it. `extra` fills SYNTHETIC_COLUMNS (Source
        and ContentHash are added)."""
        extra = synthetic_extra(frames, extra)
        target = self.videos_dir / f"{file_name}.avi"
        orphan = os.path.lexists(target)
        if orphan and file_name not in self.ours:
            raise FileExistsError(f"{target} exists but no shard lists or journals it: this tool did not make it, "
                                  "so it is left alone. Move it away, or use another --prefix")
        _append_line(self.journal_path, file_name + "\n")
        encoded = video_io.write_avi(self.tmp_dir / target.name, frames, fps)
        if orphan:  # a video of ours whose row was never written (journalled): replace it
            os.replace(encoded, target)
        else:
            try:
                os.link(encoded, target)  # fails if a file appeared meanwhile: never clobber
            except FileExistsError:
                encoded.unlink()
                raise FileExistsError(f"{target} appeared while it was written; it is left alone") from None
            except OSError:  # a file system without hard links
                os.replace(encoded, target)
            else:
                encoded.unlink()
        rec = EchoNetRecord(file_name=file_name, ef=float(ef), esv=float("nan"), edv=float("nan"),
                            frame_height=int(frames.shape[1]), frame_width=int(frames.shape[2]), fps=float(fps),
                            number_of_frames=int(frames.shape[0]), split=split, extra=extra)
        _append_line(self.csv_path, _csv_line(rec.to_row(self.columns)))
        return rec

    def skip(self, **fields: object) -> None:
        """Record a slot's attempt that produced no new video (`SKIPPED_FIELDS`), flushed to disk."""
        new = not self.skipped_path.is_file() or self.skipped_path.stat().st_size == 0
        header = _csv_line(SKIPPED_FIELDS) if new else ""
        _append_line(self.skipped_path, header + _csv_line([fields.get(k, "") for k in SKIPPED_FIELDS]))

    def close(self) -> None:
        if not self._guard.closed:
            self._guard.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class MergeResult:
    added: list[str]  # names added to FileList.csv by this merge
    duplicates: list[tuple[str, str]]  # (shard row, the listed row it repeats): not added
    total: int  # rows in FileList.csv after the merge


def merge_shards(root: str | os.PathLike, *, add_missing_columns: bool = False) -> MergeResult:
    """Add every complete shard row that FileList.csv lacks (see the module docstring). FileNotFoundError when
    the folder holds no shard."""
    root = Path(root)
    paths = shard_files(root)
    if not paths:
        raise FileNotFoundError(f"{root / SHARDS_DIR} holds no shard (<prefix>.rank<r>.csv) to merge; "
                                "`echoflow generate-dataset --out DIR` writes them")
    rows = sorted((r for p in paths for r in read_shard_rows(p) if r.video_path(root).is_file()),
                  key=lambda r: r.file_name)
    csv_path = root / FILELIST_NAME
    if not csv_path.is_file():
        result = _assemble(csv_path, _csv_line(SHARD_COLUMNS).encode(), SHARD_COLUMNS, [], rows)
    else:
        # the lock keeps out the Save EchoNet Dataset node, which appends to FileList.csv in place; the writer
        # also repairs an interrupted tail and adds our columns to an opted-in foreign FileList first
        with EchoNetWriter(root, SYNTHETIC_COLUMNS, add_missing_columns=add_missing_columns) as writer:
            result = _assemble(csv_path, csv_path.read_bytes(), writer.columns, writer.records, rows)
    _fold_rank_tracings(root)
    return result


def _fold_rank_tracings(root: Path) -> None:
    """The LV tracings the ranks wrote beside their shards (`generate-dataset --lv-labels`), for the videos
    FileList.csv now lists, into VolumeTracings.csv (only videos it has no rows for)."""
    from .lv_labels import fold_tracings

    sources = sorted((root / SHARDS_DIR).glob("*.tracings.csv"))
    if sources:
        fold_tracings(root, sources, {r.file_name for r in read_filelist(root)})


def _assemble(csv_path: Path, base: bytes, columns: Sequence[str], listed: list[EchoNetRecord],
              rows: list[EchoNetRecord]) -> MergeResult:
    names = {r.file_name for r in listed}
    seen = {}
    for rec in listed:
        for key in ("Generation", "ContentHash"):
            if rec.extra.get(key):
                seen.setdefault((key, rec.extra[key]), rec.file_name)
    added, duplicates, lines = [], [], []
    for rec in rows:
        if rec.file_name in names:
            continue  # merged before
        same = next((seen[(k, rec.extra[k])] for k in ("Generation", "ContentHash")
                     if rec.extra.get(k) and (k, rec.extra[k]) in seen), None)
        if same is not None:
            duplicates.append((rec.file_name, same))
            continue
        unknown = [k for k, v in rec.extra.items() if v and k not in columns]
        if unknown:
            raise EchoNetFormatError(f"{csv_path} has no column(s) {', '.join(unknown)} for the shard rows; "
                                     "merge into a FileList made by generate-dataset, or pass --append-to-existing")
        names.add(rec.file_name)
        for key in ("Generation", "ContentHash"):
            if rec.extra.get(key):
                seen.setdefault((key, rec.extra[key]), rec.file_name)
        lines.append(_csv_line(rec.to_row(columns)))
        added.append(rec.file_name)
    if added or not csv_path.is_file():
        _write_atomic(csv_path, base + "".join(lines).encode())
    return MergeResult(added, duplicates, len(names))
