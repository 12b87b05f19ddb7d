"""The EchoNet-Dynamic dataset layout: read it, append to it safely, and fill it with phantom patients.

Layout (as in EchoNet-Dynamic)::

    root/
      FileList.csv      FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split[,extra...]
      Videos/<FileName>.avi

``FileName`` has no extension, ``Split`` is TRAIN / VAL / TEST. Readers accept the real dataset's nine
columns and any extra columns after them (phantom datasets add ``PatientID``, ``View``, ``PatientSeed``).

Resume safety (:class:`EchoNetWriter`)
--------------------------------------
An entry is written in two steps: the AVI goes to a hidden temporary name and is renamed into place, then
the CSV row is appended and flushed to disk. An interruption can therefore leave only

* a temporary ``Videos/.<name>.partial-*`` file: deleted on the next open;
* a half-written last CSV line (no trailing newline): cut off on the next open;
* a complete video without a row (killed between the rename and the append): removed on the next open,
  but only because the writer's journal (``.echonet-writer.journal``, one name appended and flushed before
  each video is written) proves the writer made it; a resumed run writes that entry again.

What the writer did not write it never deletes or rewrites: an AVI that is neither in the CSV nor in the
journal is a user's file, left alone and listed in ``foreign_files`` (a new entry of the same name is
refused). An existing ``FileList.csv`` that lacks the columns a caller asks for (a real dataset lacks
``Source``) is refused, unless the caller opts in with ``add_missing_columns``: the original is then kept
byte for byte as ``FileList.original.csv`` and the new ``FileList.csv`` gains the columns, empty for the
rows that were there, so that every appended row is marked.

Names already in the CSV are never rewritten (:meth:`EchoNetWriter.add` skips them), so re-running a
generator with the same arguments completes a dataset without duplicating or touching finished entries;
:meth:`EchoNetWriter.find` finds a row by its extra columns (e.g. the same seed and EF) to skip duplicates.

Longer than 600 lines: the layout's reader, its crash-safe writer (journal, tail repair, locking) and the
phantom dataset writer share one set of parsing and recovery rules; split apart, each would need the others' internals.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import video_io

__all__ = [
    "FILELIST_COLUMNS",
    "PHANTOM_EXTRA_COLUMNS",
    "SPLITS",
    "EchoNetFormatError",
    "EchoNetRecord",
    "DatasetLockedError",
    "EchoNetWriter",
    "open_writer",
    "load_echonet_videos",
    "read_filelist",
    "write_phantom_dataset",
]

FILELIST_COLUMNS = (
    "FileName",
    "EF",
    "ESV",
    "EDV",
    "FrameHeight",
    "FrameWidth",
    "FPS",
    "NumberOfFrames",
    "Split",
)
SPLITS = ("TRAIN", "VAL", "TEST")
PHANTOM_EXTRA_COLUMNS = ("PatientID", "View", "PatientSeed")
FILELIST_NAME = "FileList.csv"
ORIGINAL_FILELIST_NAME = "FileList.original.csv"
VIDEOS_DIR = "Videos"
JOURNAL_NAME = ".echonet-writer.journal"
LOCK_NAME = ".echonet-writer.lock"


class DatasetLockedError(RuntimeError):
    """Another process holds the dataset's writer lock (see :func:`open_writer`, which waits for it)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class EchoNetFormatError(ValueError):
    """FileList.csv or the folder layout is not EchoNet-Dynamic's (the message names file, line and fix)."""


