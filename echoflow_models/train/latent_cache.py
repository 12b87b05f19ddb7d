"""The latent cache on disk: a folder of safetensors shards, written one shard at a time and read lazily.

    CACHE/build.json                  what is being built (data, splits, VAE, shard size, the videos' names)
    CACHE/shards/shard-00000.safetensors   `mean` f16 [N, C, h, w], `masks` bool [N, h, w], `has_mask` bool [N]
                                      (+ `std` f16), N = the frames of up to --shard-videos consecutive videos;
                                      the videos' metadata in the file's header
    CACHE/index.json                  written last: every video's metadata and the shard list

Why safetensors shards: each shard is one file, written under a temporary name and renamed when complete,
so an interrupted build leaves only whole shards (a re-run skips them) and never a torn file; the format
is documented and dependency-free to read, and its tensors are plain little-endian arrays at known offsets,
so training processes memory-map them (`numpy.memmap`) and read only the frames a batch needs: a process's
memory does not grow with the number of videos (only a few numbers per video are held). Under torchrun each
rank encodes the shards `rank, rank + world, ...`; rank 0 writes the index when all are done.

The v1 cache (one ``latents.pt`` from ``torch.save``) is refused with the command that converts it
(``echoflow train latents --convert OLD.pt --out NEW``), which writes the same values into shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..conventions import VIEWS
from ..pipeline import preprocess_mask
from ..vae import AutoencoderKL
from .data import (
    TARGET_FPS,
    MaskSource,
    encode_frames,
    load_frames,
    record_identity,
    record_view,
    select_records,
)
from .distributed import barrier, broadcast_from_main, current_world

CACHE_FORMAT = "echoflow-latents-v2"
V1_FORMAT = "echoflow-latents-v1"
INDEX_NAME = "index.json"
BUILD_NAME = "build.json"
SHARD_DIR = "shards"
DEFAULT_SHARD_VIDEOS = 64
FRAME_ARRAYS = ("mean", "std", "masks", "has_mask")
# safetensors dtype names -> numpy (those the cache writes)
NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "BOOL": np.bool_, "I64": np.int64, "U8": np.uint8}

Progress = Callable[[int, int], None]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, byte offset of the data) of a safetensors file (8-byte length + JSON, then data)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size)), 8 + size


def v1_refusal(path: Path) -> str:
    return (f"error: {path} is a v1 latent cache (one .pt file, loaded whole by every process); the cache is "
            f"now a folder of shards read lazily. Convert it once with `echoflow train latents --convert {path} "
            f"--out {path.with_suffix('')}` and pass that folder instead")


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


MAX_MAPPED_SHARDS = 8  # per array; 8 shards of EchoNet-Dynamic latents are about 0.6 GB of mappings


class FrameStore:
    """One per-frame array of a cache (`mean`, `std`, `masks`, `has_mask`), memory-mapped shard by shard.
    `store[idx]` (an index tensor or int) reads only those frames, as a torch tensor."""

    def __init__(self, folder: Path, name: str, shards: list[dict], frame_shape: tuple[int, ...], dtype):
        self.folder = folder
        self.name = name
        self.shards = shards
        self.starts = torch.tensor([0] + [s["frames"] for s in shards]).cumsum(0)
        self.shape = (int(self.starts[-1]), *frame_shape)
        self.dtype = dtype
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()
        self._layouts: dict[int, tuple] = {}

    def _map(self, k: int) -> np.memmap:
        """Shard k's array, memory-mapped. At most MAX_MAPPED_SHARDS stay mapped (least recently used first
        out): the pages a mapping has touched count in the process's memory until it is unmapped, so keeping
        every shard mapped would grow with the cache."""
        if k in self._maps:
            self._maps.move_to_end(k)
            return self._maps[k]
        path = self.folder / SHARD_DIR / self.shards[k]["name"]
        if k not in self._layouts:
            header, data_start = read_safetensors_header(path)
            info = header[self.name]
            self._layouts[k] = (NUMPY_DTYPES[info["dtype"]], data_start + info["data_offsets"][0], tuple(info["shape"]))
        dtype, offset, shape = self._layouts[k]
        self._maps[k] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        while len(self._maps) > MAX_MAPPED_SHARDS:
            self._maps.popitem(last=False)
        return self._maps[k]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(self.shape[0])[idx]
        idx = torch.as_tensor(idx, dtype=torch.long)
        flat = idx.reshape(-1)
        if len(flat) and (int(flat.min()) < 0 or int(flat.max()) >= self.shape[0]):
            raise IndexError(f"frame index out of range for {self.shape[0]} frames")
        shard = torch.searchsorted(self.starts, flat, right=True) - 1
        out = torch.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        for k in torch.unique(shard).tolist():
            sel = torch.nonzero(shard == k).flatten()
            local = (flat[sel] - self.starts[k]).numpy()
            out[sel] = torch.from_numpy(np.ascontiguousarray(self._map(k)[local]))
        out = out.reshape(*idx.shape, *self.shape[1:])
        # latents [N, C, h, w] come back channels-last, the layout the VAE encoder returns on CPUs and v1
        # caches kept: the ReID's convolutions then give the same bits as a run on a v1 cache
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


class LatentCache:
    """A built cache folder, read lazily. Indexable like the v1 dict: ``cache["file_names"]`` (and
    "splits", "identities", lists), "views", "ef", "fps", "offsets" (tensors), "has_mask" (bool [frames]) and
    the per-frame `FrameStore`s "mean", "std" (None without --with-std) and "masks"."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if self.folder.is_file():
            raise SystemExit(v1_refusal(self.folder) if self.folder.suffix == ".pt" else
                             f"error: {self.folder} is a file, not a latent cache folder "
                             "(build one with `echoflow train latents`)")
        index_path = self.folder / INDEX_NAME
        if not index_path.is_file():
            hint = (" (an unfinished build: run the same `echoflow train latents` command again to finish it)"
                    if (self.folder / BUILD_NAME).is_file() else " (build it with `echoflow train latents`)")
            raise SystemExit(f"error: {self.folder} is not a finished latent cache: no {INDEX_NAME}{hint}")
        index = json.loads(index_path.read_text())
        if index.get("format") != CACHE_FORMAT:
            raise SystemExit(f"error: {index_path}: format {index.get('format')!r}, expected {CACHE_FORMAT}")
        self.index = index
        videos = index["videos"]
        lengths = torch.tensor(videos["lengths"], dtype=torch.long)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        c, h, w = index["latent_shape"]
        shards = index["shards"]
        self._items: dict = {
            "format": CACHE_FORMAT,
            "vae": index.get("vae", ""),
            "file_names": videos["file_names"],
            "splits": videos["splits"],
            "identities": videos["identities"],
            "views": torch.tensor(videos["views"], dtype=torch.long),
            "ef": torch.tensor(videos["ef"], dtype=torch.float32),
            "fps": torch.tensor(videos["fps"], dtype=torch.float32),
            "offsets": offsets,
            "mean": FrameStore(self.folder, "mean", shards, (c, h, w), torch.float16),
            "std": FrameStore(self.folder, "std", shards, (c, h, w), torch.float16) if index["with_std"] else None,
            "masks": FrameStore(self.folder, "masks", shards, (h, w), torch.bool),
        }
        # one byte per frame, read once: the LIFM's sampler needs it for every drawn frame
        self._items["has_mask"] = FrameStore(self.folder, "has_mask", shards, (), torch.bool)[:]

    def __getitem__(self, key: str):
        return self._items[key]

    def get(self, key: str, default=None):
        return self._items.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._items


