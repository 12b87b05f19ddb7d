"""Generation nodes: Sample Image (LIFM), Animate (LVFM), and the parametric LV mask."""

from __future__ import annotations

import torch

from echoflow_models.conventions import check_ef

from . import bridge
from .common import (
    CATEGORY,
    EF_MAX,
    EF_MIN,
    LATENT_T,
    LIFM_T,
    LVFM_T,
    SEED_MAX,
    VAE_T,
    VIEWS,
    EchoFlowInputError,
    ef_category,
    latent_preview,
    latent_samples,
    make_latent,
    make_pipeline,
    run_in_chunks,
    save_preview,
)


def _solvers() -> list[str]:
    try:
        from echoflow_models.sampling import SOLVERS

        return list(SOLVERS)
    except Exception:  # the core is missing: the node still lists, and fails clearly when run
        return ["euler", "heun", "midpoint"]


STEPS_TIP = "Solver steps from noise (t=1) to the sample (t=0); the reference uses 50. More is slower."
SOLVER_TIP = "ODE solver: euler (the reference, 1 model call per step), heun or midpoint (2 calls, 2nd order)."
AUTO_GUIDANCE = -1.0  # the Animate node's "use the video model's recommended guidance"
SEED_TIP = "Noise seed. Item i of a batch uses seed + i, so a batch equals single runs with consecutive seeds."


class EchoFlowSampleImage:
    SEARCH_ALIASES = ["echocardiogram", "ultrasound", "lifm", "generate echo"]
    DESCRIPTION = (
        "Generates latent echo images with the latent image flow model (LIFM) for a view, optionally "
        "guided by a left-ventricle mask (any ComfyUI MASK; binarised and resized as the reference does). "
        "Connect a VAE to see the decoded images on the node."
    )
    CATEGORY = CATEGORY + "/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = (LATENT_T,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("Scaled latent images [B, 4, 28, 28]; pass them through EchoFlow Privacy Gate.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lifm": (LIFM_T, {"tooltip": "Latent image flow model from EchoFlow Load Image Flow."}),
                "view": (list(VIEWS), {"default": "A4C", "tooltip": "Echo view: apical 4-chamber, "
                                       "parasternal short axis or parasternal long axis."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": STEPS_TIP}),
                "solver": (_solvers(), {"default": "euler", "tooltip": SOLVER_TIP}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": SEED_TIP}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "How many latent "
                                       "images to generate (one anatomy each)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional LV mask (white = LV cavity): one for the whole batch or "
                                  "one per item. Draw one, or use EchoFlow LV Mask."}),
                "vae": (VAE_T, {"tooltip": "Optional: decode the result for a preview on this node."}),
            },
        }

    def sample(self, lifm, view, steps, solver, seed, batch_size, mask=None, vae=None):
        if lifm is None or getattr(lifm, "kind", None) != "lifm":
            raise EchoFlowInputError("lifm: connect EchoFlow Load Image Flow")
        if mask is not None:
            if not torch.is_tensor(mask) or mask.ndim not in (2, 3, 4):
                raise EchoFlowInputError(f"mask: expected a MASK [B,H,W], got {getattr(mask, 'shape', mask)}")
            n_masks = 1 if mask.ndim == 2 else mask.shape[0]
            if n_masks not in (1, batch_size):
                raise EchoFlowInputError(f"mask: {n_masks} masks for a batch of {batch_size}; give 1 or "
                                         f"{batch_size}")
        pipe = make_pipeline(lifm=lifm, memory_required=bridge.activation_memory(lifm, batch_size))
        progress = bridge.Progress(steps * batch_size, "sample image", preview=latent_preview)

        def run(start, count):
            part_mask = mask
            if mask is not None and mask.ndim >= 3 and mask.shape[0] == batch_size and batch_size > 1:
                part_mask = mask[start:start + count]
            return pipe.sample_images(view, part_mask, steps=steps, solver=solver, seed=seed + start,
                                      batch_size=count, callback=progress.callback(count))

        z = torch.cat(run_in_chunks(batch_size, batch_size, run, "sampling"))
        latents = make_latent(z, view=view, seeds=[seed + i for i in range(batch_size)],
                              image_steps=steps, image_solver=solver, masked=mask is not None, lifm_model=lifm.name,
                              lifm_id=getattr(lifm.module, "fingerprint", None),
                              lifm_dtype=str(lifm.dtype).replace("torch.", ""))
        ui = {}
        if vae is not None:
            ui["images"] = save_preview(make_pipeline(vae=vae).decode(z))
        return {"ui": ui, "result": (latents,)}


