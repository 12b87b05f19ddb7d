"""Training data over an EchoNet-Dynamic layout folder: frames, LV masks, latent caches and the samplers.

* Frames come from ``FileList.csv`` + ``Videos/*.avi`` (``echoflow_models.echonet``), resized to 112x112
  when a dataset has another size. The view is the ``View`` column when present (phantom datasets), else
  A4C (EchoNet-Dynamic is all A4C). The identity used for ReID pairs is (``PatientID`` or ``FileName``, view).
* LV masks, optional, from either
  - ``Masks/<FileName>.npz`` (array ``masks``, bool/uint8 ``[T, H, W]``, one per frame, and optionally
    ``has_mask`` bool ``[T]`` marking which frames carry a mask; see :func:`write_phantom_masks`), or
  - EchoNet-Dynamic's ``VolumeTracings.csv`` (the traced ED/ES frames only: long axis + chords -> polygon).
  Frames without a mask train the LIFM with an all-zero mask, which is also what mask dropout feeds.
* The latent cache (`echoflow_models.train.latent_cache`: a folder of shards, read lazily) holds each
  video's VAE posterior means (and optionally stds) in float16 with per-video metadata, so the LIFM, LVFM
  and ReID never run the VAE encoder while training. :class:`LatentSet` reads only the frames a batch
  needs. ``scaling.pt`` is fitted on the TRAIN split's latents (:func:`fit_scaling`, in chunks).
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import IMAGE_SIZE, VIEWS
from ..echonet import EchoNetRecord, phantom_video_draw, read_filelist
from ..scaling import LatentScaler
from ..vae import AutoencoderKL, frames_to_model_range
from ..video_io import read_video

TARGET_FPS = 32.0
MASKS_DIR = "Masks"

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


def parse_splits(splits: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """"TRAIN", "TRAIN,VAL", ["TRAIN"] or None/"ALL" (every split) -> tuple of upper-case names or None."""
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s.strip()]
    out = tuple(s.strip().upper() for s in splits)
    if not out or "ALL" in out:
        return None
    bad = [s for s in out if s not in ("TRAIN", "VAL", "TEST")]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; use TRAIN, VAL, TEST or ALL")
    return out


def select_records(root: str | os.PathLike, splits=("TRAIN",), max_videos: int | None = None,
                   views: Sequence[str] | None = None) -> list[EchoNetRecord]:
    records = read_filelist(root)
    wanted = parse_splits(splits)
    if wanted is not None:
        records = [r for r in records if r.split in wanted]
    if views:
        keep = {v.upper() for v in views}
        records = [r for r in records if record_view(r) in keep]
    if max_videos is not None:
        records = records[: int(max_videos)]
    if not records:
        raise ValueError(f"{root}: no videos in split(s) {splits}" + (f" and views {views}" if views else ""))
    return records


def record_view(rec: EchoNetRecord) -> str:
    view = (rec.view or "A4C").upper()
    if view not in VIEWS:
        raise ValueError(f"FileName={rec.file_name}: View {rec.view!r} is not one of {VIEWS}")
    return view


def record_identity(rec: EchoNetRecord) -> str:
    """Who the video shows, for ReID pairs and banks: the patient in this view."""
    return f"{rec.patient_id or rec.file_name}|{record_view(rec)}"


def load_frames(root: str | os.PathLike, rec: EchoNetRecord) -> torch.Tensor:
    """uint8 [T, 112, 112] grayscale frames of one video (area-resized when the file has another size)."""
    frames, _ = read_video(rec.video_path(root), gray=True)
    x = torch.from_numpy(np.ascontiguousarray(frames))
    if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x[:, None].float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")[:, 0]
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def load_video_table(root: str | os.PathLike, records: Sequence[EchoNetRecord],
                     progress: Progress | None = None) -> list[torch.Tensor]:
    out = []
    for i, rec in enumerate(records):
        out.append(load_frames(root, rec))
        if progress is not None:
            progress(i + 1, len(records))
    return out


def frame_table(videos: Sequence[torch.Tensor], frames_per_video: int | None = None) -> torch.Tensor:
    """uint8 [N, 112, 112]: every frame, or `frames_per_video` evenly spaced frames of each video."""
    parts = []
    for v in videos:
        if frames_per_video and v.shape[0] > frames_per_video:
            idx = torch.linspace(0, v.shape[0] - 1, frames_per_video).round().long()
            v = v[idx]
        parts.append(v)
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------------
# LV masks
# ----------------------------------------------------------------------------------------------------


def _tracing_polygons(root: Path) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """EchoNet-Dynamic VolumeTracings.csv -> {file_name: {frame: polygon}} (chord ends, one side then back)."""
    path = root / "VolumeTracings.csv"
    if not path.is_file():
        return {}
    rows: dict[tuple[str, int], list[tuple[float, float, float, float]]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            name = row["FileName"].strip()
            name = name[:-4] if name.lower().endswith(".avi") else name
            rows[(name, int(float(row["Frame"])))].append(
                (float(row["X1"]), float(row["Y1"]), float(row["X2"]), float(row["Y2"]))
            )
    polys: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(dict)
    for (name, frame), lines in rows.items():
        chords = lines[1:] if len(lines) > 2 else lines  # the first line is the long axis
        poly = [(x1, y1) for x1, y1, _, _ in chords] + [(x2, y2) for _, _, x2, y2 in reversed(chords)]
        polys[name][frame] = poly
    return polys


def _rasterize(poly: list[tuple[float, float]], size: int = IMAGE_SIZE) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon(poly, fill=255)
    return np.asarray(img) > 0


class MaskSource:
    """LV masks of a dataset folder: `masks(rec, T)` -> (bool [T, 112, 112], has_mask bool [T]) or None."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.mask_dir = self.root / MASKS_DIR
        self.tracings = _tracing_polygons(self.root)

    def masks(self, rec: EchoNetRecord, num_frames: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        npz = self.mask_dir / f"{rec.file_name}.npz"
        if npz.is_file():
            with np.load(npz) as data:
                m = torch.from_numpy(data["masks"].astype(bool))
                has = torch.from_numpy(data["has_mask"].astype(bool)) if "has_mask" in data else None
            if m.shape[0] != num_frames:
                raise ValueError(f"{npz}: {m.shape[0]} masks for a {num_frames}-frame video")
            if tuple(m.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
                m = F.interpolate(m[:, None].float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest")[:, 0] > 0.5
            return m, has if has is not None else torch.ones(num_frames, dtype=torch.bool)
        traced = self.tracings.get(rec.file_name)
        if traced:
            m = torch.zeros(num_frames, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
            has = torch.zeros(num_frames, dtype=torch.bool)
            sx = IMAGE_SIZE / max(rec.frame_width, 1)
            sy = IMAGE_SIZE / max(rec.frame_height, 1)
            for frame, poly in traced.items():
                if 0 <= frame < num_frames:
                    m[frame] = torch.from_numpy(_rasterize([(x * sx, y * sy) for x, y in poly]))
                    has[frame] = True
            return m, has
        return None


def write_phantom_masks(root: str | os.PathLike, splits=("TRAIN",), max_frames: int | None = 16,
                        progress: Progress | None = None) -> int:
    """Write ``Masks/<FileName>.npz`` for the phantom videos of a `write_phantom_dataset` folder.

    The phantom is deterministic, so each video is rendered again from its row (``PatientSeed``, ``View``,
    ``PatientID`` = ``S<seed>P<index>``, the ``_<j>`` suffix of the name) with the same draws as
    `echoflow_models.echonet.write_phantom_dataset` (default EF range). Only the first `max_frames` frames
    are rendered (masks of the rest are marked absent), which is enough for the LIFM's mask channel. A
    re-rendered video is accepted only if its EF equals the row's and its first frame matches the AVI
    (MJPEG-close), so a mismatch never writes wrong masks. A ``dataset.json`` recipe beside the FileList
    (`echoflow train dataset`) supplies a fixed starting ``phase`` and ``heart_rate`` when it sets them.
    Returns the number of mask files written.
    """
    from ..phantom import PatientAnatomy, render_video
    from .dataset import read_recipe

    root = Path(root)
    recipe = read_recipe(root)
    fixed_phase, heart_rate = recipe.get("phase"), recipe.get("heart_rate")
    records = [r for r in select_records(root, splits) if r.extra.get("PatientSeed")]
    (root / MASKS_DIR).mkdir(exist_ok=True)
    written = 0
    for i, rec in enumerate(records):
        target = root / MASKS_DIR / f"{rec.file_name}.npz"
        if not target.is_file():
            pid = rec.patient_id or ""
            try:
                seed_text, index_text = pid[1:].split("P")
                seed, k = int(seed_text), int(index_text)
                j = int(rec.file_name.rsplit("_", 1)[1])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{rec.file_name}: not a phantom video name (PatientID {pid!r})") from exc
            view = record_view(rec)
            ef, drawn_phase = phantom_video_draw(seed, k, view, j)
            phase = drawn_phase if fixed_phase is None else float(fixed_phase)
            anatomy = PatientAnatomy.sample(int(rec.extra["PatientSeed"]), view)
            n = rec.number_of_frames if not max_frames else min(int(max_frames), rec.number_of_frames)
            video = render_video(anatomy, ef, num_frames=n, fps=rec.fps, phase=phase, seed=j,
                                 heart_rate=heart_rate)
            first = load_frames(root, rec)[0].numpy().astype(np.float32)
            if abs(video.ef - rec.ef) > 1e-6 or np.abs(first - video.frames[0]).mean() > 4.0:
                raise ValueError(
                    f"{rec.file_name}: re-rendering the phantom does not reproduce this video (EF {video.ef:.4f} "
                    f"vs {rec.ef:.4f}); its masks cannot be recovered. Masks are optional: train without them."
                )
            masks = np.zeros((rec.number_of_frames, *video.lv_masks.shape[1:]), dtype=bool)
            masks[:n] = video.lv_masks
            has = np.zeros(rec.number_of_frames, dtype=bool)
            has[:n] = True
            np.savez_compressed(target, masks=masks, has_mask=has)
            written += 1
        if progress is not None:
            progress(i + 1, len(records))
    return written


# ----------------------------------------------------------------------------------------------------
# Latent cache
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_frames(vae: AutoencoderKL, frames: torch.Tensor, device: torch.device, chunk: int = 32,
                  with_std: bool = False, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 [T, 112, 112] -> posterior mean (and std) float32 [T, C, h, w] on the CPU (unscaled).
    `bf16`: run the encoder under bfloat16 autocast (about 2x faster on CPUs with AVX512-BF16/AMX)."""
    means, stds = [], []
    for part in frames.split(chunk):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            post = vae.encode(frames_to_model_range(part).to(device))
        means.append(post.mean.float().cpu())
        if with_std:
            stds.append(post.std.float().cpu())
    return torch.cat(means), (torch.cat(stds) if with_std else None)


SCALING_CHUNK_FRAMES = 4096  # frames read at once while fitting scaling.pt (about 100 MB in float64)


def fit_scaling(cache, splits=("TRAIN",), chunk_frames: int = SCALING_CHUNK_FRAMES) -> LatentScaler:
    """Per-channel mean/std (unbiased) of the posterior means of the videos in `splits` (the released
    scaling.pt), read `chunk_frames` frames at a time and combined exactly (Chan et al.'s pairwise update);
    a cache of one chunk gives `LatentScaler.fit` of all its latents."""
    lat = LatentSet(cache, splits)
    parts = torch.arange(lat.num_frames).split(chunk_frames)
    if len(parts) == 1:
        return LatentScaler.fit(lat.mean[parts[0]].float())
    count, mean, m2 = 0, None, None
    for part in parts:
        z = lat.mean[part].double()
        per_channel = z.transpose(0, 1).reshape(z.shape[1], -1)
        n = per_channel.shape[1]
        part_mean = per_channel.mean(1)
        part_m2 = (per_channel - part_mean[:, None]).pow(2).sum(1)
        if mean is None:
            count, mean, m2 = n, part_mean, part_m2
            continue
        delta = part_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + part_m2 + delta.pow(2) * (count * n / total)
        count = total
    return LatentScaler(mean, (m2 / (count - 1)).sqrt().clamp_min(1e-6))


# Which latent frame conditions a training clip (see LatentSet.sample_clips).
COND_FRAMES = ("random", "first")
# Which frames the LIFM learns (see LatentSet.sample_images). "first" on clips that all start at one cardiac
# phase (`train dataset --phase 0`) makes the LIFM generate that phase: the frame an LVFM trained with
# --cond-frame first on the same clips expects to animate.
IMAGE_FRAMES = ("all", "first")


def shared_randn(shape: Sequence[int], gen: torch.Generator, group: int = 1) -> torch.Tensor:
    """Standard normal noise of `shape` whose rows come in runs of `group` identical rows (`group` 1:
    plain `torch.randn`). The first dimension must be a multiple of `group`."""
    shape = tuple(int(n) for n in shape)
    if group == 1:
        return torch.randn(shape, generator=gen)
    if shape[0] % group:
        raise ValueError(f"shared_randn: {shape[0]} rows are not a multiple of the group size {group}")
    return torch.randn((shape[0] // group, *shape[1:]), generator=gen).repeat_interleave(group, dim=0)


@dataclass
class Clip:
    video: torch.Tensor  # [B, C, T, h, w] scaled
    cond: torch.Tensor  # [B, C, h, w] scaled, a frame of the same video (noised)
    ef: torch.Tensor  # [B] fraction
    valid: torch.Tensor  # [B, T] bool (False on zero-padded frames)


class SplitFrames:
    """A per-frame array of a cache (a tensor or a lazy `FrameStore`) seen through a subset of its videos:
    frame i of the subset is read from the cache only when indexed."""

    def __init__(self, store, subset: LatentSet):
        self.store = store
        self.subset = subset
        self.shape = (subset.num_frames, *store.shape[1:])
        self.dtype = store.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(self.shape[0])[idx]
        return self.store[self.subset.cache_frame(torch.as_tensor(idx, dtype=torch.long))]


class LatentSet:
    """The videos of some splits of a latent cache, with samplers for the LIFM, ReID and LVFM trainers.

    The cache is a `LatentCache` folder (read lazily: only the frames a batch draws are read, so memory does
    not grow with the cache) or an in-memory dict of the same keys. Latents are returned *scaled* when a
    scaler is given (the generative models' space)."""

    def __init__(self, cache, splits=("TRAIN",), scaler: LatentScaler | None = None,
                 sample_latents: bool = False):
        wanted = parse_splits(splits)
        keep = [i for i, s in enumerate(cache["splits"]) if wanted is None or s in wanted]
        if not keep:
            raise ValueError(f"the latent cache has no videos in split(s) {splits}")
        off = cache["offsets"]
        keep_t = torch.tensor(keep, dtype=torch.long)
        self.scaler = scaler
        self.sample_latents = sample_latents and cache.get("std") is not None
        lengths = off[keep_t + 1] - off[keep_t]
        self.lengths = lengths
        self.offsets = torch.zeros(len(keep) + 1, dtype=torch.long)
        self.offsets[1:] = lengths.cumsum(0)
        self.cache_offsets = off[keep_t]  # where each video's frames start in the cache
        self.mean = SplitFrames(cache["mean"], self)
        self.std = SplitFrames(cache["std"], self) if self.sample_latents else None
        self.masks = SplitFrames(cache["masks"], self)
        self.has_mask = SplitFrames(cache["has_mask"], self)
        self.views = cache["views"][keep_t]
        self.ef = cache["ef"][keep_t]
        self.fps = cache["fps"][keep_t]
        self.file_names = [cache["file_names"][i] for i in keep]
        self.identities = [cache["identities"][i] for i in keep]
        ids = sorted(set(self.identities))
        position = {x: i for i, x in enumerate(ids)}
        self.identity_index = torch.tensor([position[x] for x in self.identities], dtype=torch.long)
        self.num_identities = len(ids)

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def video_of(self, frame_idx: torch.Tensor) -> torch.Tensor:
        """The video (index in this set) of each of this set's frame indices."""
        return torch.searchsorted(self.offsets, frame_idx, right=True) - 1

    def cache_frame(self, frame_idx: torch.Tensor) -> torch.Tensor:
        """This set's frame indices -> the cache's frame indices."""
        if len(frame_idx.reshape(-1)) and (int(frame_idx.min()) < 0 or int(frame_idx.max()) >= self.num_frames):
            raise IndexError(f"frame index out of range for {self.num_frames} frames")
        video = self.video_of(frame_idx)
        return self.cache_offsets[video] + (frame_idx - self.offsets[video])

    def __len__(self) -> int:
        return len(self.file_names)

    def _latent(self, frame_idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        z = self.mean[frame_idx].float()
        if self.std is not None and gen is not None:
            z = z + self.std[frame_idx].float() * torch.randn(z.shape, generator=gen)
        return z

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(z) if self.scaler is not None else z

    def frames(self, frame_idx: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return self.scale(self._latent(frame_idx, gen))

    # -- LIFM --------------------------------------------------------------------------------------
    def sample_images(self, batch: int, gen: torch.Generator, frames: str = "all"):
        """(scaled latents [B, C, h, w], view [B], mask [B, 1, h, w], has_mask [B]) of random frames: any
        frame (`frames` "all") or only the first frame of each video ("first"; see IMAGE_FRAMES)."""
        if frames == "first":
            starts = self.offsets[:-1]
            idx = starts[torch.randint(len(starts), (batch,), generator=gen)]
        elif frames == "all":
            idx = torch.randint(self.num_frames, (batch,), generator=gen)
        else:
            raise ValueError(f"sample_images: frames must be one of {IMAGE_FRAMES}, got {frames!r}")
        views = self.views[self.video_of(idx)]
        return self.frames(idx, gen), views, self.masks[idx][:, None].float(), self.has_mask[idx]

    # -- ReID --------------------------------------------------------------------------------------
    def _random_frame_of(self, videos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(len(videos), generator=gen)
        return self.offsets[videos] + (u * self.lengths[videos]).long().clamp_max(self.lengths[videos] - 1)

    def sample_pairs(self, batch: int, gen: torch.Generator, p_positive: float = 0.5, p_same_view: float = 0.0,
                     with_identities: bool = False):
        """Siamese pairs: anchor = a random frame of a random video; with p_positive another frame of a
        video of the same identity (label 1), else a frame of a video of another identity (label 0), with
        probability p_same_view one in the anchor's view (a harder negative)."""
        vid_a = torch.randint(len(self), (batch,), generator=gen)
        positive = torch.rand(batch, generator=gen) < p_positive
        same_view = torch.rand(batch, generator=gen) < p_same_view
        ident = self.identity_index
        vid_b = torch.empty_like(vid_a)
        for i in range(batch):
            same = ident == ident[vid_a[i]]
            other = ~same
            if same_view[i] and not positive[i]:
                harder = other & (self.views == self.views[vid_a[i]])
                other = harder if harder.any() else other
            pool = torch.nonzero(same if positive[i] else other).flatten()
            if len(pool) == 0:  # a single identity: everything is positive
                pool = torch.nonzero(same).flatten()
                positive[i] = True
            vid_b[i] = pool[torch.randint(len(pool), (1,), generator=gen)]
        fa = self._random_frame_of(vid_a, gen)
        fb = self._random_frame_of(vid_b, gen)
        same_frame = positive & (fa == fb) & (self.lengths[vid_a] > 1)
        fb = torch.where(same_frame, self.offsets[vid_b] + (fb - self.offsets[vid_b] + 1) % self.lengths[vid_b], fb)
        if with_identities:
            return (self.frames(fa, gen), self.frames(fb, gen), positive.float(), ident[vid_a], ident[vid_b])
        return self.frames(fa, gen), self.frames(fb, gen), positive.float()

    # -- LVFM --------------------------------------------------------------------------------------
    def ef_partners(self, anchors: torch.Tensor, pool: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """For each anchor video, another video of `pool` with the same identity (uniformly; the anchor
        itself when its identity has no other video in `pool`). With the phantom's LVFM set (the same
        heart at 5 EFs) every partner is the same heart at another EF."""
        in_pool = torch.zeros(len(self), dtype=torch.bool)
        in_pool[pool] = True
        out = torch.empty_like(anchors)
        for i, a in enumerate(anchors.tolist()):
            same = in_pool & (self.identity_index == self.identity_index[a])
            same[a] = False
            others = torch.nonzero(same).flatten()
            out[i] = others[torch.randint(len(others), (1,), generator=gen)] if len(others) else a
        return out

    def long_videos(self, num_frames: int, target_fps: float = TARGET_FPS) -> torch.Tensor:
        """Videos that cover `num_frames` frames at `target_fps`; all videos if none does (then clips are
        zero-padded and the padding is masked out of the loss)."""
        need = (num_frames - 1) * self.fps / target_fps + 1
        ok = torch.nonzero(self.lengths.float() >= need - 1e-6).flatten()
        return ok if len(ok) else torch.arange(len(self))

    def sample_clips(self, batch: int, num_frames: int, gen: torch.Generator, target_fps: float = TARGET_FPS,
                     noise_cond: float = 0.0, cond_frame: str = "random", ef_pairs: bool = False) -> Clip:
        """Random windows of `num_frames` frames at `target_fps` (nearest-frame resampling) of the videos
        long enough for them (see `long_videos`; zero-padded with valid=False otherwise); cond = a random
        frame of the same video (`cond_frame="random"`, the reference's choice) or the window's first
        frame (`"first"`: the video continues from the conditioning image).

        `ef_pairs`: clips 2k and 2k + 1 are two videos of the same identity (the same heart in the same
        view; see `ef_partners`) sharing the conditioning noise. Each clip is still a uniformly drawn
        video, so a trainer's objective is unchanged; only the pair shares everything but the EF."""
        if cond_frame not in COND_FRAMES:
            raise ValueError(f"sample_clips: cond_frame must be one of {COND_FRAMES}, got {cond_frame!r}")
        pool = self.long_videos(num_frames, target_fps)
        if ef_pairs:
            if batch % 2:
                raise ValueError(f"sample_clips: ef_pairs needs an even batch size, got {batch}")
            anchors = pool[torch.randint(len(pool), (batch // 2,), generator=gen)]
            partners = self.ef_partners(anchors, pool, gen)
            vids = torch.stack([anchors, partners], 1).reshape(-1)
        else:
            vids = pool[torch.randint(len(pool), (batch,), generator=gen)]
        videos, conds, valid = [], [], []
        for v in vids.tolist():
            n = int(self.lengths[v])
            step = float(self.fps[v]) / target_fps
            span = (num_frames - 1) * step
            start = float(torch.rand(1, generator=gen)) * max(n - 1 - span, 0.0)
            pos = (start + torch.arange(num_frames) * step).round().long()
            ok = pos < n
            pos = pos.clamp_max(n - 1) + int(self.offsets[v])
            z = self.frames(pos, gen)  # [T, C, h, w]
            z = torch.where(ok[:, None, None, None], z, torch.zeros_like(z))
            videos.append(z.transpose(0, 1))
            if cond_frame == "first":
                c_idx = int(pos[0])
            else:
                c_idx = int(self.offsets[v]) + int(torch.randint(n, (1,), generator=gen))
            conds.append(self.frames(torch.tensor([c_idx]), gen)[0])
            valid.append(ok)
        cond = torch.stack(conds)
        if noise_cond > 0:
            cond = cond + noise_cond * shared_randn(cond.shape, gen, 2 if ef_pairs else 1)
        return Clip(torch.stack(videos), cond, self.ef[vids] / 100.0, torch.stack(valid))
