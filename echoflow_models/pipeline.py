"""`EchoFlowPipeline`: latent image -> privacy gate -> EF-conditioned latent video -> frames.

Pure Python over the four networks; the CLI and the ComfyUI nodes are thin layers over it. Latents go in
and out as float32 CPU tensors (scaled with `scaling.pt`), frames as uint8 `[..., H, W, 3]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .checkpoint import MAX_GUIDANCE, load_model
from .conventions import EF_MAX, EF_MIN, IMAGE_SIZE, VIEWS
from .privacy import GateConfigError, gate_spec, load_gate
from .reid import GateReport, PrivacyGate
from .sampling import (
    StepCallback,
    check_seed,
    check_solver,
    check_steps,
    guided_velocity,
    sample_flow,
    seeded_noise,
)
from .scaling import LatentScaler
from .vae import AutoencoderKL, frames_to_model_range, model_range_to_frames
from .weights import default_weights_root, resolve_model, weights_source

RETRY_SEED_STRIDE = 100_003  # a retry after a gate rejection uses seed + k * stride
MAX_TRIES = 1000


class PrivacyGateError(RuntimeError):
    """The gate could not clear any candidate, or no gate is configured: nothing is released."""


class GenerationError(RuntimeError):
    """A model produced NaN/inf or a blank video: broken weights or a precision that overflows. Nothing is
    written; the message says what to try."""


def check_finite_output(x: torch.Tensor, stage: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise GenerationError(
            f"the {stage} produced NaN or inf values; nothing was released. Its weights are broken or the "
            "precision overflows: check them with `echoflow info`, or run in fp32 (--dtype fp32)"
        )


def item_seeds(seed: int, batch_size: int, seeds: Sequence[int] | None = None) -> list[int]:
    """The seed of each item of a batch: `seeds` as given, else seed, seed + 1, ... (checked either way)."""
    if seeds is not None:
        seeds = [check_seed(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds is empty; give one seed per item")
        return seeds
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    seed = check_seed(seed, batch_size)
    return list(range(seed, seed + batch_size))


def view_index(view: str | int) -> int:
    if isinstance(view, int) and 0 <= view < len(VIEWS):
        return view
    if isinstance(view, str) and view.upper() in VIEWS:
        return VIEWS.index(view.upper())
    raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")


def _mask_batch(mask: torch.Tensor | np.ndarray | Image.Image) -> torch.Tensor:
    """Any mask -> float [B, H, W]. Colour masks ([H, W, 3|4], [B, H, W, 3|4]) are read by their luminance:
    a picture of a mask is one mask, not three."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float()
    colour = mask.ndim in (3, 4) and mask.shape[-1] in (3, 4) and mask.shape[-2] > 4 and mask.shape[-3] > 4
    if colour:
        mask = (mask[..., :3] * torch.tensor([0.299, 0.587, 0.114])).sum(-1)
    if mask.ndim == 2:
        mask = mask[None]
    elif mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3 or min(mask.shape[-2:]) < 2:
        raise ValueError(f"mask must be [H, W], [B, H, W], [B, 1, H, W] or a colour image [H, W, 3], got shape "
                         f"{tuple(mask.shape)}")
    if not bool(torch.isfinite(mask).all()):
        raise ValueError("mask holds NaN or inf values")
    return mask


def preprocess_mask(mask: torch.Tensor | np.ndarray | Image.Image, latent_size: int) -> torch.Tensor:
    """An LV mask at any size -> binary float [B, 1, latent, latent], as the reference demo prepares it.

    Image-size masks: 8-bit grayscale -> autocontrast -> threshold at 127 -> LANCZOS to 112x112 ->
    bilinear to the latent size -> (> 0). A mask already at the latent size is only binarised (> 0.5).
    Values may be in [0, 1] (ComfyUI MASK) or [0, 255].
    """
    batch = _mask_batch(mask)
    if batch.shape[0] == 0:
        raise ValueError("mask batch is empty; give one mask, or one per image")
    if batch.shape[-2:] == (latent_size, latent_size):
        return _check_mask_content((batch > 0.5).float()[:, None])
    scale = 255.0 if batch.max() <= 1.0 else 1.0
    prepared = []
    for item in batch:
        pil = Image.fromarray((item * scale).clamp(0, 255).round().to(torch.uint8).numpy(), mode="L")
        pil = ImageOps.autocontrast(pil, cutoff=0)
        pil = pil.point(lambda v: 255 if v > 127 else 0)
        pil = pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
        prepared.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    stacked = torch.stack(prepared)[:, None]  # [B, 1, 112, 112]
    small = F.interpolate(stacked, size=(latent_size, latent_size), mode="bilinear", align_corners=False)
    return _check_mask_content((small > 0).float())


