"""Analysis nodes: Estimate EF (the EF regressor, EF by LV segmentation, or both side by side) and Segment LV
(a mask per frame, the contour drawn on the frames, EDV/ESV/EF from the volume curve), plus the checks and
the segmentation pass that Save EchoNet Dataset shares for its LV labels."""

from __future__ import annotations

import json
import math

import torch

from . import bridge
from .common import (
    CATEGORY,
    EF_T,
    SEG_T,
    VIDEO_INFO_T,
    VIEWS,
    EchoFlowInputError,
    ef_category,
    videos_and_info,
    webp_preview,
)

ANALYSIS = CATEGORY + "/analysis"
EF_METHODS = ("auto", "regressor", "segmentation", "both")
VIEW_CHOICES = ("auto", *VIEWS)
SEG_CHUNK = 32  # frames per forward pass of the segmentation network (its `segment` default)
# contour colours: every frame yellow, the end-diastolic frames green and the end-systolic ones red, so the
# frames the EF is read from stand out while the video plays
CONTOUR_RGB = (255, 210, 0)
ED_RGB = (40, 220, 90)
ES_RGB = (255, 60, 60)


def _volume_methods() -> tuple[str, ...]:
    from echoflow_models.lv_ef import VOLUME_METHODS

    return VOLUME_METHODS


# ---------------------------------------------------------------------------------- checks and the pass
def check_seg_model(seg_model, name: str = "seg_model", why: str = "") -> None:
    """An EchoFlow LV segmentation model or a clear error naming the node to connect."""
    if seg_model is None:
        raise EchoFlowInputError(f"{name}: {why + ' ' if why else ''}connect EchoFlow Load LV Segmentation")
    kind = getattr(seg_model, "kind", None)
    if kind != "seg":
        shown = f"an EchoFlow {kind} model" if kind else type(seg_model).__name__
        raise EchoFlowInputError(f"{name}: got {shown}, not an LV segmentation model; connect EchoFlow Load LV "
                                 "Segmentation (a seg/<name>/ model folder)")


def check_measure_inputs(seg_model, videos: list[torch.Tensor], fps, method: str, name: str = "images") -> None:
    """Everything a segmentation pass needs, checked before any compute."""
    if method not in _volume_methods():
        raise EchoFlowInputError(f"volume method must be one of {', '.join(_volume_methods())}, got {method!r}")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or not math.isfinite(fps) or fps <= 0:
        raise EchoFlowInputError(f"fps must be a positive number (the beat finder needs it), got {fps!r}")
    size = int(seg_model.module.config.size)
    height, width = int(videos[0].shape[1]), int(videos[0].shape[2])
    if (height, width) != (size, size):
        raise EchoFlowInputError(
            f"{name}: frames are {height}x{width}, but LV segmentation measures {size}x{size} frames (its volumes "
            f"assume that pixel spacing): resize the frames to {size}x{size} first (e.g. with core Upscale Image)"
        )


def resolve_view(view: str, run: dict) -> str:
    """``auto``: the view video_info names (what the LIFM was asked for), else A4C (EchoNet-Dynamic's view)."""
    if view == "auto":
        return run.get("view") if run.get("view") in VIEWS else "A4C"
    if view not in VIEWS:
        raise EchoFlowInputError(f"view must be one of {', '.join(VIEW_CHOICES)}, got {view!r}")
    return view


def segment_videos(seg_model, videos: list[torch.Tensor], fps: float, view: str, method: str) -> list[tuple]:
    """[(bool masks [T, H, W] on the CPU, LVMeasurement)] per video, on ComfyUI's device."""
    from echoflow_models.lv_ef import measure_ef

    longest = max(int(v.shape[0]) for v in videos)
    bridge.load_models([seg_model], memory_required=bridge.activation_memory(seg_model, min(SEG_CHUNK, longest)))
    progress = bridge.Progress(len(videos), "segment LV")
    out = []
    with torch.inference_mode():
        for video in videos:
            masks = seg_model.module.segment(video, chunk=SEG_CHUNK)
            out.append((masks, measure_ef(masks, float(fps), view, method)))
            progress.update(1)
    return out


