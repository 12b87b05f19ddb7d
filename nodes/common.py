"""Types, conversions and small helpers shared by the EchoFlow nodes (no ComfyUI imports here)."""

from __future__ import annotations

import json
from typing import Any

import torch

from echoflow_models.conventions import EF_MAX, EF_MIN, VIEWS  # noqa: F401  (re-exported to the nodes)

from . import bridge

CATEGORY = "EchoFlow"

# Private socket types: EchoFlow latents are scaled A-VAE latents that core VAE/KSampler nodes must
# never receive, and the models are EchoFlow modules, not core MODEL/VAE objects.
VAE_T = "ECHOFLOW_VAE"
LIFM_T = "ECHOFLOW_LIFM"
LVFM_T = "ECHOFLOW_LVFM"
GATE_T = "ECHOFLOW_GATE"
EF_T = "ECHOFLOW_EF_MODEL"
SEG_T = "ECHOFLOW_SEG_MODEL"  # an LV segmentation network (LVSegNet)
LATENT_T = "ECHOFLOW_LATENT"
# What travels with decoded frames: how the IMAGE batch splits into videos, and each video's EF, seeds,
# models and privacy verdict (from the latents' metadata), so output nodes need no extra wires.
VIDEO_INFO_T = "ECHOFLOW_VIDEO_INFO"

SEED_MAX = 0xFFFFFFFFFFFFFFFF - 1024  # seed + batch index must stay a valid torch seed


class EchoFlowInputError(ValueError):
    """A node input that cannot work; the message says which input and what to do."""


def make_latent(samples: torch.Tensor, **meta: Any) -> dict:
    """The ECHOFLOW_LATENT value: scaled latents ``[B,C,h,w]`` (images) or ``[B,C,T,h,w]`` (videos) on the
    CPU in float32, plus what later nodes report in metadata (view, EF, seeds, privacy report)."""
    out = {"samples": samples.detach().to("cpu", torch.float32)}
    out.update({k: v for k, v in meta.items() if v is not None})
    return out


def latent_samples(latent: Any, name: str = "latents") -> torch.Tensor:
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise EchoFlowInputError(
            f"{name}: expected an EchoFlow latent (output of EchoFlow Sample Image / Animate / VAE Encode), "
            f"got {type(latent).__name__}"
        )
    return latent["samples"]


def select_items(latent: dict, indices: list[int]) -> dict:
    """A copy of an ECHOFLOW_LATENT keeping the batch items ``indices`` (per-item metadata follows)."""
    out = dict(latent)
    out["samples"] = latent["samples"][indices]
    for key in ("seeds", "video_seeds", "ef"):
        if isinstance(latent.get(key), list) and len(latent[key]) == latent["samples"].shape[0]:
            out[key] = [latent[key][i] for i in indices]
    out["source_indices"] = [latent.get("source_indices", list(range(latent["samples"].shape[0])))[i] for i in indices]
    return out