@dataclass
class EchoNetRecord:
    """One row of FileList.csv. ``extra`` holds any columns after the nine standard ones (as strings)."""

    file_name: str  # without extension
    ef: float  # percent
    esv: float  # mL
    edv: float  # mL
    frame_height: int
    frame_width: int
    fps: float
    number_of_frames: int
    split: str  # TRAIN | VAL | TEST
    extra: dict[str, str] = field(default_factory=dict)

    def video_path(self, root: str | os.PathLike) -> Path:
        return Path(root) / VIDEOS_DIR / f"{self.file_name}.avi"

    @property
    def patient_id(self) -> str | None:
        return self.extra.get("PatientID") or None

    @property
    def view(self) -> str | None:
        return self.extra.get("View") or None

    def to_row(self, columns: Sequence[str]) -> list[str]:
        std = {
            "FileName": self.file_name,
            "EF": _fmt_float(self.ef),
            "ESV": _fmt_float(self.esv),
            "EDV": _fmt_float(self.edv),
            "FrameHeight": str(int(self.frame_height)),
            "FrameWidth": str(int(self.frame_width)),
            "FPS": _fmt_float(self.fps),
            "NumberOfFrames": str(int(self.number_of_frames)),
            "Split": self.split,
        }
        return [std[c] if c in std else str(self.extra.get(c, "")) for c in columns]


def _fmt_float(x: float) -> str:
    # a blank cell is an unknown value (pandas reads it as NaN): volumes of generated videos
    return "" if math.isnan(float(x)) else format(float(x), ".10g")


# --------------------------------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------------------------------- #
def _parse_header(header: list[str] | None, csv_path: Path) -> list[str]:
    if not header:
        raise EchoNetFormatError(
            f"{csv_path}: empty file; expected the header line {','.join(FILELIST_COLUMNS)} (EchoNet-Dynamic layout)"
        )
    header = [h.strip() for h in header]
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    missing = [c for c in FILELIST_COLUMNS if c not in header]
    if missing:
        raise EchoNetFormatError(
            f"{csv_path} line 1: missing column(s) {', '.join(missing)}; the header must contain "
            f"{','.join(FILELIST_COLUMNS)} (extra columns may follow)"
        )
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise EchoNetFormatError(f"{csv_path} line 1: duplicated column(s) {', '.join(dup)}")
    return header


def _parse_row(values: list[str], header: list[str], csv_path: Path, line: int) -> EchoNetRecord:
    if len(values) != len(header):
        raise EchoNetFormatError(
            f"{csv_path} line {line}: {len(values)} fields but the header has {len(header)} "
            f"({','.join(header)}); fix or remove that row"
        )
    row = dict(zip(header, (v.strip() for v in values), strict=True))
    name = row["FileName"]
    if name.lower().endswith(".avi"):
        name = name[:-4]
    if not name:
        raise EchoNetFormatError(f"{csv_path} line {line}: empty FileName")

    def num(col: str, kind=float, optional: bool = False):
        text = row[col]
        if optional and not text.strip():
            return float("nan")
        try:
            value = float(text)
        except ValueError:
            raise EchoNetFormatError(
                f"{csv_path} line {line} (FileName={name}): {col} {text!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise EchoNetFormatError(
                f"{csv_path} line {line} (FileName={name}): {col} {text!r} is not finite"
            )
        if kind is int:
            if value != int(value) or value < 0:
                raise EchoNetFormatError(
                    f"{csv_path} line {line} (FileName={name}): {col} {text!r} must be a non-negative integer"
                )
            return int(value)
        return value

    split = row["Split"].upper()
    if split not in SPLITS:
        raise EchoNetFormatError(
            f"{csv_path} line {line} (FileName={name}): Split {row['Split']!r} must be one of {', '.join(SPLITS)}"
        )
    extra = {k: v for k, v in row.items() if k not in FILELIST_COLUMNS}
    return EchoNetRecord(
        file_name=name,
        ef=num("EF"),
        esv=num("ESV", optional=True),
        edv=num("EDV", optional=True),
        frame_height=num("FrameHeight", int),
        frame_width=num("FrameWidth", int),
        fps=num("FPS"),
        number_of_frames=num("NumberOfFrames", int),
        split=split,
        extra=extra,
    )


def _parse_filelist_text(text: str, csv_path: Path) -> tuple[list[str], list[EchoNetRecord]]:
    reader = csv.reader(io.StringIO(text))
    header = _parse_header(next(reader, None), csv_path)
    records: list[EchoNetRecord] = []
    seen: dict[str, int] = {}
    for values in reader:
        line = reader.line_num
        if not values or all(not v.strip() for v in values):
            continue
        rec = _parse_row(values, header, csv_path, line)
        if rec.file_name in seen:
            raise EchoNetFormatError(
                f"{csv_path} line {line}: FileName {rec.file_name} already listed on line {seen[rec.file_name]}"
            )
        seen[rec.file_name] = line
        records.append(rec)
    return header, records