def contour_overlay(frames: torch.Tensor, masks: torch.Tensor, ed_frames: list[int], es_frames: list[int]
                    ) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] with each frame's LV outline (a 1-pixel border, 4-neighbourhood) drawn in."""
    inner = masks.clone()
    inner[:, 1:-1, 1:-1] = (masks[:, 1:-1, 1:-1] & masks[:, :-2, 1:-1] & masks[:, 2:, 1:-1]
                            & masks[:, 1:-1, :-2] & masks[:, 1:-1, 2:])
    inner[:, 0], inner[:, -1], inner[:, :, 0], inner[:, :, -1] = False, False, False, False  # the image edge
    edge = masks & ~inner
    colours = torch.tensor(CONTOUR_RGB, dtype=torch.uint8).repeat(frames.shape[0], 1)
    colours[[f for f in ed_frames if 0 <= f < len(colours)]] = torch.tensor(ED_RGB, dtype=torch.uint8)
    colours[[f for f in es_frames if 0 <= f < len(colours)]] = torch.tensor(ES_RGB, dtype=torch.uint8)
    return torch.where(edge[..., None], colours[:, None, None, :], frames)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _volume_unit(view: str) -> str:
    return " (area^1.5, relative)" if view == "PSAX" else " mL"


def describe_measurement(m, view: str) -> str:
    """'EF 52.3% (normal), EDV 95.1 mL, ESV 45.4 mL' or why there is no EF."""
    if not math.isfinite(m.ef):
        return "no LV cavity found (are these echo frames of the chosen view?)"
    unit = _volume_unit(view)
    return f"EF {m.ef:.1f}% ({ef_category(m.ef)}), EDV {m.edv:.1f}{unit}, ESV {m.esv:.1f}{unit}"


def _frames_text(frames: list[int]) -> str:
    return ", ".join(str(f) for f in frames) or "none"


def _target_text(value: float | None, target) -> str:
    if target is None:
        return ""
    text = f", target {float(target):.1f}%"
    return text + (f", error {abs(value - float(target)):.1f}" if value is not None else "")


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else float("nan")


