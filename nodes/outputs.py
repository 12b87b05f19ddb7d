"""Output nodes: Save Video (mp4/AVI + preview + metadata), Save EchoNet Dataset (+ LV labels), Stack Videos."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from . import bridge
from .common import (
    CATEGORY,
    EF_MAX,
    EF_MIN,
    SEG_T,
    VIDEO_INFO_T,
    EchoFlowInputError,
    ef_category,
    to_json,
    videos_and_info,
    webp_preview,
)

PREVIEW = "preview only"  # an mp4 per video in ComfyUI's temp folder: shown on the node, nothing kept
FORMATS = ("mp4", "avi", "mp4+avi", PREVIEW)
SPLITS = ("TRAIN", "VAL", "TEST")


# ------------------------------------------------------------------------------------- encoding
def write_video(path: Path, frames: torch.Tensor, fps: float, kind: str, metadata: dict | None = None) -> Path:
    """uint8 ``[T,H,W,3]`` -> ``path``: H.264 mp4 (metadata in its comment tag) or EchoNet-style MJPEG AVI.
    Written to a temporary name and renamed, never replacing an existing file."""
    from echoflow_models.video_io import write_avi, write_mp4

    array = frames.contiguous().cpu().numpy()
    if kind == "mp4":
        return write_mp4(path, array, fps, metadata=metadata)
    return write_avi(path, array, fps)


def _run_metadata(prompt, extra_pnginfo, **fields) -> dict:
    meta = {"software": "comfyui-echoflow", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta.update({k: v for k, v in fields.items() if v is not None})
    if prompt is not None:
        meta["prompt"] = prompt
    if isinstance(extra_pnginfo, dict) and "workflow" in extra_pnginfo:
        meta["workflow"] = extra_pnginfo["workflow"]
    return meta


def _parse_report(report: str | None):
    if not report:
        return None
    try:
        return json.loads(report)
    except (TypeError, ValueError):
        return report  # a text report is kept as text


class EchoFlowSaveVideo:
    SEARCH_ALIASES = ["mp4", "avi", "echo video"]
    DESCRIPTION = (
        "Saves frames as H.264 mp4 and/or EchoNet-style AVI into ComfyUI's output folder, shows the video on "
        "the node, and writes metadata (workflow, generation parameters, privacy report) into the mp4 comment "
        "and a .json next to each video. Every video of a batch gets its own preview and its own VIDEO output "
        "(a list, for core video nodes). 'preview only' shows the videos without keeping any file."
    )
    CATEGORY = CATEGORY + "/output"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("VIDEO", "STRING")
    RETURN_NAMES = ("video", "paths")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("Each saved video as a core VIDEO (a list: core nodes such as SaveVideo run once per video).",
                       "JSON list of the saved files, relative to the output folder (empty for 'preview only').")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames from EchoFlow VAE Decode (videos one after another)."}),
                "filename_prefix": ("STRING", {"default": "echoflow/EchoFlow", "tooltip": "Output path prefix "
                                               "inside ComfyUI's output folder; a counter is appended and "
                                               "nothing is overwritten."}),
                "fps": ("FLOAT", {"default": 32.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip": "Frames "
                                  "per second (EchoNet-Dynamic videos are ~50 fps; EchoFlow was trained at 32)."}),
                "format": (list(FORMATS), {"default": "mp4", "tooltip": "mp4: H.264 for viewing; avi: MJPEG "
                                           "like EchoNet-Dynamic's Videos/*.avi; or both. 'preview only' shows the "
                                           "videos on the node and keeps no file in the output folder."}),
            },
            "optional": {
                "video_info": (VIDEO_INFO_T, {"tooltip": "VAE Decode's video_info: splits the frames into videos "
                                              "and stores each video's EF, seeds, models and privacy verdict in "
                                              "its metadata. Without it the whole batch is one video."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, images, filename_prefix, fps, format, video_info=None, prompt=None, extra_pnginfo=None):
        if format not in FORMATS:
            raise EchoFlowInputError(f"format must be one of {FORMATS}, got {format!r}")
        if not fps or fps <= 0:
            raise EchoFlowInputError(f"fps must be positive, got {fps}")
        videos, items, run = videos_and_info(images, video_info)
        preview_only = format == PREVIEW
        out_dir = (bridge.temp_directory() if preview_only else bridge.output_directory()).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        target = bridge.safe_subpath(out_dir, filename_prefix or "echoflow/EchoFlow")
        folder, stem = target.parent, target.name or "EchoFlow"
        kinds = ["mp4"] if preview_only else ["mp4", "avi"] if format == "mp4+avi" else [format]
        exts = [f".{k}" for k in kinds] + ([] if preview_only else [".json"])
        progress = bridge.Progress(len(videos), "save video")
        meta = _run_metadata(prompt, extra_pnginfo, fps=float(fps), **run)
        saved, previews, outputs = [], [], []
        for i, video in enumerate(videos):
            base, _counter = bridge.next_save_name(folder, stem, exts)
            item_meta = dict(meta, **items[i], video_index=i, frames=int(video.shape[0]),
                             height=int(video.shape[1]), width=int(video.shape[2]))
            if "ef" in items[i]:
                item_meta["ef_category"] = ef_category(items[i]["ef"])
            first = None
            for kind in kinds:
                path = base.with_name(base.name + "." + kind)
                write_video(path, video, fps, kind, item_meta if kind == "mp4" else None)
                first = first or path
                if not preview_only:
                    saved.append(path.relative_to(out_dir).as_posix())
                if kind == "mp4":
                    sub = path.parent.relative_to(out_dir).as_posix()
                    previews.append({"filename": path.name, "subfolder": "" if sub == "." else sub,
                                     "type": "temp" if preview_only else "output"})
            if not preview_only:
                base.with_name(base.name + ".json").write_text(to_json(item_meta))
            if "mp4" not in kinds:
                previews.append(webp_preview(video, fps))
            outputs.append(bridge.video_from_file(first))
            progress.update(1)
        ui = {"images": previews, "animated": [True] * len(previews),
              "echoflow_video": [{"files": saved, "fps": float(fps), "videos": len(videos),
                                  "preview_only": preview_only}]}
        return {"ui": ui, "result": (outputs, json.dumps(saved))}


class EchoFlowPrivacyVerdictMissing(EchoFlowInputError):
    """Frames without a privacy verdict cannot enter a synthetic dataset."""


class EchoFlowSaveEchoNetDataset:
    SEARCH_ALIASES = ["echonet", "dataset", "filelist"]
    DESCRIPTION = (
        "Appends videos to a dataset in the EchoNet-Dynamic layout (Videos/*.avi and FileList.csv with EF, "
        "split, frames and fps) inside ComfyUI's output folder. Every row records its source, privacy verdict, "
        "seeds and weights; a generation already in the dataset (same weights, seeds and EF, e.g. a re-queued "
        "run with a fixed seed) is not written again. Existing rows and files are never overwritten or deleted. "
        "With seg_model connected, each video also gets LV labels (Masks/<name>.npz and VolumeTracings.csv)."
    )
    CATEGORY = CATEGORY + "/output"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("dataset_dir", "total_videos")
    OUTPUT_TOOLTIPS = ("The dataset folder, relative to ComfyUI's output folder.", "Videos in the dataset after "
                       "this run.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames from EchoFlow VAE Decode (videos one after another)."}),
                "ef": ("FLOAT", {"default": 55.0, "min": EF_MIN, "max": EF_MAX, "step": 0.5, "round": 0.1,
                                 "tooltip": "EF (percent) written to FileList.csv for videos whose video_info "
                                 "carries none (frames not made by EchoFlow Animate)."}),
                "dataset_dir": ("STRING", {"default": "echoflow/echonet_synthetic", "tooltip": "Dataset folder "
                                           "inside ComfyUI's output folder."}),
                "split": (list(SPLITS), {"default": "TRAIN", "tooltip": "Split column of FileList.csv."}),
                "fps": ("FLOAT", {"default": 32.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip": "Frames "
                                  "per second of the AVI files and the FPS column."}),
                "name_prefix": ("STRING", {"default": "synth", "tooltip": "File names are <prefix>_<number> "
                                           "(letters, digits, '_' or '-')."}),
            },
            "optional": {
                "video_info": (VIDEO_INFO_T, {"tooltip": "VAE Decode's video_info: splits the frames into videos; "
                                              "each row gets the video's EF, seeds, models, similarity and tau, so a "
                                              "re-queued run does not add duplicates."}),
                "append_to_existing": ("BOOLEAN", {"default": False, "tooltip": "Allow appending to a "
                                                   "FileList.csv this pack did not write (e.g. a real dataset): the "
                                                   "original is kept as FileList.original.csv and every new row "
                                                   "is marked Source=EchoFlow."}),
                "seg_model": (SEG_T, {"tooltip": "LV segmentation model (EchoFlow Load LV Segmentation): each "
                                      "saved video also gets LV labels, Masks/<name>.npz (a mask per frame) and "
                                      "its ED/ES tracings in VolumeTracings.csv (EchoNet-Dynamic's layout)."}),
            },
        }

    def save(self, images, ef, dataset_dir, split, fps, name_prefix, video_info=None, append_to_existing=False,
             seg_model=None):
        from echoflow_models.conventions import check_ef
        from echoflow_models.echonet import EchoNetFormatError, read_filelist
        from echoflow_models.synthetic_dataset import append_synthetic, check_name_prefix, generation_key

        if split not in SPLITS:
            raise EchoFlowInputError(f"split must be one of {SPLITS}, got {split!r}")
        try:
            check_ef(ef, "ef")
            prefix = check_name_prefix((name_prefix or "synth").strip(), "name_prefix")
        except ValueError as exc:
            raise EchoFlowInputError(str(exc)) from None
        if not fps or fps <= 0:
            raise EchoFlowInputError(f"fps must be positive, got {fps}")
        if not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
            raise EchoFlowInputError(f"fps must be a positive number, got {fps}")
        videos, items, run = videos_and_info(images, video_info)
        privacy = run.get("privacy") or {}
        if not privacy or any("max_similarity" not in item for item in items):
            raise EchoFlowPrivacyVerdictMissing(
                "a synthetic dataset takes only videos that passed the privacy gate: connect the video_info of "
                "the EchoFlow VAE Decode that decodes Animate's output, with EchoFlow Privacy Gate between Sample "
                "Image and Animate. Nothing was written"
            )
        out_dir = bridge.output_directory()
        root = bridge.safe_subpath(out_dir, dataset_dir or "echoflow/echonet_synthetic")
        labels = _plan_lv_labels(seg_model, videos, float(fps), run, root) if seg_model is not None else None
        weights = "+".join(str(run[k]) for k in ("lifm_model", "lvfm_model") if run.get(k))
        progress = bridge.Progress(len(videos), "save dataset")
        added, duplicates, label_notes = [], [], []
        # everything that decides the pixels; a video whose metadata lacks any of it gets no key (the ContentHash
        # still keeps byte-identical frames out)
        key_fields = ("lifm_id", "lvfm_id", "vae_id", "lifm_dtype", "lvfm_dtype", "vae_dtype", "view", "image_steps",
                      "video_steps", "image_solver", "video_solver", "guidance")
        for i, video in enumerate(videos):
            item = items[i]
            generation = None
            if all(run.get(k) is not None for k in key_fields) and not run.get("masked") \
                    and all(item.get(k) is not None for k in ("seed", "video_seed", "ef")):
                generation = generation_key(**{k: run[k] for k in key_fields}, seed=item["seed"],
                                            video_seed=item["video_seed"], ef=float(item["ef"]))
            extra = {"View": run.get("view") or privacy.get("view") or "", "Weights": weights or None,
                     "Generation": generation,
                     "Tau": f"{privacy['tau']:.6g}" if "tau" in privacy else None, "Seed": item.get("seed"),
                     "VideoSeed": item.get("video_seed"),
                     "MaxSimilarity": f"{item['max_similarity']:.6f}" if "max_similarity" in item else None}
            try:
                rec, written = append_synthetic(root, video.contiguous().cpu().numpy(), float(fps),
                                                float(item.get("ef", ef)), split, extra, prefix=prefix,
                                                add_missing_columns=bool(append_to_existing))
            except EchoNetFormatError as exc:
                raise EchoFlowInputError(f"dataset_dir: {exc}") from None
            (added if written else duplicates).append(rec.file_name)
            if labels is not None:
                label_notes.append(_write_lv_labels(root, rec.file_name, written, *labels[i]))
            progress.update(1)
        total = len(read_filelist(root))
        shown = root.resolve().relative_to(out_dir.resolve()).as_posix()
        text = f"{len(added)} video(s) added to {shown} ({total} in FileList.csv)"
        text += f": {', '.join(added)}" if added else ""
        if labels is not None:
            labelled = sum(note is None for note in label_notes)
            text += f"; LV labels (Masks/*.npz, ED/ES in VolumeTracings.csv) for {labelled} of {len(videos)} video(s)"
            text += "".join(f"; {note}" for note in label_notes if note)
        if duplicates:
            text += (f"; {len(duplicates)} already there (same weights, seeds and EF: {', '.join(duplicates)}), not "
                     "written again. Change the seeds (control after generate: increment) for new videos")
        return {"ui": {"text": [text]}, "result": (shown, total)}


def _plan_lv_labels(seg_model, videos: list[torch.Tensor], fps: float, run: dict, root: Path) -> list[tuple]:
    """Segment every video and pick its traced ED/ES frames before anything is written: [(masks, ED, ES)].
    A video whose traced frames show no LV cavity, or a VolumeTracings.csv that is not EchoNet's, stops the
    save here, with nothing written."""
    from echoflow_models.lv_labels import LVLabelError, check_tracings_file, traced_frames, tracing_rows

    from .analysis import check_measure_inputs, check_seg_model, resolve_view, segment_videos

    check_seg_model(seg_model)
    check_measure_inputs(seg_model, videos, fps, "area-length")
    try:
        check_tracings_file(root)
    except LVLabelError as exc:
        raise EchoFlowInputError(f"dataset_dir: {exc}. Nothing was written") from None
    plan = []
    for i, (masks, m) in enumerate(segment_videos(seg_model, videos, fps, resolve_view("auto", run), "area-length")):
        ed, es = traced_frames(m.volumes, m.ed_frames, m.es_frames)
        try:
            tracing_rows(f"video {i}", masks, [ed, es])
        except LVLabelError as exc:
            raise EchoFlowInputError(
                f"seg_model: {exc} (video {i} of this batch). Nothing was written; disconnect seg_model to save "
                "these videos without LV labels"
            ) from None
        plan.append((masks, ed, es))
    return plan


def _write_lv_labels(root: Path, file_name: str, written: bool, masks: torch.Tensor, ed: int, es: int) -> str | None:
    """Write one saved video's LV labels; None when they are in place, else why not (the video stays saved).
    A video that was already in the dataset gets labels only if it has none yet."""
    from echoflow_models.lv_labels import MASKS_DIR, LVLabelError, write_lv_labels

    if not written and (root / MASKS_DIR / f"{file_name}.npz").exists():
        return None
    try:
        write_lv_labels(root, file_name, masks, ed, es)
    except LVLabelError as exc:
        return f"{file_name}: no LV labels written ({exc})"
    return None


class EchoFlowStackVideos:
    SEARCH_ALIASES = ["side by side", "hstack", "compare"]
    DESCRIPTION = (
        "Places up to four videos side by side (e.g. one anatomy at EF 25/45/65) so they play as one video. "
        "All inputs must have the same frame count and size."
    )
    CATEGORY = CATEGORY + "/output"
    FUNCTION = "stack"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Frames [N, H, W_total, 3], inputs left to right.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images_1": ("IMAGE", {"tooltip": "Leftmost video (frames as a batch)."}),
                "images_2": ("IMAGE", {"tooltip": "Second video."}),
                "spacing": ("INT", {"default": 4, "min": 0, "max": 64, "tooltip": "Black pixels between videos."}),
            },
            "optional": {
                "images_3": ("IMAGE", {"tooltip": "Third video (optional)."}),
                "images_4": ("IMAGE", {"tooltip": "Fourth video (optional)."}),
            },
        }

    def stack(self, images_1, images_2, spacing, images_3=None, images_4=None):
        parts = [p for p in (images_1, images_2, images_3, images_4) if p is not None]
        first = parts[0]
        for i, p in enumerate(parts[1:], start=2):
            if p.shape[0] != first.shape[0] or p.shape[1] != first.shape[1] or p.shape[-1] != first.shape[-1]:
                raise EchoFlowInputError(
                    f"images_{i}: {tuple(p.shape)} does not match images_1 {tuple(first.shape)} (frames, height "
                    "and channels must agree)"
                )
        gap = first.new_zeros(first.shape[0], first.shape[1], int(spacing), first.shape[-1])
        row = []
        for i, p in enumerate(parts):
            if i and spacing:
                row.append(gap)
            row.append(p.to(first.device, first.dtype))
        return (torch.cat(row, dim=2),)


NODE_CLASS_MAPPINGS = {
    "EchoFlowSaveVideo": EchoFlowSaveVideo,
    "EchoFlowSaveEchoNetDataset": EchoFlowSaveEchoNetDataset,
    "EchoFlowStackVideos": EchoFlowStackVideos,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoFlowSaveVideo": "EchoFlow Save Video",
    "EchoFlowSaveEchoNetDataset": "EchoFlow Save EchoNet Dataset",
    "EchoFlowStackVideos": "EchoFlow Stack Videos",
}