def _filelist_path(root: str | os.PathLike, where: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{where}: dataset folder {root} not found; point it at an EchoNet-Dynamic folder "
            f"(with {FILELIST_NAME} and {VIDEOS_DIR}/)"
        )
    csv_path = root / FILELIST_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{where}: {csv_path} not found; an EchoNet-Dynamic folder holds {FILELIST_NAME} next to {VIDEOS_DIR}/"
        )
    return csv_path


def read_filelist(root: str | os.PathLike) -> list[EchoNetRecord]:
    """Parse ``root/FileList.csv`` (real EchoNet-Dynamic or with extra columns) into records, in file order."""
    csv_path = _filelist_path(root, "read_filelist")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EchoNetFormatError(f"{csv_path}: not UTF-8 text ({e})") from e
    return _parse_filelist_text(text, csv_path)[1]


def load_echonet_videos(
    root: str | os.PathLike, split: str | None = None, max_videos: int | None = None
) -> Iterator[tuple[EchoNetRecord, np.ndarray]]:
    """Yield ``(record, frames uint8 [T, H, W])`` (first channel) for the videos of ``split`` (None = all)."""
    records = read_filelist(root)
    if split is not None:
        want = str(split).upper()
        if want not in SPLITS:
            raise ValueError(f"load_echonet_videos: split must be one of {SPLITS} or None, got {split!r}")
        records = [r for r in records if r.split == want]
    if max_videos is not None:
        if int(max_videos) < 0:
            raise ValueError(f"load_echonet_videos: max_videos must be >= 0, got {max_videos}")
        records = records[: int(max_videos)]
    for rec in records:
        path = rec.video_path(root)
        if not path.is_file():
            raise FileNotFoundError(
                f"load_echonet_videos: {path} is listed in {FILELIST_NAME} (FileName={rec.file_name}) but missing"
            )
        frames, _ = video_io.read_video(path, gray=True)
        yield rec, frames