# ------------------------------------------------------------------------------------------------- nodes
class EchoFlowSegmentLV:
    SEARCH_ALIASES = ["lv segmentation", "left ventricle", "ejection fraction", "mask", "contour"]
    DESCRIPTION = (
        "Outlines the left-ventricular cavity in every frame with an LV segmentation model and reads the EF "
        "the EchoNet-Dynamic way: cavity volume per frame (area-length or method of discs), ED and ES frames "
        "from the volume curve, EF = (EDV - ESV) / EDV (median over beats). Outputs a MASK per frame and the "
        "frames with the LV contour drawn (yellow; ED frames green, ES frames red), previewed on the node."
    )
    CATEGORY = ANALYSIS
    FUNCTION = "segment"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MASK", "IMAGE", "FLOAT", "STRING", "STRING")
    RETURN_NAMES = ("masks", "overlay", "ef", "report", "measurements_json")
    OUTPUT_TOOLTIPS = (
        "The LV cavity of every frame, [frames, H, W] (1 = cavity), videos one after another like the images.",
        "The frames with the LV contour drawn in.",
        "Mean EF by segmentation over the videos (percent; NaN when no LV was found).",
        "Per video: EF, EDV/ESV, ED/ES frames, repaired frames, and the requested EF and error when known.",
        "Per video as JSON: the volume curve, ED/ES frames, per-beat EFs, view, method and requested EF.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seg_model": (SEG_T, {"tooltip": "LV segmentation model from EchoFlow Load LV Segmentation."}),
                "images": ("IMAGE", {"tooltip": "Video frames (112x112), e.g. from EchoFlow VAE Decode."}),
                "method": (list(_volume_methods()), {"default": "area-length", "tooltip": "Cavity volume per "
                           "frame: area-length (8 A^2 / 3 pi L, EchoNet-Dynamic's) or the single-plane method of "
                           "discs (20 discs). PSAX has no long axis: A^1.5 either way."}),
                "fps": ("FLOAT", {"default": 32.0, "min": 1.0, "max": 240.0, "step": 1.0, "tooltip": "Frames per "
                                  "second, for the beat finder (EchoFlow videos are 32 fps)."}),
                "view": (list(VIEW_CHOICES), {"default": "auto", "tooltip": "The echo view. auto: the view in "
                                              "video_info, else A4C."}),
            },
            "optional": {
                "video_info": (VIDEO_INFO_T, {"tooltip": "VAE Decode's video_info: splits the frames into videos "
                                              "and gives each video's requested EF, so the report shows the error. "
                                              "Without it the whole batch is one video."}),
            },
        }

    def segment(self, seg_model, images, method, fps, view, video_info=None):
        check_seg_model(seg_model)
        videos, items, run = videos_and_info(images, video_info)
        check_measure_inputs(seg_model, videos, fps, method)
        view = resolve_view(view, run)
        results = segment_videos(seg_model, videos, float(fps), view, method)
        lines, summaries, details, masks_out, overlays, previews = [], [], [], [], [], []
        for i, (video, item, (masks, m)) in enumerate(zip(videos, items, results, strict=True)):
            target = item.get("ef")
            ef = _finite(m.ef)
            lines.append(f"video {i}: {describe_measurement(m, view)}; ED frames {_frames_text(m.ed_frames)}; "
                         f"ES frames {_frames_text(m.es_frames)}; repaired frames {_frames_text(m.repaired_frames)}"
                         + _target_text(ef, target))
            summary = {"ef": ef, "edv": _finite(m.edv), "esv": _finite(m.esv), "ed_frames": m.ed_frames,
                       "es_frames": m.es_frames, "repaired_frames": m.repaired_frames, "method": method,
                       "view": view, "target": target}
            summaries.append(summary)
            details.append(dict(m.as_dict(), ef=ef, beat_efs=[_finite(e) for e in m.beat_efs], view=view,
                                fps=float(fps), target=target, video=i))
            overlay = contour_overlay(video, masks, m.ed_frames, m.es_frames)
            overlays.append(overlay)
            masks_out.append(masks)
            previews.append(webp_preview(overlay, float(fps), "echoflow_lv_contour"))
        mean = _mean([s["ef"] for s in summaries])
        if len(videos) > 1:
            lines.append(f"mean EF by segmentation {mean:.1f}%")
        report = "\n".join(lines)
        device = bridge.intermediate_device()
        mask_out = torch.cat(masks_out).float().to(device)
        overlay_out = torch.cat(overlays).float().div_(255.0).to(device)
        ui = {"images": previews, "animated": [True] * len(previews), "text": [report], "echoflow_lv": summaries}
        return {"ui": ui, "result": (mask_out, overlay_out, mean, report, json.dumps(details))}


