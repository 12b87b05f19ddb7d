"""EF by LV segmentation as an evaluation instrument: its own error on real phantom videos, and how the EF of
generated videos reads through it (MAE, r, slope, per-request table).

The EF regressor can be fooled by cues a generator attaches to the EF (texture flicker); this instrument
reads only the outlined cavity's volume through the beat (`echoflow_models.lv_ef`), so the evaluation
reports both and tunes guidance on this one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from echoflow_models.checkpoint import load_model
from echoflow_models.lv_ef import segment_and_measure
from echoflow_models.lvseg import LVSegNet
from echoflow_models.metrics import regression_metrics
from echoflow_models.phantom import PatientAnatomy, render_video
from echoflow_models.weights import find_model_folders

# Dataset seed of the instrument check's phantom patients (disjoint from evaluate's other seeds).
INSTRUMENT_SEED = 7003


def seg_folder(root: Path) -> Path:
    """The weights root's LV segmentation model (the first under `seg/`)."""
    folders = find_model_folders(root, "seg")
    if not folders:
        raise FileNotFoundError(f"no LV segmentation model under {root / 'seg'}; EF by segmentation needs one "
                                "(`echoflow train seg`)")
    return Path(next(iter(folders.values())))


def load_seg(root: Path) -> LVSegNet:
    model = load_model(seg_folder(root))
    if not isinstance(model, LVSegNet):
        raise TypeError(f"{seg_folder(root)} holds a {type(model).__name__}, not an LVSegNet")
    return model.eval()


def seg_ef(model: LVSegNet, videos: list[np.ndarray], view: str = "A4C", fps: float = 32.0) -> np.ndarray:
    """EF (percent) of each uint8 video [T, H, W(, C)] by segmentation; NaN where no beat could be read."""
    return np.array([segment_and_measure(model, v, fps, view)[1].ef for v in videos], dtype=np.float64)


def response_stats(requested: np.ndarray, measured: np.ndarray) -> dict:
    """MAE, Pearson r, least-squares slope / intercept of measured on requested, bias and residual sd,
    and the per-request table, over the finite readings (the count of unreadable videos is reported)."""
    requested = np.asarray(requested, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    ok = np.isfinite(measured)
    out: dict = {"n": int(ok.sum()), "unreadable": int((~ok).sum()),
                 "table": [[round(float(a), 2), None if not np.isfinite(b) else round(float(b), 2)]
                           for a, b in zip(requested, measured, strict=True)]}
    if ok.sum() < 3:
        return out
    x, y = requested[ok], measured[ok]
    fit = regression_metrics(torch.from_numpy(x), torch.from_numpy(y))  # MAE and r as `evaluate` reports them
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    out.update(mae=fit["mae"], pearson_r=fit["pearson_r"], slope=float(slope), intercept=float(intercept),
               bias=float((y - x).mean()), residual_sd=float(residual.std(ddof=2)))
    return out


def instrument_error(model: LVSegNet, pipe, videos: int = 16, view: str = "A4C", seed: int = INSTRUMENT_SEED) -> dict:
    """The instrument on real phantom videos of new patients at known EF (20-80 %), as long as the video
    model's (64 frames at 32 fps for the demo): as rendered, and passed through the A-VAE (encode ->
    decode), the look every generated video has."""
    frames = int(pipe.lvfm.num_frames) if pipe.lvfm is not None else 64
    rng = np.random.default_rng([seed, 0x5E6])
    truth, raw, recon = [], [], []
    for k in range(videos):
        anatomy = PatientAnatomy.sample(int(rng.integers(1, 2**31 - 1)), view)
        video = render_video(anatomy, ef=20.0 + 60.0 * k / max(videos - 1, 1), num_frames=frames, seed=k)
        truth.append(video.ef)
        raw.append(video.frames)
        with torch.inference_mode():
            recon.append(pipe.decode(pipe.encode(video.frames))[..., 0].numpy())
    truth_arr = np.array(truth)
    return {"videos": videos, "view": view, "seed": seed,
            "rendered": response_stats(truth_arr, seg_ef(model, raw, view)),
            "through_vae": response_stats(truth_arr, seg_ef(model, recon, view))}