# --------------------------------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------------------------------- #
def missing_columns(csv_path: Path, raw: bytes, extra_columns: Sequence[str], add_missing_columns: bool) -> list[str]:
    """The asked-for columns an existing FileList (its bytes `raw`) lacks; refused unless `add_missing_columns`.
    Read-only: the writer and the preflight (`synthetic_dataset.check_dataset_folder`) share it."""
    try:
        first_line = next(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    except (StopIteration, UnicodeDecodeError) as exc:
        raise EchoNetFormatError(f"{csv_path}: empty or not UTF-8 text ({exc})") from None
    header = _parse_header(first_line, csv_path)
    missing = [c for c in extra_columns if c not in header]
    if missing and not add_missing_columns:
        raise EchoNetFormatError(
            f"{csv_path} has no column(s) {', '.join(missing)}: it was not written by this tool for "
            "this kind of data (a real dataset?). Writing into it would mix new rows with rows that "
            "cannot be told apart. Use a new folder, or opt in to appending (generate-dataset "
            "--append-to-existing, or the node's append_to_existing): the original is kept as "
            "FileList.original.csv and every new row is marked in the added columns"
        )
    return missing


def journal_names(root: Path) -> set[str]:
    """Names the writer under `root` began to write and has not finished (its journal)."""
    path = Path(root) / JOURNAL_NAME
    if not path.is_file():
        return set()
    return {line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()}


class EchoNetWriter:
    """Append videos and FileList.csv rows to an EchoNet-Dynamic folder, resume-safe, never overwriting.

    ``extra_columns`` are added after the nine standard columns when the CSV is created; an existing CSV
    keeps its own header (extra values it has no column for are refused). Use as a context manager or call
    :meth:`close`. On open, interrupted leftovers are cleaned up (see the module docstring):
    ``removed_partials``, ``removed_orphans`` and ``truncated_tail`` report what was done.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        extra_columns: Sequence[str] = (),
        *,
        codec: str = "mjpeg",
        add_missing_columns: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.add_missing_columns = add_missing_columns
        if codec not in ("mjpeg", "ffv1"):
            raise ValueError(f"EchoNetWriter: codec must be 'mjpeg' or 'ffv1', got {codec!r}")
        self.codec = codec
        self.videos_dir = self.root / VIDEOS_DIR
        self.csv_path = self.root / FILELIST_NAME
        for col in extra_columns:
            if col in FILELIST_COLUMNS or not col or "," in col or "\n" in col:
                raise ValueError(f"EchoNetWriter: bad extra column name {col!r}")
        if self.csv_path.is_file() and not add_missing_columns:
            # refuse a foreign FileList before creating anything (not even the lock file) in its folder
            missing_columns(self.csv_path, self.csv_path.read_bytes(), extra_columns, add_missing_columns)
        video_io.make_folder(self.videos_dir, "EchoNetWriter")
        self._fh = None
        self._lock_fh = None
        self._lock()
        try:
            self._open(extra_columns)
        except BaseException:
            self.close()
            raise

    def _open(self, extra_columns: Sequence[str]) -> None:
        self.truncated_tail = False
        self.removed_partials: list[Path] = []
        self.removed_orphans: list[Path] = []
        self.foreign_files: list[Path] = []
        self.original_filelist: Path | None = None
        if self.csv_path.exists():
            raw = self.csv_path.read_bytes()
            missing = missing_columns(self.csv_path, raw, extra_columns, self.add_missing_columns)
            if missing:
                raw = self._add_columns(raw, missing)
            if raw and not raw.endswith(b"\n"):
                raw = self._repair_tail(raw)
            self.columns, recs = _parse_filelist_text(raw.decode("utf-8-sig"), self.csv_path)
        else:
            existing = [p for p in self.videos_dir.glob("*.avi") if not video_io.is_partial_file(p)]
            if existing:
                raise EchoNetFormatError(
                    f"EchoNetWriter: {self.videos_dir} already holds {len(existing)} video(s) but {self.csv_path} is "
                    "missing; this folder was not made by EchoNetWriter. Use an empty folder, or restore FileList.csv"
                )
            self.columns = list(FILELIST_COLUMNS) + list(extra_columns)
            self._write_bytes(self.csv_path, (",".join(self.columns) + "\n").encode())
            recs = []
        self._records: dict[str, EchoNetRecord] = {r.file_name: r for r in recs}
        self._cleanup()
        self._fh = open(self.csv_path, "a", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")

    # -- housekeeping ------------------------------------------------------------------------------- #
    def _add_columns(self, raw: bytes, missing: Sequence[str]) -> bytes:
        """Opted-in append to a FileList without our columns: keep the original byte for byte beside it,
        then atomically replace FileList.csv by the same rows with the columns added (empty cells)."""
        original = self.root / ORIGINAL_FILELIST_NAME
        if original.exists():
            raise EchoNetFormatError(
                f"{original} exists already; this tool keeps the pre-existing FileList there before adding "
                "columns and will not replace it. Move it away first"
            )
        self._write_bytes(original, raw)
        self.original_filelist = original
        text = raw.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text)))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(rows[0] + list(missing))
        for row in rows[1:]:
            if row:
                writer.writerow(row + [""] * len(missing))
        data = out.getvalue().encode()
        tmp = self.csv_path.with_name(f".{FILELIST_NAME}{video_io.PARTIAL_MARKER}{os.getpid()}")
        self._write_bytes(tmp, data)
        os.replace(tmp, self.csv_path)
        return data

    def _journal(self, name: str) -> None:
        with open(self.root / JOURNAL_NAME, "a") as fh:
            fh.write(name + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _lock(self) -> None:
        self._lock_fh = open(self.root / LOCK_NAME, "a")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            return
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise DatasetLockedError(
                f"EchoNetWriter: another process is writing to {self.root}; wait for it or use another folder"
            ) from None

    def _repair_tail(self, raw: bytes) -> bytes:
        """The CSV does not end with a newline: keep a complete last row, cut off a half-written one."""
        cut = raw.rfind(b"\n") + 1
        if cut == 0:  # header only, without newline
            _parse_header(next(csv.reader(io.StringIO(raw.decode("utf-8-sig")))), self.csv_path)
            keep = True
        else:
            header = _parse_header(
                next(csv.reader(io.StringIO(raw[:cut].decode("utf-8-sig")))), self.csv_path
            )
            try:
                values = next(csv.reader(io.StringIO(raw[cut:].decode("utf-8"))))
                rec = _parse_row(values, header, self.csv_path, raw.count(b"\n") + 1)
                keep = rec.video_path(self.root).is_file()
            except (EchoNetFormatError, UnicodeDecodeError, StopIteration):
                keep = False
        with open(self.csv_path, "r+b") as fh:
            if keep:
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
                raw = raw + b"\n"
            else:
                # A row cut short by an interruption: drop it (its video, if any, becomes an orphan).
                fh.truncate(cut)
                raw = raw[:cut]
                self.truncated_tail = True
            fh.flush()
            os.fsync(fh.fileno())
        return raw

    @staticmethod
    def _write_bytes(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def _cleanup(self) -> None:
        """Remove what an interrupted write of ours left (partial files, journalled videos without a row);
        list, never touch, everything else."""
        ours = {f"{name}.avi" for name in journal_names(self.root)}  # exactly the names this writer writes
        for p in sorted(self.videos_dir.iterdir()):
            if video_io.is_partial_file(p):
                p.unlink()
                self.removed_partials.append(p)
            elif p.suffix.lower() == ".avi" and not (p.suffix == ".avi" and p.stem in self._records):
                if p.name in ours:
                    p.unlink()
                    self.removed_orphans.append(p)
                else:
                    self.foreign_files.append(p)
        if ours:  # every journalled name is now either a row or gone: start a fresh journal
            self._write_bytes(self.root / JOURNAL_NAME, b"")

    # -- API ---------------------------------------------------------------------------------------- #
    @property
    def records(self) -> list[EchoNetRecord]:
        """All rows, in file order."""
        return list(self._records.values())

    def __contains__(self, file_name: str) -> bool:
        return file_name in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, file_name: str) -> EchoNetRecord | None:
        return self._records.get(file_name)

    def find(self, ef: float | None = None, **fields: object) -> EchoNetRecord | None:
        """The first row with this EF (when given) whose extra columns equal all of `fields` (compared as
        text), e.g. the same weights and seeds; None when there is none. Used to never write the same
        generation twice."""
        wanted = {k: str(v) for k, v in fields.items()}
        for rec in self._records.values():
            if ef is not None and not math.isclose(rec.ef, float(ef), abs_tol=1e-6):
                continue
            if all(rec.extra.get(k) == v for k, v in wanted.items()):
                return rec
        return None

    def next_free_name(self, prefix: str) -> str:
        """``<prefix>_<n>`` with n one past every number in use (rows and files, a user's files included)."""
        taken = [r.file_name for r in self._records.values()]
        taken += [p.stem for p in self.videos_dir.glob(prefix + "_*.avi")]
        start = len(prefix) + 1
        numbers = [int(n[start:]) for n in taken if n.startswith(prefix + "_") and n[start:].isdigit()]
        return f"{prefix}_{max(numbers, default=0) + 1:05d}"

    def add(
        self,
        file_name: str,
        frames: np.ndarray,
        fps: float,
        ef: float,
        esv: float,
        edv: float,
        split: str,
        extra: dict | None = None,
    ) -> EchoNetRecord:
        """Write ``Videos/<file_name>.avi`` and its row; returns the record.

        ``frames``: uint8 [T, H, W] or [T, H, W, 3]. A name already in the CSV is skipped (its existing
        record is returned, nothing is written): check ``name in writer`` first to avoid rendering it.
        """
        if self._fh is None:
            raise RuntimeError("EchoNetWriter.add: the writer is closed")
        if (
            not isinstance(file_name, str)
            or not _NAME_RE.match(file_name)
            or file_name.lower().endswith(".avi")
        ):
            raise ValueError(
                f"EchoNetWriter.add: FileName {file_name!r} must be letters, digits, '_', '-' or '.', "
                "not start with '.', and carry no extension"
            )
        if file_name in self._records:
            return self._records[file_name]
        split_u = str(split).upper()
        if split_u not in SPLITS:
            raise ValueError(f"EchoNetWriter.add: split must be one of {SPLITS}, got {split!r}")
        extra = {k: str(v) for k, v in (extra or {}).items()}
        unknown = [k for k in extra if k not in self.columns]
        if unknown:
            raise ValueError(
                f"EchoNetWriter.add: {self.csv_path} has no column(s) {', '.join(unknown)} "
                f"(its header is {','.join(self.columns)}); use a new folder for a different schema"
            )
        for k, v in extra.items():
            if "\n" in v or "\r" in v:
                raise ValueError(f"EchoNetWriter.add: extra value for {k} contains a newline")
        for name, value in (("ef", ef), ("fps", fps)):
            if not math.isfinite(float(value)):
                raise ValueError(f"EchoNetWriter.add: {name} must be finite, got {value}")
        for name, value in (("esv", esv), ("edv", edv)):  # NaN = unknown (generated videos): a blank cell
            if math.isinf(float(value)):
                raise ValueError(f"EchoNetWriter.add: {name} must be finite or NaN (unknown), got {value}")
        frames = video_io._check_frames(frames, "EchoNetWriter.add")
        target = self.videos_dir / f"{file_name}.avi"
        if os.path.lexists(target) or any(p.stem == file_name for p in self.foreign_files):
            raise FileExistsError(
                f"EchoNetWriter.add: {target} exists but is not in {self.csv_path}: this writer did not make it, "
                "so it is left alone. Choose another name (or prefix), or move that file away"
            )
        self._journal(file_name)
        video_io.write_avi(target, frames, fps, codec=self.codec)
        rec = EchoNetRecord(
            file_name=file_name,
            ef=float(ef),
            esv=float(esv),
            edv=float(edv),
            frame_height=int(frames.shape[1]),
            frame_width=int(frames.shape[2]),
            fps=float(fps),
            number_of_frames=int(frames.shape[0]),
            split=split_u,
            extra=extra,
        )
        self._csv.writerow(rec.to_row(self.columns))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._records[file_name] = rec
        # the row is written: the video is recorded, and the journal (the licence to delete it) is cleared
        self._write_bytes(self.root / JOURNAL_NAME, b"")
        return rec

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if getattr(self, "_lock_fh", None) is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> EchoNetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def open_writer(
    root: str | os.PathLike, extra_columns: Sequence[str] = (), *, timeout: float = 300.0, **kwargs
) -> EchoNetWriter:
    """An :class:`EchoNetWriter`, waiting up to `timeout` seconds while another process holds the lock
    (parallel runs that share a dataset take turns, each holding it only while it writes)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return EchoNetWriter(root, extra_columns, **kwargs)
        except DatasetLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------------- #
# Phantom datasets
# --------------------------------------------------------------------------------------------------- #
def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder split of n items; every split with a positive share gets one when n allows."""
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {tuple(fractions)}")
    fr = fr / fr.sum()
    raw = fr * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= int((fr > 0).sum()):
        for i in range(3):
            if fr[i] > 0 and counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
    return counts.tolist()


def _patient_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index), 0xEC0]).generate_state(1)[0] & 0x7FFFFFFF)