class EchoFlowEstimateEF:
    SEARCH_ALIASES = ["ejection fraction", "lvef"]
    DESCRIPTION = (
        "Estimates the ejection fraction of each video with an EF regressor and/or by LV segmentation (connect "
        "seg_model: the cavity outlined in every frame, EF from its volume curve), so a workflow can check that "
        "generated videos show the EF they were conditioned on (connect VAE Decode's video_info: each video is "
        "compared with the EF it was asked for). With both, the two instruments are reported side by side."
    )
    CATEGORY = ANALYSIS
    FUNCTION = "estimate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("ef", "report")
    OUTPUT_TOOLTIPS = ("Mean estimated EF over the videos (percent): the regressor's, or the segmentation's when "
                       "method is segmentation.",
                       "Per-video estimates, categories and the error to the requested EF when known.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ef_model": (EF_T, {"tooltip": "EF regressor from EchoFlow Load EF Regressor."}),
                "images": ("IMAGE", {"tooltip": "Video frames from EchoFlow VAE Decode."}),
            },
            "optional": {
                "video_info": (VIDEO_INFO_T, {"tooltip": "VAE Decode's video_info: splits the frames into videos "
                                              "and gives each video's requested EF, so the report shows the error. "
                                              "Without it the whole batch is one video."}),
                "seg_model": (SEG_T, {"tooltip": "LV segmentation model from EchoFlow Load LV Segmentation: EF "
                                      "by segmentation, an instrument independent of the regressor."}),
                "method": (list(EF_METHODS), {"default": "auto", "tooltip": "regressor, segmentation, or both "
                           "side by side. auto: both when seg_model is connected, else the regressor."}),
                "volume_method": (list(_volume_methods()), {"default": "area-length", "tooltip": "Cavity volume "
                                  "for EF by segmentation: area-length or the method of discs."}),
                "fps": ("FLOAT", {"default": 32.0, "min": 1.0, "max": 240.0, "step": 1.0, "tooltip": "Frames per "
                                  "second, for the segmentation's beat finder (EchoFlow videos are 32 fps)."}),
            },
        }

    def estimate(self, ef_model, images, video_info=None, seg_model=None, method="auto", volume_method="area-length",
                 fps=32.0):
        if method not in EF_METHODS:
            raise EchoFlowInputError(f"method must be one of {', '.join(EF_METHODS)}, got {method!r}")
        use_seg = method in ("segmentation", "both") or (method == "auto" and seg_model is not None)
        use_reg = method != "segmentation"
        if use_reg and (ef_model is None or getattr(ef_model, "kind", None) != "ef"):
            raise EchoFlowInputError("ef_model: connect EchoFlow Load EF Regressor")
        videos, items, run = videos_and_info(images, video_info)
        if use_seg:
            check_seg_model(seg_model, why=f"method {method!r} measures EF by segmentation:")
            check_measure_inputs(seg_model, videos, fps, volume_method)
        targets = [item.get("ef") for item in items]
        regressed = self._regress(ef_model, videos) if use_reg else None
        view = resolve_view("auto", run)
        measured = segment_videos(seg_model, videos, float(fps), view, volume_method) if use_seg else None
        seg_values = [_finite(m.ef) for _masks, m in measured] if measured else None
        lines = []
        for i in range(len(videos)):
            target = targets[i]
            if regressed is not None and measured is None:  # the regressor alone: the report it always gave
                v = regressed[i]
                line = f"video {i}: EF {v:.1f}% ({ef_category(v)})"
                if target is not None:
                    line += f", target {float(target):.1f}%, error {abs(v - float(target)):.1f}"
            elif regressed is None:
                line = f"video {i}: by segmentation {describe_measurement(measured[i][1], view)}"
                line += _target_text(seg_values[i], target)
            else:
                v, s = regressed[i], seg_values[i]
                line = (f"video {i}: regressor EF {v:.1f}% ({ef_category(v)}) | segmentation "
                        f"{describe_measurement(measured[i][1], view)}")
                if target is not None:
                    seg_error = f"{abs(s - float(target)):.1f}" if s is not None else "-"
                    line += (f" | target {float(target):.1f}%, error regressor {abs(v - float(target)):.1f}, "
                             f"segmentation {seg_error}")
            lines.append(line)
        reg_mean = sum(regressed) / len(regressed) if regressed else None
        seg_mean = _mean(seg_values) if seg_values else None
        if len(videos) > 1:
            if reg_mean is not None and seg_mean is None:
                lines.append(f"mean EF {reg_mean:.1f}%")
            elif reg_mean is None:
                lines.append(f"mean EF by segmentation {seg_mean:.1f}%")
            else:
                lines.append(f"mean EF regressor {reg_mean:.1f}%, segmentation {seg_mean:.1f}%")
        report = "\n".join(lines)
        ui: dict = {"text": [report]}
        if regressed is not None:
            ui["echoflow_ef"] = regressed
        if seg_values is not None:
            ui["echoflow_ef_seg"] = seg_values
        if targets[0] is not None and len(set(targets)) == 1:  # one requested EF for every video
            ui["echoflow_ef_target"] = [float(targets[0])]
        return {"ui": ui, "result": (reg_mean if reg_mean is not None else seg_mean, report)}

    @staticmethod
    def _regress(ef_model, videos: list[torch.Tensor]) -> list[float]:
        from echoflow_models.efnet import video_to_input

        device = bridge.load_models([ef_model], memory_required=bridge.activation_memory(ef_model, 1))
        progress = bridge.Progress(len(videos), "estimate EF")
        values = []
        with torch.inference_mode():
            for video in videos:
                x = video_to_input(video).to(device=device, dtype=ef_model.dtype)  # the library's one rule
                out = ef_model.module(x)
                values.append(float(torch.as_tensor(out).float().reshape(-1)[0]))
                progress.update(1)
        return values


NODE_CLASS_MAPPINGS = {
    "EchoFlowEstimateEF": EchoFlowEstimateEF,
    "EchoFlowSegmentLV": EchoFlowSegmentLV,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoFlowEstimateEF": "EchoFlow Estimate EF",
    "EchoFlowSegmentLV": "EchoFlow Segment LV",
}