class EchoFlowAnimate:
    SEARCH_ALIASES = ["ejection fraction", "lvfm", "echo video", "cardiac"]
    DESCRIPTION = (
        "Animates latent images into latent echo videos with the latent video flow model (LVFM), "
        "conditioned on the ejection fraction (EF, percent). The number of frames comes from the model."
    )
    CATEGORY = CATEGORY + "/sampling"
    FUNCTION = "animate"
    RETURN_TYPES = (LATENT_T, "FLOAT")
    RETURN_NAMES = ("latent_video", "ef")
    OUTPUT_TOOLTIPS = (
        "Scaled latent videos [B, 4, T, 28, 28]; decode them with EchoFlow VAE Decode.",
        "The EF the videos were conditioned on (percent), e.g. for Save EchoNet Dataset or Estimate EF.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lvfm": (LVFM_T, {"tooltip": "Latent video flow model from EchoFlow Load Video Flow."}),
                "latents": (LATENT_T, {"tooltip": "Latent images to animate (ideally the passing output of "
                                       "EchoFlow Privacy Gate)."}),
                "ef": ("FLOAT", {"default": 55.0, "min": EF_MIN, "max": EF_MAX, "step": 0.5, "round": 0.1,
                                 "tooltip": "Target ejection fraction in percent: <40 reduced, 40-49 mildly "
                                 "reduced, 50-70 normal, >70 hyperdynamic. The released model saw about 7-97 %, "
                                 "the demo 10-85 %; requests outside come out pulled toward that range."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": STEPS_TIP}),
                "solver": (_solvers(), {"default": "euler", "tooltip": SOLVER_TIP}),
                "guidance": ("FLOAT", {"default": AUTO_GUIDANCE, "min": AUTO_GUIDANCE, "max": 20.0, "step": 0.1,
                                       "round": 0.01,
                                       "tooltip": "Classifier-free guidance on the EF. -1 = the video model's own "
                                       "recommendation (its sampling.json: 3 for the bundled demo; 1 = off for "
                                       "the released weights, as the reference). 1 = off; >1 follows the EF more "
                                       "strongly at twice the cost. The value used is shown on the node."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": SEED_TIP}),
            }
        }

    def animate(self, lvfm, latents, ef, steps, solver, guidance, seed):
        if lvfm is None or getattr(lvfm, "kind", None) != "lvfm":
            raise EchoFlowInputError("lvfm: connect EchoFlow Load Video Flow")
        z = latent_samples(latents)
        if z.ndim != 4:
            raise EchoFlowInputError(
                f"latents: Animate needs latent images [B, C, h, w], got {tuple(z.shape)} (already a video?)"
            )
        try:
            check_ef(ef, "ef")
        except ValueError as exc:
            raise EchoFlowInputError(str(exc)) from None
        channels = getattr(lvfm.module, "latent_channels", z.shape[1])
        if z.shape[1] != channels:
            raise EchoFlowInputError(
                f"latents have {z.shape[1]} channels but the LVFM expects {channels}; use the VAE the models "
                "were trained with"
            )
        recommended = getattr(lvfm.module, "recommended_guidance", None)
        if float(guidance) < 0:
            guidance = float(recommended) if recommended is not None else 1.0
        guidance = float(guidance)
        b = z.shape[0]
        pipe = make_pipeline(lvfm=lvfm, memory_required=bridge.activation_memory(lvfm, b * (2 if guidance != 1 else 1)))
        evals = 2 if guidance != 1.0 else 1
        progress = bridge.Progress(steps * b, "animate", preview=latent_preview)
        bridge.log.debug("EchoFlow Animate: %d videos x %d steps (%d model calls each)", b, steps, evals)

        def run(start, count):
            return pipe.animate(z[start:start + count], float(ef), steps=steps, solver=solver,
                                guidance=float(guidance), seed=seed + start, callback=progress.callback(count))

        video = torch.cat(run_in_chunks(b, b, run, "animation"))
        meta = {k: v for k, v in latents.items() if k != "samples"}
        meta.update(ef=[float(ef)] * b, video_seeds=[seed + i for i in range(b)], video_steps=steps,
                    guidance=float(guidance), video_solver=solver, ef_category=ef_category(float(ef)),
                    lvfm_model=lvfm.name, lvfm_id=getattr(lvfm.module, "fingerprint", None),
                    lvfm_dtype=str(lvfm.dtype).replace("torch.", ""))
        return {"ui": {"ef": [float(ef)], "ef_category": [ef_category(float(ef))], "guidance": [guidance],
                       "text": [f"EF {float(ef):g} % ({ef_category(float(ef))}), guidance {guidance:g}"]},
                "result": (make_latent(video, **meta), float(ef))}


class EchoFlowLVMask:
    SEARCH_ALIASES = ["left ventricle", "lv mask", "segmentation"]
    DESCRIPTION = (
        "Draws a parametric left-ventricle mask (a bullet shape: rounded apex, flatter base) for EchoFlow "
        "Sample Image, for users without a hand-drawn mask. Coordinates are fractions of the image."
    )
    CATEGORY = CATEGORY + "/mask"
    FUNCTION = "make"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("Binary LV mask [1, size, size] (1 inside the cavity).",)

    @classmethod
    def INPUT_TYPES(cls):
        frac = {"min": 0.0, "max": 1.0, "step": 0.01, "round": 0.001}
        return {
            "required": {
                "center_x": ("FLOAT", {"default": 0.5, **frac, "tooltip": "Horizontal centre of the LV long "
                                       "axis (0 = left edge, 1 = right edge)."}),
                "center_y": ("FLOAT", {"default": 0.5, **frac, "tooltip": "Vertical centre of the LV long "
                                       "axis (0 = top/transducer, 1 = bottom)."}),
                "length": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 1.0, "step": 0.01, "round": 0.001,
                                     "tooltip": "Long-axis length, apex to mitral base (fraction of height)."}),
                "width": ("FLOAT", {"default": 0.28, "min": 0.05, "max": 1.0, "step": 0.01, "round": 0.001,
                                    "tooltip": "Widest short-axis diameter (fraction of width)."}),
                "angle": ("FLOAT", {"default": 0.0, "min": -90.0, "max": 90.0, "step": 1.0, "round": 0.1,
                                    "tooltip": "Clockwise tilt of the long axis from vertical, in degrees."}),
                "size": ("INT", {"default": 112, "min": 8, "max": 1024, "step": 4, "tooltip": "Mask size in "
                                 "pixels (EchoFlow images are 112x112; any size is resized as needed)."}),
            }
        }

    def make(self, center_x, center_y, length, width, angle, size):
        from echoflow_models.masks import lv_mask

        mask = lv_mask(int(size), center_x, center_y, length, width, angle)[None]
        if mask.sum() == 0:
            raise EchoFlowInputError("the LV mask is empty: its centre is outside the image or it is too small")
        preview = (mask[0, :, :, None].expand(-1, -1, 3) * 255).to(torch.uint8)[None]
        return {"ui": {"images": save_preview(preview, "echoflow_mask")},
                "result": (mask.to(bridge.intermediate_device()),)}


NODE_CLASS_MAPPINGS = {
    "EchoFlowSampleImage": EchoFlowSampleImage,
    "EchoFlowAnimate": EchoFlowAnimate,
    "EchoFlowLVMask": EchoFlowLVMask,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoFlowSampleImage": "EchoFlow Sample Image",
    "EchoFlowAnimate": "EchoFlow Animate",
    "EchoFlowLVMask": "EchoFlow LV Mask",
}