def phantom_video_draw(seed: int, index: int, view: str, video: int,
                       ef_range: tuple[float, float] = (10.0, 85.0)) -> tuple[float, float]:
    """(EF, starting phase) of video `video` of patient `index` in `view` of a phantom dataset made with
    `seed`: the one place both `write_phantom_dataset` and the mask writer that re-renders it draw them."""
    from .phantom import VIEWS

    rng = np.random.default_rng([int(seed), int(index), VIEWS.index(view), int(video), 0xEF])
    ef = float(rng.uniform(float(ef_range[0]), float(ef_range[1])))
    return ef, float(rng.uniform(0.0, 1.0))


def write_phantom_dataset(
    root: str | os.PathLike,
    num_patients: int,
    seed: int = 0,
    views: Sequence[str] = ("A4C",),
    videos_per_patient: int = 1,
    num_frames: int = 64,
    ef_range: tuple[float, float] = (10.0, 85.0),
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    fps: float = 32.0,
    codec: str = "mjpeg",
    progress=None,
    phase: float | None = None,
    heart_rate: float | None = None,
) -> list[EchoNetRecord]:
    """Render ``num_patients`` phantom patients into an EchoNet-Dynamic folder; returns their records.

    Each patient gets ``videos_per_patient`` videos per view, each with its own EF drawn uniformly from
    ``ef_range``, a random starting phase and its own frame noise. ``phase`` (cycle fraction at frame 0,
    0 = end-diastole) fixes the starting phase of every video and ``heart_rate`` (bpm) replaces each
    patient's own; the EFs drawn are the same either way. Splits are assigned per patient (all of
    a patient's videos share a split), deterministically from ``seed``. Extra columns: ``PatientID``,
    ``View``, ``PatientSeed``. Re-running with the same arguments resumes: finished entries are skipped.
    ``progress(done, total)`` is called after each video.
    """
    from .phantom import EF_RANGE, HEART_RATE_RANGE, VIEWS, PatientAnatomy, render_video

    num_patients = int(num_patients)
    if num_patients < 1:
        raise ValueError(f"write_phantom_dataset: num_patients must be >= 1, got {num_patients}")
    if int(videos_per_patient) < 1:
        raise ValueError(f"write_phantom_dataset: videos_per_patient must be >= 1, got {videos_per_patient}")
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if not views or bad:
        raise ValueError(f"write_phantom_dataset: views must be a non-empty subset of {VIEWS}, got {views}")
    if phase is not None and not (0.0 <= float(phase) < 1.0):
        raise ValueError(f"write_phantom_dataset: phase must be a cycle fraction in [0, 1), got {phase}")
    hr_lo, hr_hi = HEART_RATE_RANGE
    if heart_rate is not None and not (hr_lo <= float(heart_rate) <= hr_hi):
        raise ValueError(f"write_phantom_dataset: heart_rate must be in [{hr_lo:g}, {hr_hi:g}] bpm, got {heart_rate}")
    lo, hi = float(ef_range[0]), float(ef_range[1])
    if not (EF_RANGE[0] <= lo <= hi <= EF_RANGE[1]):
        raise ValueError(f"write_phantom_dataset: ef_range must lie within {EF_RANGE}, got {tuple(ef_range)}")
    counts = _split_counts(num_patients, split_fractions)
    order = np.random.default_rng([int(seed), 0x5B1]).permutation(num_patients)
    split_of = {}
    for rank, k in enumerate(order):
        split_of[int(k)] = (
            SPLITS[0] if rank < counts[0] else SPLITS[1] if rank < counts[0] + counts[1] else SPLITS[2]
        )

    total = num_patients * len(views) * int(videos_per_patient)
    out: list[EchoNetRecord] = []
    done = 0
    with EchoNetWriter(root, PHANTOM_EXTRA_COLUMNS, codec=codec) as writer:
        for k in range(num_patients):
            pseed = _patient_seed(seed, k)
            pid = f"S{int(seed)}P{k:05d}"
            for view in views:
                for j in range(int(videos_per_patient)):
                    name = f"PH_{pid}_{view}_{j:02d}"
                    if name in writer:
                        out.append(writer.get(name))
                    else:
                        ef, drawn_phase = phantom_video_draw(seed, k, view, j, (lo, hi))
                        anatomy = PatientAnatomy.sample(pseed, view)
                        video = render_video(anatomy, ef, num_frames=num_frames, fps=fps,
                                             phase=drawn_phase if phase is None else float(phase), seed=j,
                                             heart_rate=heart_rate)
                        out.append(
                            writer.add(
                                name,
                                video.frames,
                                fps,
                                ef=video.ef,
                                esv=video.esv,
                                edv=video.edv,
                                split=split_of[k],
                                extra={"PatientID": pid, "View": view, "PatientSeed": pseed},
                            )
                        )
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return out