def is_finished_cache(folder: str | os.PathLike) -> bool:
    return (Path(folder) / INDEX_NAME).is_file()


def load_latent_cache(path: str | os.PathLike) -> LatentCache:
    """Open a cache folder (lazily); a v1 ``.pt`` cache is refused with the command that converts it."""
    return LatentCache(path)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _video_meta(videos: list[dict]) -> dict:
    """Per-video metadata as columns (what index.json and each shard header hold)."""
    keys = ("file_names", "splits", "identities", "views", "ef", "fps", "lengths")
    return {k: [v[k] for v in videos] for k in keys}


def write_shard(folder: Path, index: int, videos: list[dict], arrays: dict[str, torch.Tensor]) -> None:
    """Write one shard under a temporary name, then rename it into place (a reader never sees half)."""
    target = folder / SHARD_DIR / shard_name(index)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    meta = {"format": CACHE_FORMAT, "videos": json.dumps(_video_meta(videos))}
    save_file({k: v.contiguous() for k, v in arrays.items() if v is not None}, str(tmp), metadata=meta)
    os.replace(tmp, target)


def shard_videos_of(path: Path) -> dict | None:
    """The per-video metadata of a finished shard (None when it is missing or not one of ours)."""
    if not path.is_file():
        return None
    try:
        header, _ = read_safetensors_header(path)
        meta = header.get("__metadata__", {})
        return json.loads(meta["videos"]) if meta.get("format") == CACHE_FORMAT else None
    except (OSError, ValueError, KeyError, struct.error):
        return None