def uint8_to_image(frames: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pipeline frames uint8 ``[B,H,W,3]`` / ``[B,T,H,W,3]`` -> ComfyUI IMAGE ``[N,H,W,3]`` float 0..1 on
    ComfyUI's intermediate device, and the frames per video (1 for still images)."""
    if frames.ndim == 5:
        per_video = frames.shape[1]
        frames = frames.reshape(-1, *frames.shape[2:])
    elif frames.ndim == 4:
        per_video = 1
    else:
        raise ValueError(f"decoded frames must be 4-D or 5-D, got {tuple(frames.shape)}")
    if frames.shape[-1] == 1:
        frames = frames.expand(*frames.shape[:-1], 3)
    img = frames.to(torch.float32).div_(255.0).clamp_(0.0, 1.0)
    return img.to(bridge.intermediate_device()), per_video


def image_to_uint8(image: torch.Tensor, name: str = "images") -> torch.Tensor:
    """ComfyUI IMAGE ``[N,H,W,C]`` (C 1, 3 or 4) or ``[H,W,C]`` -> uint8 ``[N,H,W,3]`` on the CPU."""
    if not torch.is_tensor(image):
        raise EchoFlowInputError(f"{name}: expected an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise EchoFlowInputError(f"{name}: expected IMAGE [N,H,W,C] with C in 1/3/4, got {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise EchoFlowInputError(f"{name}: the image batch is empty")
    if not bool(torch.isfinite(image).all()):
        raise EchoFlowInputError(f"{name}: the frames hold NaN or inf values (a broken model or decode upstream); "
                                 "nothing is written")
    image = image[..., :3] if image.shape[-1] == 4 else image
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)


def split_videos(images: torch.Tensor, frames_per_video: int, name: str = "images") -> list[torch.Tensor]:
    """IMAGE batch -> list of videos; 0 means the whole batch is one video."""
    n = images.shape[0]
    if frames_per_video <= 0 or frames_per_video >= n:
        return [images]
    if n % frames_per_video:
        raise EchoFlowInputError(
            f"{name}: {n} frames do not split into videos of {frames_per_video} frames; connect the "
            "video_info of the EchoFlow VAE Decode that made these frames (or none: the batch is one video)"
        )
    return list(images.split(frames_per_video))


def make_video_info(meta: dict, frames_per_video: int, videos: int) -> dict:
    """The ECHOFLOW_VIDEO_INFO of a decode: the split, the run-wide settings and one entry per video."""
    privacy = meta.get("privacy") if isinstance(meta.get("privacy"), dict) else None
    passed = [it for it in (privacy or {}).get("items", []) if it.get("passed")]

    def per_video(key: str) -> list | None:
        value = meta.get(key)
        return list(value) if isinstance(value, list) and len(value) == videos else None

    efs, seeds, video_seeds = per_video("ef"), per_video("seeds"), per_video("video_seeds")
    items = []
    for i in range(videos):
        item = {"ef": efs[i] if efs else None, "seed": seeds[i] if seeds else None,
                "video_seed": video_seeds[i] if video_seeds else None}
        if len(passed) == videos:
            item["max_similarity"] = passed[i].get("max_similarity")
        items.append({k: v for k, v in item.items() if v is not None})
    run = {k: meta[k] for k in ("view", "lifm_model", "lvfm_model", "lifm_id", "lvfm_id", "vae_id", "lifm_dtype",
                                "lvfm_dtype", "vae_dtype", "guidance", "image_steps", "video_steps", "image_solver",
                                "video_solver", "masked") if meta.get(k) is not None}
    if privacy is not None:
        run["privacy"] = {k: v for k, v in privacy.items() if k != "items"}
    return {"frames_per_video": int(frames_per_video), "videos": int(videos), "run": run, "items": items}


def videos_and_info(images: torch.Tensor, video_info: Any = None, name: str = "images"
                    ) -> tuple[list[torch.Tensor], list[dict], dict]:
    """uint8 videos of an IMAGE batch, each video's metadata and the run's, from an optional video_info."""
    frames = image_to_uint8(images, name)
    if video_info is None:
        return [frames], [{}], {}
    if not isinstance(video_info, dict) or "frames_per_video" not in video_info:
        raise EchoFlowInputError("video_info: connect the video_info output of EchoFlow VAE Decode")
    videos = split_videos(frames, int(video_info["frames_per_video"]), name)
    items = video_info.get("items") or []
    if len(items) != len(videos):
        raise EchoFlowInputError(
            f"{name}: {len(videos)} video(s) but video_info describes {len(items)}; connect the images and the "
            "video_info of the same EchoFlow VAE Decode"
        )
    return videos, [dict(item) for item in items], dict(video_info.get("run") or {})


def latent_preview(latents: torch.Tensor):
    """A cheap grayscale PIL preview of scaled latents for ComfyUI's step previews (no VAE needed)."""
    from PIL import Image

    z = latents.detach().float()
    if z.ndim == 5:  # video: middle frame of the first item
        z = z[:, :, z.shape[2] // 2]
    z = z[0].mean(0)
    lo, hi = z.min(), z.max()
    z = ((z - lo) / (hi - lo + 1e-6) * 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(z, mode="L").resize((z.shape[1] * 4, z.shape[0] * 4)).convert("RGB")


def ef_category(ef: float) -> str:
    """Clinical LVEF band (ASE/ESC style), shown in reports and in the web extension."""
    if ef < 30:
        return "severely reduced"
    if ef < 40:
        return "reduced"
    if ef < 50:
        return "mildly reduced"
    if ef <= 70:
        return "normal"
    return "hyperdynamic"


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o))


def save_preview(frames_u8: torch.Tensor, prefix: str = "echoflow_preview") -> list[dict]:
    """Write uint8 ``[N,H,W,3]`` frames as PNGs into the temp folder; ComfyUI ``ui.images`` entries."""
    import random

    from PIL import Image

    folder = bridge.temp_directory()
    folder.mkdir(parents=True, exist_ok=True)
    tag = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    out = []
    for i, frame in enumerate(frames_u8):
        name = f"{prefix}_{tag}_{i:03d}.png"
        Image.fromarray(frame.cpu().numpy()).save(folder / name, compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


def webp_preview(frames_u8: torch.Tensor, fps: float, prefix: str = "echoflow_video_preview") -> dict:
    """uint8 ``[T,H,W,3]`` -> an animated WebP in the temp folder (a browser plays it; it cannot play AVI);
    the ComfyUI ``ui.images`` entry."""
    from PIL import Image

    folder = bridge.temp_directory()
    stem, _ = bridge.next_save_name(folder, prefix, [".webp"])
    path = stem.with_name(stem.name + ".webp")
    pil = [Image.fromarray(f) for f in frames_u8.cpu().numpy()]
    pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(1000 / max(fps, 0.01)), loop=0,
                lossless=False, quality=85)
    return {"filename": path.name, "subfolder": "", "type": "temp"}


def run_in_chunks(total: int, size: int, fn, what: str) -> list:
    """Call ``fn(start, count)`` over ``range(total)`` in chunks of ``size``, halving the chunk after an
    out-of-memory error (and freeing ComfyUI's cache) until one item at a time also fails."""
    results, start = [], 0
    size = max(1, int(size))
    while start < total:
        count = min(size, total - start)
        try:
            results.append(fn(start, count))
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
            if not bridge.is_oom(exc) or count == 1:
                raise
            bridge.empty_cache()
            size = max(1, count // 2)
            bridge.log.warning("EchoFlow %s: out of memory with %d items at a time, retrying with %d",
                               what, count, size)
            continue
        start += count
    return results


def make_pipeline(vae=None, lifm=None, lvfm=None, memory_required: int = 0):
    """An ``EchoFlowPipeline`` over already-placed ComfyUI-managed models.

    ``load_models`` (``load_models_gpu`` in ComfyUI) has moved the modules to the compute device; the
    pipeline is told not to move or cast them again; a node needing only the LIFM passes no VAE.
    """
    from echoflow_models.pipeline import EchoFlowPipeline

    device = bridge.load_models([vae, lifm, lvfm], memory_required=memory_required)
    main = lifm or lvfm or vae
    pipe = EchoFlowPipeline(
        vae=vae.module if vae is not None else None,
        scaler=vae.extra.get("scaler") if vae is not None else None,
        lifm=lifm.module if lifm is not None else None,
        lvfm=lvfm.module if lvfm is not None else None,
        device=device,
        dtype=main.dtype if main is not None else torch.float32,
        vae_dtype=vae.dtype if vae is not None else None,
        place_models=False,
    )
    return pipe
