"""A-VAE decode/encode between EchoFlow latents and ComfyUI IMAGE batches."""

from __future__ import annotations

import torch

from echoflow_models.vae import frames_to_gray

from . import bridge
from .common import (
    CATEGORY,
    LATENT_T,
    VAE_T,
    VIDEO_INFO_T,
    VIEWS,
    EchoFlowInputError,
    image_to_uint8,
    latent_samples,
    make_latent,
    make_pipeline,
    make_video_info,
    run_in_chunks,
    uint8_to_image,
)


def _check_vae(vae):
    if vae is None or getattr(vae, "kind", None) != "vae" or vae.extra.get("scaler") is None:
        raise EchoFlowInputError("vae: connect EchoFlow Load VAE")


class EchoFlowVAEDecode:
    SEARCH_ALIASES = ["decode echo"]
    DESCRIPTION = (
        "Decodes EchoFlow latents (images or videos) to frames with the A-VAE, a few frames at a time so "
        "memory stays bounded (the chunk halves automatically after an out-of-memory error). Videos come "
        "out as one IMAGE batch, video after video, as RGB (a single-channel VAE is replicated to RGB)."
    )
    CATEGORY = CATEGORY + "/vae"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", VIDEO_INFO_T)
    RETURN_NAMES = ("images", "video_info")
    OUTPUT_TOOLTIPS = (
        "Frames [N, H, W, 3] float 0..1; for B videos of T frames N = B*T, video-major.",
        "How the frames split into videos and what each video is (EF, seeds, models, privacy verdict), for "
        "Save Video / Save EchoNet Dataset / Estimate EF.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE_T, {"tooltip": "A-VAE from EchoFlow Load VAE (the one the flow models use)."}),
                "latents": (LATENT_T, {"tooltip": "Latent images or latent videos from EchoFlow nodes."}),
                "chunk_size": ("INT", {"default": 16, "min": 1, "max": 1024, "tooltip": "Frames decoded at "
                                       "once; lower it if decoding runs out of memory."}),
            }
        }

    def decode(self, vae, latents, chunk_size):
        _check_vae(vae)
        z = latent_samples(latents)
        if z.ndim == 5:
            b, c, t, h, w = z.shape
            flat = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        elif z.ndim == 4:
            b, t = z.shape[0], 1
            flat = z
        else:
            raise EchoFlowInputError(f"latents: expected [B,C,h,w] or [B,C,T,h,w], got {tuple(z.shape)}")
        scaler = vae.extra["scaler"]
        if flat.shape[1] != scaler.channels:
            raise EchoFlowInputError(
                f"latents have {flat.shape[1]} channels but this VAE's scaling has {scaler.channels}; decode "
                "with the VAE the latents were made for"
            )
        pipe = make_pipeline(vae=vae, memory_required=bridge.activation_memory(vae, min(chunk_size, flat.shape[0])))
        progress = bridge.Progress(flat.shape[0], "decode")

        def run(start, count):
            frames = pipe.decode(flat[start:start + count], chunk_size=count)
            progress.update(count)
            return frames

        frames = torch.cat(run_in_chunks(flat.shape[0], chunk_size, run, "decode"))
        images, _ = uint8_to_image(frames)
        meta = {k: v for k, v in latents.items() if k != "samples"}
        meta.update(vae_id=getattr(vae.module, "fingerprint", None), vae_dtype=str(vae.dtype).replace("torch.", ""))
        return (images, make_video_info(meta, int(t), int(b)))


class EchoFlowVAEEncode:
    SEARCH_ALIASES = ["encode echo"]
    DESCRIPTION = (
        "Encodes frames (any ComfyUI IMAGE, e.g. a real echo frame) to scaled EchoFlow latents with the "
        "A-VAE, e.g. to animate a real frame. Frames are resized to the VAE's training size first."
    )
    CATEGORY = CATEGORY + "/vae"
    FUNCTION = "encode"
    RETURN_TYPES = (LATENT_T,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("Scaled latent images [N, 4, h, w] (posterior means).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE_T, {"tooltip": "A-VAE from EchoFlow Load VAE."}),
                "images": ("IMAGE", {"tooltip": "Frames to encode; colour is converted to grayscale echo."}),
                "view": ([*VIEWS, "unknown"], {"default": "A4C", "tooltip": "The view the frames show; the "
                                               "privacy gate refuses latents of another view."}),
                "size": ("INT", {"default": 112, "min": 0, "max": 1024, "step": 4, "tooltip": "Resize frames "
                                 "to size x size before encoding (EchoFlow uses 112); 0 keeps their size."}),
            }
        }

    def encode(self, vae, images, view, size):
        _check_vae(vae)
        frames = image_to_uint8(images)
        if size and tuple(frames.shape[1:3]) != (size, size):
            x = frames.permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
            frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        f = getattr(vae.module, "downscale_factor", 1)
        if frames.shape[1] % f or frames.shape[2] % f:
            raise EchoFlowInputError(f"images: {frames.shape[1]}x{frames.shape[2]} is not a multiple of the "
                                     f"VAE's factor {f}; set size (e.g. 112)")
        gray = frames_to_gray(frames)[..., None].expand(-1, -1, -1, 3).contiguous()  # the library's colour rule
        pipe = make_pipeline(vae=vae, memory_required=bridge.activation_memory(vae, min(32, gray.shape[0])))
        progress = bridge.Progress(gray.shape[0], "encode")

        def run(start, count):
            out = pipe.encode(gray[start:start + count], chunk_size=count)
            progress.update(count)
            return out

        z = torch.cat(run_in_chunks(gray.shape[0], 32, run, "encode"))
        return (make_latent(z, view=view, source="encoded"),)


NODE_CLASS_MAPPINGS = {"EchoFlowVAEDecode": EchoFlowVAEDecode, "EchoFlowVAEEncode": EchoFlowVAEEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoFlowVAEDecode": "EchoFlow VAE Decode", "EchoFlowVAEEncode": "EchoFlow VAE Encode"}