def _check_mask_content(masks: torch.Tensor) -> torch.Tensor:
    """An LV mask marks the cavity: one that is empty or covers the whole image guides nothing (the
    reference's threshold makes a flat mask all 0 or all 1), so it is refused rather than used."""
    per_item = masks.flatten(1).mean(1)
    flat = ((per_item == 0) | (per_item == 1)).nonzero().flatten().tolist()
    if flat:
        raise ValueError(f"mask {flat[0]} is {'empty' if per_item[flat[0]] == 0 else 'full'} after preparation; an LV "
                         "mask is white (or light) inside the cavity on a dark background")
    return masks


def ef_fractions(ef: float | Sequence[float] | torch.Tensor, batch: int) -> torch.Tensor:
    """EF in percent (scalar or per sample) -> float32 [B] fractions, validated."""
    values = torch.as_tensor(ef, dtype=torch.float32).reshape(-1)
    if values.numel() == 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise ValueError(f"got {values.numel()} EF values for a batch of {batch}")
    if not torch.isfinite(values).all() or (values < EF_MIN).any() or (values > EF_MAX).any():
        raise ValueError(f"EF must be a percentage in [{EF_MIN:g}, {EF_MAX:g}], got {values.tolist()}")
    return values / 100.0


@dataclass
class GenerationResult:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    latent_image: torch.Tensor  # [C, h, w]
    latent_video: torch.Tensor  # [C, T, h, w]
    report: GateReport
    seed: int
    tries: int
    ef: float
    view: str
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    guidance: float = 1.0  # the EF guidance the video was sampled with