def _check_out_folder(out: Path, recipe: dict) -> str | None:
    """Why `out` cannot take this build (None when it can: new, empty, or the same build unfinished)."""
    if out.is_file():
        return v1_refusal(out) if out.suffix == ".pt" else f"error: --out {out} is a file; give a folder"
    if out.suffix == ".pt":
        return (f"error: --out {out}: the latent cache is a folder of shards now; give a folder name "
                f"(e.g. {out.with_suffix('')})")
    build = out / BUILD_NAME
    if build.is_file():
        previous = json.loads(build.read_text())
        changed = [k for k in recipe if previous.get(k) != recipe[k]]
        if changed:
            return (f"error: {out} holds a latent cache built with other settings ({', '.join(changed)} differ); "
                    "give another --out (or delete that folder to rebuild it)")
        return None
    if out.is_dir() and any(out.iterdir()):
        return f"error: --out {out} is a folder that is not a latent cache; give a new or empty folder"
    return None


def _vae_fingerprint(vae) -> str:
    """A hash of the weights the VAE encodes with (those in memory: what was loaded is what encodes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_latent_cache(vae: AutoencoderKL, root: str | os.PathLike, out_dir: str | os.PathLike,
                       splits=("TRAIN", "VAL", "TEST"), device: str | torch.device = "cpu",
                       with_std: bool = False, max_videos: int | None = None, chunk: int = 32,
                       progress: Progress | None = None, bf16: bool = False,
                       shard_videos: int = DEFAULT_SHARD_VIDEOS) -> LatentCache:
    """Encode every video of `splits` once into a shard folder (see the module docstring). Shards already
    written by an interrupted run of the same build are kept; under torchrun the ranks share the shards."""
    device = torch.device(device)
    out = Path(out_dir)
    records = select_records(root, splits, max_videos)
    names = "\n".join(r.file_name for r in records).encode()
    recipe = {"format": CACHE_FORMAT, "data": str(Path(root).resolve()), "splits": str(splits),
              "with_std": bool(with_std), "shard_videos": int(shard_videos), "videos": len(records),
              "names_sha256": hashlib.sha256(names).hexdigest(), "vae": str(getattr(vae, "source_folder", "")),
              # the VAE's weights, not only its folder: a VAE retrained into the same folder must not resume
              # a half-built cache of the old one; bf16 encodes differ from fp32 ones
              "vae_weights": _vae_fingerprint(vae), "bf16": bool(bf16)}
    world = current_world()
    problem = None
    if world.is_main:
        problem = _check_out_folder(out, recipe)
        if problem is None:
            (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            _write_json_atomic(out / BUILD_NAME, recipe)
    problem = broadcast_from_main(problem)
    if problem:
        raise SystemExit(problem)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)  # (rank 0 made it; a node may not see it yet)
    vae = vae.to(device).eval()
    masks = MaskSource(root)
    n_shards = math.ceil(len(records) / shard_videos)
    mine = list(range(world.rank, n_shards, world.size))
    for done, k in enumerate(mine):
        part = records[k * shard_videos: (k + 1) * shard_videos]
        existing = shard_videos_of(out / SHARD_DIR / shard_name(k))
        if existing is None or existing["file_names"] != [r.file_name for r in part]:
            videos, arrays = encode_videos(vae, root, part, masks, device, chunk, with_std, bf16)
            write_shard(out, k, videos, arrays)
        if progress is not None:
            progress(done + 1, len(mine))
    barrier()
    if world.is_main:
        write_index(out, n_shards, recipe["vae"], with_std)
    barrier()
    return LatentCache(out)


def encode_videos(vae: AutoencoderKL, root, records, masks: MaskSource, device: torch.device, chunk: int,
                  with_std: bool, bf16: bool) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The latents (f16 posterior means, optionally stds), latent-size LV masks and metadata of `records`."""
    videos, means, stds, mask_parts, has_parts = [], [], [], [], []
    for rec in records:
        frames = load_frames(root, rec)
        mean, std = encode_frames(vae, frames, device, chunk, with_std, bf16)
        size = mean.shape[-1]
        means.append(mean.half())
        if with_std:
            stds.append(std.half())
        found = masks.masks(rec, frames.shape[0])
        if found is None:
            mask_parts.append(torch.zeros(frames.shape[0], size, size, dtype=torch.bool))
            has_parts.append(torch.zeros(frames.shape[0], dtype=torch.bool))
        else:
            m, has = found
            # only traced frames are prepared: EchoNet-Dynamic traces 2 frames per video, and an untraced
            # (empty) frame is not a mask the preparation accepts
            small = torch.zeros(len(m), size, size, dtype=torch.bool)
            if has.any():
                small[has] = preprocess_mask(m[has].float(), size)[:, 0] > 0.5
            mask_parts.append(small)
            has_parts.append(has)
        videos.append({"file_names": rec.file_name, "splits": rec.split, "identities": record_identity(rec),
                       "views": VIEWS.index(record_view(rec)), "ef": float(rec.ef),
                       "fps": float(rec.fps or TARGET_FPS), "lengths": int(frames.shape[0])})
    arrays = {"mean": torch.cat(means), "std": torch.cat(stds) if with_std else None,
              "masks": torch.cat(mask_parts), "has_mask": torch.cat(has_parts)}
    return videos, arrays