class EchoFlowPipeline:
    def __init__(
        self,
        vae: AutoencoderKL | None = None,
        scaler: LatentScaler | None = None,
        lifm: torch.nn.Module | None = None,
        lvfm: torch.nn.Module | None = None,
        gates: dict[str, PrivacyGate] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        fps: float = 32.0,
        vae_dtype: torch.dtype | None = None,
        place_models: bool = True,
    ):
        """Any subset of the networks: each stage needs only its own (decode/encode need VAE + scaler).

        place_models=False leaves the modules where they are (ComfyUI's model manager has placed them
        already); `vae_dtype` then says what the VAE runs in.
        """
        self.device = torch.device(device)
        self.dtype = dtype
        if vae_dtype is None:
            # diffusers' `force_upcast`: the A-VAE runs in float32 when float16 was asked for (bf16 is safe).
            upcast = vae is not None and vae.config.force_upcast and dtype == torch.float16
            vae_dtype = torch.float32 if upcast else dtype
        self.vae_dtype = vae_dtype
        if place_models:
            vae = vae.to(self.device, self.vae_dtype) if vae is not None else None
            lifm = lifm.to(self.device, dtype) if lifm is not None else None
            lvfm = lvfm.to(self.device, dtype) if lvfm is not None else None
        self.vae = vae.eval() if vae is not None else None
        self.lifm = lifm.eval() if lifm is not None else None
        self.lvfm = lvfm.eval() if lvfm is not None else None
        self.scaler = scaler
        self.gates = dict(gates or {})
        self.fps = fps
        # What produced this pipeline's outputs, for metadata (names relative to the weights root).
        self.provenance: dict[str, str] = {}
        if scaler is not None and vae is not None and scaler.channels != vae.latent_channels:
            raise ValueError(
                f"scaling.pt has {scaler.channels} channels but the VAE has {vae.latent_channels} latent channels"
            )

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_folder(
        cls,
        root: str | Path | None = None,
        vae: str | None = None,
        lifm: str | None = None,
        lvfm: str | None = None,
        views: Sequence[str] = VIEWS,
        tau: float | None = None,
        similarity: str = "pearson",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        load_generators: bool = True,
        allow_looser_tau: bool = False,
    ) -> EchoFlowPipeline:
        """Load everything from a weights root in the released layout (default: the bundled demo weights).

        `tau` None: each view's calibrated tau (`gates.json`, else 0.9997); a looser one than calibrated is
        refused unless `allow_looser_tau` (see `privacy.decide_tau`). The gates are checked before the
        generators load, so a bad gate setting fails in a second, not after the big models."""
        root = Path(root) if root else default_weights_root()
        if not root.is_dir():
            raise FileNotFoundError(f"weights folder {root} does not exist")
        gates = {}
        for view in views:
            view = VIEWS[view_index(view)]
            gates[view] = load_gate(gate_spec(root, view), tau, allow_looser_tau=allow_looser_tau,
                                    similarity=similarity, device=device)
        folders = {"vae": resolve_model(root, "vae", vae)}
        if load_generators:
            folders.update(lifm=resolve_model(root, "lifm", lifm), lvfm=resolve_model(root, "lvfm", lvfm))
        vae_model = load_model(folders["vae"], device, torch.float32)
        scaler = LatentScaler.load(root / "assets" / "scaling.pt")
        lifm_model = lvfm_model = None
        if load_generators:
            lifm_model = load_model(folders["lifm"], device, dtype)
            lvfm_model = load_model(folders["lvfm"], device, dtype)
        pipe = cls(vae_model, scaler, lifm_model, lvfm_model, gates, device, dtype)
        for view, gate in gates.items():  # a gate that cannot judge these latents is refused before any compute
            if gate.latent_shape != pipe.latent_shape:
                raise GateConfigError(
                    f"the {view} privacy gate under {root} judges latents {list(gate.latent_shape)} but these models "
                    f"make {list(pipe.latent_shape)}; the gate (gates.json latent_shape, ReID, banks) and the models "
                    "must come from the same release"
                )
        pipe.provenance = {"weights": weights_source(root),
                           **{kind: f"{kind}/{Path(folder).name}" for kind, folder in folders.items()}}
        return pipe

    # ------------------------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        if self.lifm is not None:
            size = self.lifm.config.sample_size
            return (self.lifm.out_channels, size, size)
        if self.lvfm is not None:
            _, h, w = self.lvfm.config.input_size
            return (self.lvfm.latent_channels, h, w)
        vae = self._require(self.vae, "VAE")
        size = IMAGE_SIZE // vae.downscale_factor
        return (vae.latent_channels, size, size)

    @property
    def default_guidance(self) -> float:
        """The EF guidance used when none is given: the LVFM's recommendation (its `sampling.json`, e.g. the
        bundled demo's value tuned on validation seeds), else 1 (off, as the reference demo)."""
        recommended = getattr(self.lvfm, "recommended_guidance", None)
        return float(recommended) if recommended is not None else 1.0

    def _require(self, model: torch.nn.Module | None, what: str) -> torch.nn.Module:
        if model is None:
            raise RuntimeError(f"this pipeline was built without the {what}; load one first")
        return model

    def _vae_and_scaler(self) -> tuple[AutoencoderKL, LatentScaler]:
        vae = self._require(self.vae, "VAE")
        if self.scaler is None:
            raise RuntimeError("this pipeline has no latent scaling (scaling.pt); load it with the VAE")
        return vae, self.scaler

    # ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_images(
        self,
        view: str | int,
        mask: torch.Tensor | np.ndarray | Image.Image | None = None,
        steps: int = 50,
        solver: str = "euler",
        seed: int = 0,
        batch_size: int = 1,
        callback: StepCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Latent images [B, C, h, w] for one view; sample i uses seed + i, or `seeds[i]` when given (then
        B = len(seeds) and `seed`/`batch_size` are ignored): a batch equals its items run one by one."""
        lifm = self._require(self.lifm, "image flow model (LIFM)")
        seeds = item_seeds(seed, batch_size, seeds)
        batch_size = len(seeds)
        check_steps(steps)
        check_solver(solver)
        c, h, w = self.latent_shape
        labels = torch.full((batch_size,), view_index(view), dtype=torch.long, device=self.device)
        seg = None
        if mask is not None:
            seg = preprocess_mask(mask, h)
            if seg.shape[0] not in (1, batch_size):
                raise ValueError(f"got {seg.shape[0]} masks for a batch of {batch_size}; pass 1 or {batch_size}")
            seg = seg.expand(batch_size, -1, -1, -1).to(self.device, self.dtype)
        noise = seeded_noise((c, h, w), seeds, self.device, torch.float32)

        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return lifm(z, t, labels, seg)

        images = sample_flow(velocity, noise, steps, solver, callback, model_dtype=self.dtype).cpu()
        check_finite_output(images, "image flow model (LIFM)")
        return images

    def check_privacy(self, latents: torch.Tensor, view: str | int) -> GateReport:
        """Fails closed: without a gate for the view this raises instead of passing anything."""
        name = VIEWS[view_index(view)]
        gate = self.gates.get(name)
        if gate is None:
            raise PrivacyGateError(
                f"no privacy gate loaded for view {name}; refusing to judge latents as private. Load the "
                "view's ReID model and anatomy banks."
            )
        return gate.check(latents)

    @torch.inference_mode()
    def animate(
        self,
        latents: torch.Tensor,
        ef: float | Sequence[float] | torch.Tensor,
        steps: int = 50,
        solver: str = "euler",
        guidance: float | None = None,
        seed: int = 0,
        callback: StepCallback | None = None,
        num_frames: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Latent images [B, C, h, w] + EF (percent) -> latent videos [B, C, T, h, w]; video i draws its noise
        with seed + i, or `seeds[i]` when given (one per image).

        Guidance != 1 contrasts the EF-conditioned velocity with the null-EF one: the same conditioning
        image with the EF token replaced by the checkpoint's null caption (`y_embedding`), which is what
        the STDiT saw for the `class_dropout_prob` share of training steps. None: `default_guidance`.
        """
        lvfm = self._require(self.lvfm, "video flow model (LVFM)")
        if guidance is None:
            guidance = self.default_guidance
        if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be a number in [0, {MAX_GUIDANCE:g}] (1 = off), got {guidance!r}")
        check_steps(steps)
        check_solver(solver)
        if latents.ndim != 4 or latents.shape[1] != lvfm.latent_channels:
            raise ValueError(
                f"animate expects latent images [B, {lvfm.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        b, c, h, w = latents.shape
        seeds = item_seeds(seed, max(1, b), seeds)
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for {b} latent images; give one seed per image")
        frames = num_frames or lvfm.num_frames
        cond = latents.to(self.device, self.dtype)
        ef_frac = ef_fractions(ef, b).to(self.device, self.dtype)
        keep = torch.zeros(b, dtype=torch.bool, device=self.device)
        velocity = guided_velocity(
            lvfm,
            {"ef": ef_frac, "cond": cond, "drop_ef": keep},
            {"ef": ef_frac, "cond": cond, "drop_ef": ~keep},
            float(guidance),
        )
        noise = seeded_noise((c, frames, h, w), seeds, self.device, torch.float32)
        videos = sample_flow(velocity, noise, steps, solver, callback, model_dtype=self.dtype).cpu()
        check_finite_output(videos, "video flow model (LVFM)")
        return videos

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, chunk_size: int = 16, callback: StepCallback | None = None
    ) -> torch.Tensor:
        """Scaled latents [B, C, h, w] or [B, C, T, h, w] -> uint8 [B, H, W, 3] or [B, T, H, W, 3],
        decoding at most `chunk_size` frames at a time so memory stays bounded."""
        if latents.ndim == 5:
            b, c, t, h, w = latents.shape
            flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        elif latents.ndim == 4:
            flat = latents
        else:
            raise ValueError(f"decode expects [B, C, h, w] or [B, C, T, h, w] latents, got {tuple(latents.shape)}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        check_finite_output(latents, "latents given to the decoder")
        vae, scaler = self._vae_and_scaler()
        out = []
        chunks = flat.split(chunk_size)
        for i, chunk in enumerate(chunks):
            z = scaler.unscale(chunk.to(self.device, torch.float32)).to(self.vae_dtype)
            out.append(model_range_to_frames(vae.decode(z)).cpu())
            if callback is not None:
                callback(i + 1, len(chunks), chunk)
        pixels = torch.cat(out)
        if latents.ndim == 5:
            pixels = pixels.reshape(b, t, *pixels.shape[1:])
        flat_items = pixels.reshape(pixels.shape[0], -1)
        blank = (flat_items.amax(1) == flat_items.amin(1)).nonzero().flatten().tolist()
        if blank:
            raise GenerationError(
                f"decoded item(s) {blank} are blank (every pixel {int(flat_items[blank[0], 0])}); nothing was "
                "released. The VAE or the latents are broken: check the weights with `echoflow info`"
            )
        return pixels

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor | np.ndarray, chunk_size: int = 32) -> torch.Tensor:
        """uint8 frames [N, H, W] / [N, H, W, 3] -> scaled latents [N, C, h, w] (posterior means)."""
        vae, scaler = self._vae_and_scaler()
        x = frames_to_model_range(torch.as_tensor(frames))
        out = []
        for chunk in x.split(chunk_size):
            mean = vae.encode(chunk.to(self.device, self.vae_dtype)).mean
            out.append(scaler.scale(mean.float()).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------------------------------------
    def generate(
        self,
        view: str = "A4C",
        ef: float = 55.0,
        seed: int = 0,
        image_steps: int = 50,
        video_steps: int = 50,
        solver: str = "euler",
        guidance: float | None = None,
        mask: torch.Tensor | np.ndarray | Image.Image | None = None,
        max_tries: int = 8,
        progress: Callable[[str], StepCallback | None] | None = None,
    ) -> GenerationResult:
        """The whole chain for one video, retrying the latent image with new seeds while the gate rejects.

        `progress(stage)` may return a step callback for each stage ("image", "video", "decode").
        `guidance` None: the LVFM's recommended EF guidance (`default_guidance`).
        """
        if guidance is None:
            guidance = self.default_guidance
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or not 1 <= max_tries <= MAX_TRIES:
            raise ValueError(f"max_tries must be a whole number in [1, {MAX_TRIES}], got {max_tries!r}")
        check_seed(seed, (max_tries - 1) * RETRY_SEED_STRIDE + 1)
        view_index(view)
        ef_fractions(ef, 1)

        def stage(name: str) -> StepCallback | None:
            return progress(name) if progress is not None else None

        timings: dict[str, float] = {}
        reports = []
        for attempt in range(max_tries):
            try_seed = seed + attempt * RETRY_SEED_STRIDE
            start = time.perf_counter()
            image = self.sample_images(view, mask, image_steps, solver, try_seed, 1, stage("image"))
            timings["image_s"] = timings.get("image_s", 0.0) + time.perf_counter() - start
            start = time.perf_counter()
            report = self.check_privacy(image, view)
            timings["gate_s"] = timings.get("gate_s", 0.0) + time.perf_counter() - start
            reports.append(report)
            if report.items[0].passed:
                break
        else:
            sims = ", ".join(f"{r.items[0].max_similarity:.6f}" for r in reports)
            raise PrivacyGateError(
                f"the privacy gate rejected all {max_tries} latent images (max similarities {sims} >= "
                f"tau {reports[-1].tau:g}); nothing was released. Try another seed or a larger --max-tries "
                "(or check that the weights and the gate belong together: `echoflow info`)."
            )
        start = time.perf_counter()
        video = self.animate(image, ef, video_steps, solver, guidance, try_seed, stage("video"))
        timings["video_s"] = time.perf_counter() - start
        start = time.perf_counter()
        frames = self.decode(video, callback=stage("decode"))[0]
        timings["decode_s"] = time.perf_counter() - start
        return GenerationResult(
            frames=frames,
            latent_image=image[0],
            latent_video=video[0],
            report=report,
            seed=try_seed,
            tries=attempt + 1,
            ef=float(ef),
            view=VIEWS[view_index(view)],
            fps=self.fps,
            timings=timings,
            guidance=float(guidance),
        )