def write_index(out: Path, n_shards: int, vae: str, with_std: bool) -> None:
    """index.json from the shards' headers (rank 0, once every shard exists)."""
    columns: dict[str, list] = defaultdict(list)
    shards, latent_shape = [], None
    for k in range(n_shards):
        path = out / SHARD_DIR / shard_name(k)
        meta = shard_videos_of(path)
        if meta is None:
            raise SystemExit(f"error: {path} is missing; run the same command again to finish the cache")
        header, _ = read_safetensors_header(path)
        latent_shape = header["mean"]["shape"][1:]
        shards.append({"name": path.name, "videos": len(meta["file_names"]), "frames": header["mean"]["shape"][0]})
        for key, values in meta.items():
            columns[key].extend(values)
    _write_json_atomic(out / INDEX_NAME, {"format": CACHE_FORMAT, "vae": vae, "with_std": with_std,
                                          "latent_shape": latent_shape, "shards": shards, "videos": dict(columns)})


def convert_v1_cache(old: str | os.PathLike, out_dir: str | os.PathLike,
                     shard_videos: int = DEFAULT_SHARD_VIDEOS) -> LatentCache:
    """Write a v1 ``.pt`` cache's values into a shard folder (the old file is only read)."""
    old = Path(old)
    cache = torch.load(str(old), map_location="cpu", weights_only=True)
    if not isinstance(cache, dict) or cache.get("format") != V1_FORMAT:
        raise SystemExit(f"error: {old} is not a v1 EchoFlow latent cache ({V1_FORMAT})")
    out = Path(out_dir)
    recipe = {"format": CACHE_FORMAT, "converted_from": str(old.resolve()), "shard_videos": int(shard_videos)}
    problem = _check_out_folder(out, recipe)
    if problem:
        raise SystemExit(problem)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / BUILD_NAME, recipe)
    off = cache["offsets"]
    n = len(cache["file_names"])
    n_shards = math.ceil(n / shard_videos)
    for k in range(n_shards):
        lo, hi = k * shard_videos, min(n, (k + 1) * shard_videos)
        a, b = int(off[lo]), int(off[hi])
        videos = [{"file_names": cache["file_names"][i], "splits": cache["splits"][i],
                   "identities": cache["identities"][i], "views": int(cache["views"][i]),
                   "ef": float(cache["ef"][i]), "fps": float(cache["fps"][i]),
                   "lengths": int(off[i + 1] - off[i])} for i in range(lo, hi)]
        std = cache.get("std")
        write_shard(out, k, videos, {"mean": cache["mean"][a:b], "std": None if std is None else std[a:b],
                                     "masks": cache["masks"][a:b], "has_mask": cache["has_mask"][a:b]})
    write_index(out, n_shards, str(cache.get("vae", "")), cache.get("std") is not None)
    return LatentCache(out)


def cache_summary(cache) -> str:
    n = len(cache["file_names"])
    frames = int(cache["offsets"][-1])
    by_split: dict[str, int] = defaultdict(int)
    for s in cache["splits"]:
        by_split[s] += 1
    masks = int(cache["has_mask"].sum())
    shape = list(cache["mean"].shape[1:])
    parts = ", ".join(f"{k} {v}" for k, v in sorted(by_split.items()))
    return f"{n} videos ({parts}), {frames} frames of latents {shape}, {masks} frames with LV masks"
