"""`python -m bench`: time every EchoFlow stage at released-like sizes, side by side with the peer code.

    python -m bench --quick --threads 1                        # about 2 minutes on 2 cores
    python -m bench --device cuda --dtype fp32,bf16,fp16 --json bench.json
    python -m bench --stages lifm,vae --no-peer

Stages (the sizes of the release family; weights are random but identical in both paths):

* lifm: DiT-S/2 and DiT-B/2 latent image flow, 50 Euler steps, batch 1 and 16, through
  `EchoFlowPipeline.sample_images`; peer: diffusers `DiTTransformer2DModel` (same state dict, in_channels 5)
  in a per-step Python Euler loop.
* reid: the privacy gate (`PrivacyGate.check`) for 64 latents against a 10,000-row bank; peer: the same
  computation as a user would write it in plain PyTorch (embed the whole batch in one call, the bank
  centred and normalised once, one matrix product).
* lvfm: STDiT-S/2 and STDiT-B/2 with 64 frames (16 in --quick on a CPU), 50 steps, batch 1 and 4,
  guidance off (1) and on, through `EchoFlowPipeline.animate`; peer: the textbook STDiT of
  `bench/reference_stdit.py` (eager attention, two forwards per guided step).
* vae: decoding a 64-frame video with the avae-4f4 and avae-16f8 shapes through `EchoFlowPipeline.decode`;
  peer: diffusers `AutoencoderKL.decode` on all frames at once.

How a case is timed: both paths are warmed up first (untimed steps or calls: first-call allocations,
lazily built caches), then `rounds` rounds each time both paths back to back, ours first in even rounds and
the peer first in odd ones. A round's time for a path is the median of its timed steps (sampling) or calls;
the reported speed-up is the median over rounds of the round's peer / ours ratio, with the min-max of
those ratios, so one disturbed round on a shared machine moves neither. Sampling stops after a few steps
of the 50-step grid and the 50-step cost is extrapolated from the per-step time. Before any time is
reported, the two paths' outputs for the same weights, noise and grid are compared; a stage whose outputs
differ beyond its tolerance reports no time. The machine (CPU model, vendor, physical cores, AVX-512 /
AMX flags, torch build and threads) is printed with the results. The peer code is loaded from the
repository's `bench/` folder (diffusers from the `bench` extra); it is never imported at run time, and
a peer that cannot run is named as skipped.

Longer than 600 lines: one benchmark script, read top to bottom: settings and cases, the timed runners with
their peers, the machine description and the report; each part is small and used only here.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from echoflow_models.conventions import IMAGE_SIZE, PRECISION_NAMES, dtype_of
from echoflow_models.lifm import RELEASE_LAYOUT as LIFM_COMMON
from echoflow_models.lifm import SIZE_PRESETS as LIFM_MODELS
from echoflow_models.lvfm import RELEASE_LAYOUT as LVFM_COMMON
from echoflow_models.lvfm import SIZE_PRESETS as LVFM_MODELS
from echoflow_models.sampling import sample_flow_cuda_graph, seeded_noise
from echoflow_models.vae import SIZE_PRESETS as VAE_MODELS

DTYPES = {name: dtype_of(name) for name in PRECISION_NAMES}
STAGES = ("lifm", "reid", "lvfm", "vae")
BENCH_DIR = Path(__file__).resolve().parent  # bench/: the peers live beside this file
SCHEMA = 1

# Release-family sizes (LIFM_MODELS, LVFM_MODELS, VAE_MODELS) and the release's latent layouts
# (LIFM_COMMON, LVFM_COMMON) are imported above from beside the networks, IMAGE_SIZE from the conventions.

# Output agreement required before a time is reported: max |ours - peer| / max |peer|.
TOLERANCE = {"fp32": 1e-4, "bf16": 6e-2, "fp16": 2e-2}
# VAE: decoded uint8 pixels may differ by rounding; this many grey levels at most.
PIXEL_TOLERANCE = {"fp32": 1, "bf16": 12, "fp16": 4}
# Similarities of the gate: absolute.
REID_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------------------------------
# Settings and the plan
# ----------------------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    device: str = "cpu"
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    quick: bool = False
    tiny: bool = False  # tiny models (tests)
    peer: bool = True
    models: list[str] | None = None  # e.g. ["DiT-S/2", "avae-4f4"]; None = all of the mode
    batches: list[int] | None = None  # restrict LIFM/LVFM batch sizes
    steps: int = 50  # the sampling grid whose cost is estimated
    measure_steps: int | None = None  # timed steps per sampling run (default: per mode and size)
    warmup_steps: int | None = None
    rounds: int | None = None  # alternating ours/peer rounds per case (default: per mode)
    frames: int | None = None  # frames per LVFM video (default: 64; 16 in --quick on a CPU)
    guidance: float = 2.0  # the scale used for "guidance on"
    vae_chunk: int = 16  # frames per VAE decode call in this project's path
    bank_rows: int = 10_000
    reid_batch: int = 64
    compile: bool = False
    cuda_graphs: bool = False
    threads: int | None = None
    seed: int = 0


@dataclass
class Case:
    stage: str
    model: str
    batch: int
    dtype: str
    guidance: float | None = None
    frames: int | None = None  # LVFM frames / VAE frames in the video
    decode_frames: int | None = None  # VAE frames actually decoded (quick mode decodes fewer)
    warmup: int = 1  # untimed steps (sampling) or calls before the first round, per path
    measure: int = 1  # timed steps (sampling) or calls per path and round
    rounds: int = 5  # rounds; each times both paths, the order alternating (ours first in even rounds)


# Rounds per case: every round times both paths back to back, so each round gives one peer/ours ratio.
QUICK_ROUNDS = 5
CPU_ROUNDS = {"lifm": 5, "reid": 7, "lvfm": 3, "vae": 3}  # the full CPU run: LVFM/VAE rounds take minutes
QUICK_LVFM_FRAMES = 16  # --quick on a CPU: a 64-frame STDiT-S/2 step is ~9 s per path and round
QUICK_VAE_FRAMES = 2  # --quick on a CPU: frames decoded (the 64-frame time is extrapolated per frame)


def plan(settings: BenchSettings) -> list[Case]:
    """The cases of one run, in the order they run. Every case warms both paths up, then times `rounds`
    rounds of `measure` steps (or calls) per path, alternating which path goes first."""
    cuda = settings.device.startswith("cuda")
    tiny, quick = settings.tiny, settings.quick
    cases: list[Case] = []

    def want(model: str) -> bool:
        return settings.models is None or model in settings.models

    def batches(default: list[int]) -> list[int]:
        return [b for b in default if settings.batches is None or b in settings.batches] or (
            settings.batches or default
        )

    def rounds(stage: str) -> int:
        if tiny:
            return 2
        if quick or cuda:
            return QUICK_ROUNDS
        return CPU_ROUNDS[stage]

    for dtype in settings.dtypes:
        if "lifm" in settings.stages:
            models = ["DiT-tiny"] if tiny else ["DiT-S/2"] if quick else ["DiT-S/2", "DiT-B/2"]
            for model in filter(want, models):
                for b in batches([1, 2] if tiny else [1, 16]):
                    if cuda:
                        w, m = 3, 10
                    elif tiny:
                        w, m = 1, 1
                    else:
                        w, m = (2, 3) if b == 1 else (1, 1)
                    cases.append(Case("lifm", model, b, dtype, warmup=w, measure=m, rounds=rounds("lifm")))
        if "reid" in settings.stages:
            cases.append(Case("reid", "ResNet18-4to128", 8 if tiny else settings.reid_batch, dtype,
                              warmup=1, measure=1 if tiny else 3, rounds=rounds("reid")))
        if "lvfm" in settings.stages:
            models = ["STDiT-tiny"] if tiny else ["STDiT-S/2"] if quick else ["STDiT-S/2", "STDiT-B/2"]
            if tiny:
                frames = 8
            elif settings.frames is not None:
                frames = settings.frames
            else:
                frames = QUICK_LVFM_FRAMES if quick and not cuda else 64
            guidances = [1.0] if quick and not tiny else [1.0, settings.guidance]
            for model in filter(want, models):
                for b in batches([1, 2] if tiny else [1] if quick else [1, 4]):
                    for g in guidances:
                        w, m = (2, 5) if cuda else (1, 1)  # one CPU step of a 64-frame video takes seconds
                        cases.append(Case("lvfm", model, b, dtype, guidance=g, frames=frames,
                                          warmup=w, measure=m, rounds=rounds("lvfm")))
        if "vae" in settings.stages:
            models = ["avae-tiny"] if tiny else ["avae-4f4"] if quick else ["avae-4f4", "avae-16f8"]
            frames = 8 if tiny else settings.frames or 64
            decode = frames if (cuda or not quick) else min(frames, QUICK_VAE_FRAMES)
            for model in filter(want, models):
                cases.append(Case("vae", model, 1, dtype, frames=frames, decode_frames=decode,
                                  warmup=1, measure=1, rounds=rounds("vae")))
    for case in cases:
        if settings.measure_steps is not None and case.stage in ("lifm", "lvfm"):
            case.measure = settings.measure_steps
        if settings.warmup_steps is not None and case.stage in ("lifm", "lvfm"):
            case.warmup = settings.warmup_steps
        if settings.rounds is not None:
            case.rounds = settings.rounds
        if case.rounds < 1 or case.measure < 1 or case.warmup < 0:
            raise ValueError(f"{case.stage}: rounds and measured steps must be >= 1 and warm-up >= 0, got "
                             f"rounds={case.rounds}, measure={case.measure}, warmup={case.warmup}")
    return cases


# ----------------------------------------------------------------------------------------------------
# Models with deterministic weights
# ----------------------------------------------------------------------------------------------------


def bench_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Fill every tensor of the state dict from a generator seeded by its key: fan-in scaled matrices,
    norm weights near 1, small biases, BatchNorm variances in [0.5, 1.5). Fixed sin-cos tables are kept.
    Non-trivial (no zero-initialised gates), stable through the depth, identical for both paths."""
    state = {}
    for key, value in model.state_dict().items():
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if not value.is_floating_point() or "pos_embed" in key:
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif value.ndim >= 2 and "scale_shift_table" not in key and "y_embedding" not in key:
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (0.5 / math.sqrt(fan_in))
        elif key.endswith("weight") and value.ndim == 1:
            state[key] = 1.0 + 0.02 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = 0.02 * torch.randn(value.shape, generator=gen) if value.ndim == 1 else (
                torch.randn(value.shape, generator=gen) / math.sqrt(value.shape[-1])
            )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def build_lifm(name: str):
    from echoflow_models.checkpoint import build_model

    return bench_weights(build_model("SegDiTTransformer2DModel", {**LIFM_COMMON, **LIFM_MODELS[name]}))


def build_lvfm(name: str, frames: int):
    from echoflow_models.checkpoint import build_model

    cfg = {**LVFM_COMMON, **LVFM_MODELS[name], "input_size": [frames, 28, 28]}
    return bench_weights(build_model("DiffuserSTDiT", cfg))


def build_vae(name: str):
    from echoflow_models.checkpoint import build_model

    spec = VAE_MODELS[name]
    levels = len(spec["block_out_channels"])
    cfg = {**spec, "down_block_types": ["DownEncoderBlock2D"] * levels,
           "up_block_types": ["UpDecoderBlock2D"] * levels, "sample_size": IMAGE_SIZE}
    return bench_weights(build_model("AutoencoderKL", cfg))


def stub_vae(latent_channels: int = 4):
    """A one-level VAE only so that a pipeline can be built for the flow stages (never run)."""
    from echoflow_models.checkpoint import build_model

    return build_model("AutoencoderKL", {"block_out_channels": [32], "latent_channels": latent_channels,
                                         "layers_per_block": 1}).eval()


def make_scaler(channels: int):
    from echoflow_models.scaling import LatentScaler

    gen = torch.Generator().manual_seed(7)
    return LatentScaler(0.1 * torch.randn(channels, generator=gen), 0.5 + torch.rand(channels, generator=gen))


# ----------------------------------------------------------------------------------------------------
# Clocks, memory
# ----------------------------------------------------------------------------------------------------


class Clock:
    """Wall time on the CPU; CUDA events on a GPU (read after one synchronisation, none inside loops)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def intervals(self, marks: list) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:], strict=False)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class PeakMemory:
    """Peak memory of one timed run: CUDA allocator peak, or the process's peak RSS on the CPU (Linux
    `VmHWM`, reset through /proc/self/clear_refs where allowed) with the RSS before the run."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = 0
        self.resettable = False

    @staticmethod
    def _status(field_name: str) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.resettable = True
            except OSError:
                self.resettable = False
            self.before = self._status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        return None

    def result(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"kind": "cuda_max_allocated", "peak_bytes": peak, "before_bytes": self.before,
                    "delta_bytes": peak - self.before}
        peak = self._status("VmHWM")
        kind = "process_peak_rss" if self.resettable else "process_peak_rss_since_start"
        return {"kind": kind, "peak_bytes": peak, "before_bytes": self.before,
                "delta_bytes": max(0, peak - self.before)}


class _Stop(Exception):
    """Raised from a step callback to end a sampling run after the measured steps."""


def timed_sampling(run: Callable[[Callable], object], clock: Clock, stop_after: int) -> tuple[list[float], object]:
    """run(callback) samples on the full grid; the callback marks each step and stops after `stop_after`.
    -> (step intervals [s], the state after the last step)."""
    marks = [clock.mark()]
    state: dict = {}

    def callback(step: int, total: int, z: torch.Tensor) -> None:
        marks.append(clock.mark())
        if step >= stop_after:
            state["z"] = z.detach().clone()
            raise _Stop

    try:
        result = run(callback)
        state.setdefault("z", result)
    except _Stop:
        pass
    return clock.intervals(marks), state["z"]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rel_diff(ours: torch.Tensor, peer: torch.Tensor) -> tuple[float, float]:
    a, b = ours.detach().float().cpu(), peer.detach().float().cpu()
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: ours {tuple(a.shape)} vs peer {tuple(b.shape)}")
    diff = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-12)
    return diff, diff / scale


# ----------------------------------------------------------------------------------------------------
# Stage runners
# ----------------------------------------------------------------------------------------------------


class Context:
    def __init__(self, settings: BenchSettings):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.clock = Clock(self.device)
        self.peer_problem = None if settings.peer else "--no-peer"
        self.peers = None
        if settings.peer:
            self.peers, self.peer_problem = load_peers()

    def diffusers_problem(self) -> str | None:
        if self.peer_problem:
            return self.peer_problem
        return self.peers.diffusers_problem()


def load_peers():
    """The repository's bench/peers.py (a source checkout only) -> (module, None) or (None, reason)."""
    path = BENCH_DIR / "peers.py"
    if not path.is_file():
        return None, (f"the peer code ({path}) is not here: run the bench from a source checkout "
                      "(pip install -e '.[bench]')")
    name = "echoflow_bench_peers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name], None


def _maybe_compile(model: torch.nn.Module, settings: BenchSettings) -> torch.nn.Module:
    if not settings.compile:
        return model
    mode = "max-autotune-no-cudagraphs" if settings.cuda_graphs else None
    if settings.device.startswith("cuda") and not settings.cuda_graphs:
        mode = "reduce-overhead"  # inductor's own CUDA graphs
    return torch.compile(model, mode=mode, dynamic=False)


def _impl_record(rounds: list[float], samples: list[float], case: Case, memory: dict, unit: str,
                 per_item: float, total_steps: int) -> dict:
    """rounds: one value per round (the median of that round's timed steps or calls); samples: every timed
    interval, warm-up excluded. The path's time is the median over rounds."""
    per = _median(rounds)
    record = {
        "measured": len(samples),
        "rounds": len(rounds),
        "rounds_s": [round(x, 6) for x in rounds],
        "samples_s": [round(x, 6) for x in samples],
        "median_s": per,
        "min_s": min(samples) if samples else None,
        "max_s": max(samples) if samples else None,
        "memory": memory,
    }
    if case.stage in ("lifm", "lvfm"):
        record["warmup_steps"] = case.warmup
        record["per_step_s"] = per
        record["estimate_s"] = per * total_steps if per is not None else None
        record["throughput"] = per_item / record["estimate_s"] if per else None
    else:
        record["warmup_calls"] = case.warmup
        record["throughput"] = per_item / per if per else None
    record["throughput_unit"] = unit
    return record


def round_order(impls: list, round_index: int) -> list:
    """Ours first in even rounds, the peer first in odd ones: neither path always runs on a cache or a
    frequency state the other left behind."""
    return list(impls) if round_index % 2 == 0 else list(reversed(impls))


def _run_rounds(ctx: Context, case: Case, impls: list, run_once: Callable) -> tuple[dict, dict, dict, dict]:
    """Warm every path up (untimed, `case.warmup` steps or calls), then `case.rounds` rounds that time each
    path once, alternating the order. run_once(fn, n) -> (n intervals [s], output).
    -> (per-round values, all samples, memory of each path's first run, each path's first timed output)."""
    per_round: dict[str, list[float]] = {name: [] for name, _ in impls}
    samples: dict[str, list[float]] = {name: [] for name, _ in impls}
    memory: dict[str, dict] = {}
    outputs: dict = {}
    with torch.inference_mode():
        if case.warmup:
            for name, fn in impls:
                with PeakMemory(ctx.device) as mem:
                    run_once(fn, case.warmup)
                memory[name] = mem.result()  # the first run: what a user's first call allocates
        for r in range(case.rounds):
            for name, fn in round_order(impls, r):
                with PeakMemory(ctx.device) as mem:
                    intervals, output = run_once(fn, case.measure)
                memory.setdefault(name, mem.result())
                outputs.setdefault(name, output)
                samples[name].extend(intervals)
                per_round[name].append(statistics.median(intervals))
    return per_round, samples, memory, outputs


def run_lifm(ctx: Context, case: Case) -> dict:
    from echoflow_models.pipeline import EchoFlowPipeline

    s, dev, dtype = ctx.settings, ctx.device, DTYPES[case.dtype]
    lifm = build_lifm(case.model)
    pipe = EchoFlowPipeline(stub_vae(), make_scaler(4), lifm=lifm, device=dev, dtype=dtype)
    pipe.lifm = _maybe_compile(pipe.lifm, s)
    seeds = range(s.seed, s.seed + case.batch)
    labels = torch.zeros(case.batch, dtype=torch.long, device=dev)
    out: dict = {"impl": {}, "notes": []}

    def ours(callback):
        if s.cuda_graphs and dev.type == "cuda":
            noise = seeded_noise((4, 28, 28), seeds, dev, dtype)
            model = pipe.lifm
            return sample_flow_cuda_graph(lambda z, t: model(z, t, labels), noise, s.steps, callback)
        return pipe.sample_images("A4C", steps=s.steps, seed=s.seed, batch_size=case.batch, callback=callback)

    peer_fn = None
    problem = ctx.diffusers_problem()
    if problem is None:
        peer_model = ctx.peers.diffusers_dit(lifm, dev, dtype)
        velocity = ctx.peers.dit_velocity(peer_model, labels, None)
        reference_euler = ctx.peers.load_reference_stdit().reference_euler

        def peer_fn(callback):
            noise = seeded_noise((4, 28, 28), seeds, dev, dtype)
            return reference_euler(velocity, noise, s.steps, callback)
    else:
        out["peer_skipped"] = problem

    return _run_sampling_pair(ctx, case, out, ours, peer_fn, unit="images/s")


def run_lvfm(ctx: Context, case: Case) -> dict:
    from echoflow_models.pipeline import EchoFlowPipeline

    s, dev, dtype = ctx.settings, ctx.device, DTYPES[case.dtype]
    lvfm = build_lvfm(case.model, case.frames)
    pipe = EchoFlowPipeline(stub_vae(), make_scaler(4), lvfm=lvfm, device=dev, dtype=dtype)
    pipe.lvfm = _maybe_compile(pipe.lvfm, s)
    gen = torch.Generator().manual_seed(s.seed + 1)
    images = torch.randn(case.batch, 4, 28, 28, generator=gen)
    ef_percent = [35.0 + 10.0 * (i % 4) for i in range(case.batch)]
    out: dict = {"impl": {}, "notes": []}

    def ours(callback):
        if s.cuda_graphs and dev.type == "cuda":
            from echoflow_models.pipeline import ef_fractions
            from echoflow_models.sampling import guided_velocity

            cond = images.to(dev, dtype)
            ef = ef_fractions(ef_percent, case.batch).to(dev, dtype)
            keep = torch.zeros(case.batch, dtype=torch.bool, device=dev)
            velocity = guided_velocity(pipe.lvfm, {"ef": ef, "cond": cond, "drop_ef": keep},
                                       {"ef": ef, "cond": cond, "drop_ef": ~keep}, float(case.guidance))
            noise = seeded_noise((4, case.frames, 28, 28), range(s.seed, s.seed + case.batch), dev, dtype)
            return sample_flow_cuda_graph(velocity, noise, s.steps, callback)
        return pipe.animate(images, ef_percent, steps=s.steps, guidance=case.guidance, seed=s.seed,
                            callback=callback)

    peer_fn = None
    if ctx.peer_problem is None:
        ref = ctx.peers.load_reference_stdit()
        peer_model = ref.ReferenceSTDiT(lvfm.config)
        peer_model.load_state_dict({k: v.float() for k, v in lvfm.state_dict().items()}, strict=True)
        peer_model = peer_model.to(dev, dtype).eval().requires_grad_(False)
        ef = (torch.tensor(ef_percent) / 100.0).to(dev, dtype).reshape(case.batch, 1, 1)
        cond = images.to(dev, dtype)[:, :, None].expand(-1, -1, case.frames, -1, -1)
        velocity = ref.reference_lvfm_velocity(peer_model, ef, cond, float(case.guidance))

        def peer_fn(callback):
            noise = seeded_noise((4, case.frames, 28, 28), range(s.seed, s.seed + case.batch), dev, dtype)
            return ref.reference_euler(velocity, noise, s.steps, callback)
    else:
        out["peer_skipped"] = ctx.peer_problem
    return _run_sampling_pair(ctx, case, out, ours, peer_fn, unit="videos/s")


def _run_sampling_pair(ctx: Context, case: Case, out: dict, ours, peer_fn, unit: str) -> dict:
    impls = [("ours", ours)] + ([("peer", peer_fn)] if peer_fn is not None else [])

    def run_once(fn, steps):
        intervals, z = timed_sampling(fn, ctx.clock, steps)
        return intervals[:steps], z

    per_round, samples, memory, finals = _run_rounds(ctx, case, impls, run_once)
    for name, _ in impls:
        out["impl"][name] = _impl_record(per_round[name], samples[name], case, memory[name], unit, case.batch,
                                         ctx.settings.steps)
        out["impl"][name]["checked_steps"] = case.measure
    if "peer" in finals:
        diff, rel = _rel_diff(finals["ours"], finals["peer"])
        tol = TOLERANCE[case.dtype]
        out["check"] = {"what": f"latents after {case.measure} steps of the {ctx.settings.steps}-step grid",
                        "max_abs_diff": diff, "rel_diff": rel, "tolerance": tol, "passed": rel <= tol}
    return out


def _timed_calls(ctx: Context, scale: float = 1.0) -> Callable:
    """run_once for whole calls: n calls, each timed (x scale), the first call's output kept."""

    def run_once(fn, n):
        times, first = [], None
        for i in range(n):
            t0 = ctx.clock.mark()
            result = fn()  # ends with a device->host copy: a synchronising step
            times.append(ctx.clock.intervals([t0, ctx.clock.mark()])[0] * scale)
            if i == 0:
                first = result
        return times, first

    return run_once


def run_reid(ctx: Context, case: Case) -> dict:
    from echoflow_models.reid import PrivacyGate, ReIDConfig, ReIDResNet18

    s, dev = ctx.settings, ctx.device
    reid = bench_weights(ReIDResNet18(ReIDConfig(in_channels=4, out_channels=128)))
    # The gate runs in float32 whatever the flow models use (as the pipeline loads it).
    reid = reid.to(dev, torch.float32)
    gen = torch.Generator().manual_seed(s.seed + 2)
    rows = 500 if s.tiny else s.bank_rows
    bank = torch.sigmoid(torch.randn(rows, 128, generator=gen))
    latents = torch.randn(case.batch, 4, 28, 28, generator=gen).to(dev)
    gate = PrivacyGate(reid, bank, latent_shape=(4, 28, 28))
    out: dict = {"impl": {}, "notes": [f"bank of {rows} rows; the gate always runs in float32"]}

    def ours():
        report = gate.check(latents)
        return torch.tensor([item.max_similarity for item in report.items]), torch.tensor(
            [item.nearest_index for item in report.items])

    impls = [("ours", ours)]
    if ctx.peer_problem is None:
        peer = ctx.peers.BatchedReID(reid, bank.to(dev))  # the bank prepared once, as the gate does
        impls.append(("peer", lambda: peer(latents)))
    else:
        out["peer_skipped"] = ctx.peer_problem
    per_round, samples, memory, results = _run_rounds(ctx, case, impls, _timed_calls(ctx))
    for name, _ in impls:
        out["impl"][name] = _impl_record(per_round[name], samples[name], case, memory[name], "images/s",
                                         case.batch, 1)
        out["impl"][name]["per_image_s"] = out["impl"][name]["median_s"] / case.batch
    if "peer" in results:
        (sim_o, idx_o), (sim_p, idx_p) = results["ours"], results["peer"]
        diff = (sim_o - sim_p.float()).abs().max().item()
        same_index = bool(torch.equal(idx_o, idx_p.long()))
        out["check"] = {"what": "max similarity and nearest bank row per image", "max_abs_diff": diff,
                        "rel_diff": diff, "tolerance": REID_TOLERANCE, "same_nearest": same_index,
                        "passed": diff <= REID_TOLERANCE and same_index}
    return out


def run_vae(ctx: Context, case: Case) -> dict:
    from echoflow_models.pipeline import EchoFlowPipeline

    s, dev, dtype = ctx.settings, ctx.device, DTYPES[case.dtype]
    vae = build_vae(case.model)
    channels = vae.latent_channels
    factor = vae.downscale_factor
    scaler = make_scaler(channels)
    pipe = EchoFlowPipeline(vae, scaler, device=dev, dtype=dtype)
    if dev.type == "cuda":
        pipe.vae = pipe.vae.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(s.seed + 3)
    n = case.decode_frames
    size = IMAGE_SIZE // factor
    video = torch.randn(1, channels, n, size, size, generator=gen)  # scaled latents of one video
    out: dict = {"impl": {}, "notes": []}
    if n != case.frames:
        out["notes"].append(f"decoded {n} of {case.frames} frames; the {case.frames}-frame time is "
                            f"extrapolated per frame")
    out["notes"].append(f"this project: chunks of {s.vae_chunk} frames; VAE in {pipe.vae_dtype}")

    def ours():
        return pipe.decode(video, chunk_size=s.vae_chunk)[0]

    impls = [("ours", ours)]
    problem = ctx.diffusers_problem()
    if problem is None:
        peer_vae = ctx.peers.diffusers_vae(vae, dev, pipe.vae_dtype)
        flat = video[0].permute(1, 0, 2, 3).to(dev)
        mean, std = scaler.mean.to(dev), scaler.std.to(dev)
        impls.append(("peer", lambda: ctx.peers.vae_decode_frames(peer_vae, flat, mean, std).cpu()))
    else:
        out["peer_skipped"] = problem
    # every time is scaled to the whole video: frames decoded -> case.frames
    per_round, samples, memory, results = _run_rounds(ctx, case, impls, _timed_calls(ctx, case.frames / n))
    for name, _ in impls:
        record = _impl_record(per_round[name], samples[name], case, memory[name], "frames/s", case.frames, 1)
        record["per_frame_s"] = record["median_s"] / case.frames
        out["impl"][name] = record
    if "peer" in results:
        a, b = results["ours"].int(), results["peer"].int()
        diff = (a - b).abs().max().item()
        tol = PIXEL_TOLERANCE[case.dtype]
        out["check"] = {"what": f"decoded uint8 frames ({n})", "max_abs_diff": diff,
                        "rel_diff": diff / 255.0, "tolerance": f"{tol} grey levels",
                        "differing_pixels": float((a != b).float().mean().item()), "passed": diff <= tol}
    return out


RUNNERS = {"lifm": run_lifm, "reid": run_reid, "lvfm": run_lvfm, "vae": run_vae}


# ----------------------------------------------------------------------------------------------------
# The run, the table, the JSON
# ----------------------------------------------------------------------------------------------------


# CPU features that decide which kernels oneDNN / MKL pick for float32, bf16 and int8
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")


def cpuinfo() -> dict:
    """The CPU as /proc/cpuinfo describes it: model, vendor, physical cores and the flags of CPU_FLAGS that
    it has (Linux; elsewhere the model from `platform` and cpu_flags None: unknown)."""
    info = {"cpu": platform.processor() or "unknown", "vendor": None, "physical_cores": None, "cpu_flags": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info  # flags unknown (None), not absent ([])
    cores, flags, model = set(), set(), None
    physical = core = None
    for line in text.splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and model is None:
            model = value
        elif key == "vendor_id":
            info["vendor"] = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key:  # end of one logical CPU's block
            if core is not None:
                cores.add((physical, core))
            physical = core = None
    info["cpu"] = model or info["cpu"]
    info["physical_cores"] = len(cores) or None
    info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
    return info


def torch_build() -> dict:
    """How this torch was built and what it will use on this CPU."""
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "debug": torch.version.debug,
           "cpu_capability": None, "mkl": torch.backends.mkl.is_available(),
           "mkldnn": torch.backends.mkldnn.is_available(), "openmp": torch.backends.openmp.is_available(),
           "onednn": None}
    try:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        pass
    for line in torch.__config__.show().splitlines():
        found = re.search(r"(?:oneDNN|MKL-DNN) v?(\d+(?:\.\d+)+)", line)
        if found:
            out["onednn"] = found.group(1)
            break
    return out


def environment(settings: BenchSettings) -> dict:
    device = torch.device(settings.device)
    info = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        **cpuinfo(),
        "torch_build": torch_build(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def machine_line(env: dict, ver: dict | None = None) -> str:
    """One line naming the machine, for the log and under the table."""
    build = env.get("torch_build", {})
    cores = env.get("physical_cores")
    known = env.get("cpu_flags")
    if known is None:
        flags, amx = "unknown", "AMX unknown"
    else:
        flags = ", ".join(known) or "none of " + ", ".join(CPU_FLAGS)
        amx = "AMX" if any(f.startswith("amx") for f in known) else "no AMX"
    parts = [f"CPU: {env.get('cpu')} ({env.get('vendor') or 'vendor unknown'}), "
             f"{cores if cores else '?'} physical cores / {env.get('cpu_count')} logical, {amx}; flags: {flags}",
             f"torch {build.get('torch', torch.__version__)} ({'CUDA ' + build['cuda'] if build.get('cuda') else 'CPU build'}"
             f", capability {build.get('cpu_capability')}, oneDNN {build.get('onednn') or '?'}, "
             f"MKL {'yes' if build.get('mkl') else 'no'}), {env.get('threads')} intra-op threads"]
    if env.get("gpu"):
        parts.insert(0, f"GPU: {env['gpu']}")
    if ver is not None:
        parts.append(f"diffusers {ver.get('diffusers') or 'absent'}")
    return "; ".join(parts)


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name, dist in (("echoflow", "comfyui-echoflow"), ("diffusers", "diffusers")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def run_bench(settings: BenchSettings, log: Callable[[str], None] = print) -> dict:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for CUDA but torch sees no GPU; use --device cpu")
    bad = [d for d in settings.dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"unknown dtype(s) {bad}; choose from {', '.join(DTYPES)}")
    if settings.cuda_graphs and device.type != "cuda":
        raise ValueError("--cuda-graphs needs --device cuda")
    ctx = Context(settings)
    started = time.perf_counter()
    env = environment(settings)
    log(f"[bench] {machine_line(env, versions())}")
    if ctx.peer_problem:
        log(f"[bench] every peer skipped: {ctx.peer_problem}")
    elif ctx.diffusers_problem():
        log(f"[bench] diffusers peers (LIFM, VAE) skipped: {ctx.diffusers_problem()}")
    results = []
    for case in plan(settings):
        label = describe(case)
        log(f"[bench] {label} ...")
        t0 = time.perf_counter()
        record = {"case": asdict(case), "label": label, **RUNNERS[case.stage](ctx, case)}
        record["wall_s"] = time.perf_counter() - t0
        finish(record, settings)
        log("[bench]   " + summary_line(record))
        results.append(record)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    env["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "schema": SCHEMA,
        "command": " ".join(["echoflow", *sys.argv[1:]]) if sys.argv and "bench" in sys.argv else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "environment": env,
        "versions": versions(),
        "wall_s": time.perf_counter() - started,
        "results": results,
    }


def describe(case: Case) -> str:
    parts = [case.stage, case.model, case.dtype, f"batch {case.batch}"]
    if case.stage == "lvfm":
        parts.append(f"{case.frames} frames")
        parts.append("guidance off" if case.guidance == 1.0 else f"guidance {case.guidance:g}")
    if case.stage == "vae":
        parts[3] = f"{case.frames} frames"
    return ", ".join(parts)


def ratio_spread(ratios: list[float]) -> dict:
    """Per-round peer/ours ratios -> their median, min, max and quartiles (inclusive method)."""
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "q1": q1, "q3": q3,
            "rounds": len(ratios), "ratios": [round(x, 4) for x in ratios]}


def finish(record: dict, settings: BenchSettings) -> None:
    """Speed-up only when the outputs were checked equal; no time at all otherwise. The speed-up is the
    median over rounds of the round's peer time / ours (both timed back to back), with its spread."""
    check = record.get("check")
    impl = record["impl"]
    record["total_steps"] = settings.steps
    if check is not None and not check["passed"]:
        for r in impl.values():
            r["withheld"] = True
        record["speedup"] = None
        record["status"] = "MISMATCH: outputs differ beyond tolerance, times withheld"
        return
    if "peer" in impl and impl["ours"]["rounds_s"] and all(impl["ours"]["rounds_s"]):
        ratios = [p / o for o, p in zip(impl["ours"]["rounds_s"], impl["peer"]["rounds_s"], strict=True)]
        spread = ratio_spread(ratios)
        record["speedup"] = spread["median"]
        record["speedup_spread"] = spread
        record["status"] = "ok"
    else:
        record["speedup"] = None
        record["status"] = "ok (no peer: " + record.get("peer_skipped", "none") + ")"


def _fmt_speedup(record: dict, bold: bool = False) -> str:
    if not record.get("speedup"):
        return "-"
    sp = record["speedup_spread"]
    head = f"x{sp['median']:.2f}"
    return f"{'**' + head + '**' if bold else head} ({sp['min']:.2f}-{sp['max']:.2f}, {sp['rounds']} rounds)"


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.1f} ms"


def _fmt_bytes(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:.0f} MiB"


def summary_line(record: dict) -> str:
    impl, stage = record["impl"], record["case"]["stage"]
    if record.get("status", "").startswith("MISMATCH"):
        c = record["check"]
        return f"MISMATCH (rel diff {c['rel_diff']:.2e} > {c['tolerance']}): no time reported"
    parts = []
    for name in ("ours", "peer"):
        if name not in impl:
            continue
        r = impl[name]
        if stage in ("lifm", "lvfm"):
            parts.append(f"{name}: measured {r['measured']} steps, per-step {_fmt_s(r['per_step_s'])}, "
                         f"{record_steps(record)}-step estimate {_fmt_s(r['estimate_s'])}")
        elif stage == "vae":
            parts.append(f"{name}: {_fmt_s(r['median_s'])} per video ({_fmt_s(r['per_frame_s'])}/frame)")
        else:
            parts.append(f"{name}: {_fmt_s(r['median_s'])} per batch ({_fmt_s(r['per_image_s'])}/image)")
    if record.get("speedup"):
        parts.append(f"speed-up {_fmt_speedup(record)}")
    if "check" in record:
        parts.append(f"check rel diff {record['check']['rel_diff']:.1e}")
    elif "peer_skipped" in record:
        parts.append(f"peer skipped: {record['peer_skipped']}")
    return "; ".join(parts)


def record_steps(record: dict) -> int:
    return record.get("total_steps") or 50


def _cell(impl: dict, stage: str, name: str) -> str:
    if name not in impl:
        return "-"
    x = impl[name]
    if x.get("withheld"):
        return "withheld"
    if stage in ("lifm", "lvfm"):
        return f"{_fmt_s(x['per_step_s'])}/step -> {_fmt_s(x['estimate_s'])}"
    if stage == "reid":
        return f"{_fmt_s(x['per_image_s'])}/image"
    return f"{_fmt_s(x['median_s'])}"


def table(report: dict) -> str:
    steps = report["settings"]["steps"]
    head = ["stage", "model", "dtype", "case", "ours", "peer", "speed-up", "ours peak mem", "check"]
    rows = []
    for r in report["results"]:
        case, impl = r["case"], r["impl"]
        stage = case["stage"]
        if stage == "lvfm":
            guidance = "g off" if case["guidance"] == 1.0 else f"g {case['guidance']:g}"
            extra = f"b{case['batch']} {case['frames']}f {guidance}"
        elif stage == "vae":
            extra = f"{case['frames']} frames"
        else:
            extra = f"b{case['batch']}" + (" vs bank" if stage == "reid" else "")

        check = r.get("check")
        check_cell = "-" if check is None else ("ok" if check["passed"] else "MISMATCH")
        if check is not None:
            check_cell += f" ({check['rel_diff']:.0e})"
        speed = _fmt_speedup(r)
        mem = impl["ours"]["memory"]
        mem_cell = _fmt_bytes(mem["peak_bytes"]) if mem["kind"].startswith("cuda") else (
            f"+{_fmt_bytes(mem['delta_bytes'])}" if mem["delta_bytes"] else "-")
        rows.append([stage, case["model"], case["dtype"], extra, _cell(impl, stage, "ours"),
                     _cell(impl, stage, "peer"), speed, mem_cell,
                     check_cell])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)) for row in rows]
    env, ver = report["environment"], report["versions"]
    lines.append("")
    lines.append(machine_line(env, ver))
    lines.append(f"load average {', '.join(f'{x:.2f}' for x in env.get('load_average', []))} "
                 f"(before) / {', '.join(f'{x:.2f}' for x in env.get('load_average_after') or [])} (after)")
    skipped: dict[str, list[str]] = {}
    for r in report["results"]:
        if r.get("peer_skipped"):
            skipped.setdefault(r["peer_skipped"], []).append(f"{r['case']['stage']} {r['case']['model']}")
    for reason, which in skipped.items():
        lines.append(f"PEER SKIPPED for {', '.join(dict.fromkeys(which))}: {reason}")
    lines.append(f"Sampling rows: the median over rounds of each round's median step; '->' is the {steps}-step "
                 "estimate (per-step x steps). speed-up = the median over rounds of peer / ours, both timed in "
                 "the same round (order alternating), with the min-max of the rounds' ratios.")
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    """The results as a Markdown table (docs/benchmarks.md, README)."""
    steps = report["settings"]["steps"]
    lines = ["| stage | model | dtype | case | ours | peer | speed-up (peer/ours) | ours peak memory | outputs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        case, impl = r["case"], r["impl"]
        stage = case["stage"]
        if stage == "lvfm":
            what = f"batch {case['batch']}, {case['frames']} frames, " + (
                "guidance off" if case["guidance"] == 1.0 else f"guidance {case['guidance']:g}")
        elif stage == "vae":
            what = f"{case['frames']} frames" + (
                f" ({case['decode_frames']} decoded)" if case["decode_frames"] != case["frames"] else "")
        elif stage == "reid":
            what = f"batch {case['batch']} vs {report['settings']['bank_rows']:,} rows"
        else:
            what = f"batch {case['batch']}"

        def cell(name: str, impl=impl, stage=stage) -> str:
            if name not in impl:
                return "-"
            x = impl[name]
            if x.get("withheld"):
                return "withheld (mismatch)"
            if stage in ("lifm", "lvfm"):
                return (f"{_fmt_s(x['per_step_s'])}/step x {steps} = {_fmt_s(x['estimate_s'])} "
                        f"({x['measured']} steps in {x['rounds']} rounds)")
            if stage == "reid":
                return f"{_fmt_s(x['per_image_s'])}/image"
            return f"{_fmt_s(x['median_s'])} ({_fmt_s(x['per_frame_s'])}/frame)"

        mem = impl["ours"]["memory"]
        mem_cell = _fmt_bytes(mem["peak_bytes"]) if mem["kind"].startswith("cuda") else (
            f"+{_fmt_bytes(mem['delta_bytes'])} RSS" if mem["delta_bytes"] else "-")
        check = r.get("check")
        check_cell = "-" if check is None else (
            f"equal (rel. diff {check['rel_diff']:.0e})" if check["passed"] else "MISMATCH")
        if stage == "vae" and check is not None and check["passed"]:
            check_cell = f"equal (max {check['max_abs_diff']} grey levels)"
        speed = _fmt_speedup(r, bold=True)
        lines.append(f"| {stage} | {case['model']} | {case['dtype']} | {what} | {cell('ours')} | {cell('peer')} "
                     f"| {speed} | {mem_cell} | {check_cell} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = _csv(args.dtype) if args.dtype else (["fp32", "bf16", "fp16"] if device.startswith("cuda")
                                                  else ["fp32"])
    if dtypes == ["all"]:
        dtypes = list(DTYPES)
    stages = _csv(args.stages) if args.stages else list(STAGES)
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    return BenchSettings(
        device=device, dtypes=dtypes, stages=stages, quick=args.quick, tiny=args.tiny, peer=args.peer,
        models=_csv(args.models) if args.models else None,
        batches=[int(b) for b in _csv(args.batches)] if args.batches else None,
        steps=args.steps, measure_steps=args.measure_steps, warmup_steps=args.warmup_steps,
        rounds=args.rounds, frames=args.frames, guidance=args.guidance, vae_chunk=args.vae_chunk,
        compile=args.compile, cuda_graphs=args.cuda_graphs, threads=args.threads, seed=args.seed,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = run_bench(settings, log=(lambda msg: None) if args.quiet else print)
    print()
    print(table(report))
    print(f"\nwall time {report['wall_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown_table(report) + "\n")
        print(f"wrote {args.markdown}")
    mismatches = [r["label"] for r in report["results"] if r.get("status", "").startswith("MISMATCH")]
    if mismatches:
        print("outputs differ from the peer for: " + "; ".join(mismatches), file=sys.stderr)
        return 4
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time each stage at released-like sizes, side by side with the peer code",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None,
                   help="comma list of fp32,bf16,fp16 or 'all' (default: fp32 on CPU, all three on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help=f"the small set: DiT-S/2, STDiT-S/2 batch 1 ({QUICK_LVFM_FRAMES} frames on a CPU), avae-4f4 "
                        f"decoding {QUICK_VAE_FRAMES} frames, {QUICK_ROUNDS} rounds each (about 2 min on 2 cores)")
    p.add_argument("--json", default=None, help="write the full report (per-stage seconds, memory, versions) here")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    p.add_argument("--stages", default=None, help=f"comma list of {','.join(STAGES)} (default: all)")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                   help="run the peer code side by side (default) or only this project's path")
    p.add_argument("--models", default=None,
                   help="only these sizes, e.g. DiT-S/2,STDiT-S/2,avae-4f4 (default: all of the mode)")
    p.add_argument("--batches", default=None, help="only these LIFM/LVFM batch sizes, e.g. 1")
    p.add_argument("--steps", type=int, default=50, help="sampling steps whose cost is estimated (default 50)")
    p.add_argument("--measure-steps", type=int, default=None, help="timed steps per sampling run")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps per sampling run")
    p.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=None,
                   help="rounds per case; each times both paths, the order alternating (default: 5 in --quick "
                        "and on CUDA; on a CPU 5 for LIFM, 7 for ReID, 3 for LVFM and VAE)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames per video (default 64; the LVFM {QUICK_LVFM_FRAMES} in --quick on a CPU)")
    p.add_argument("--guidance", type=float, default=2.0, help="the 'guidance on' scale (default 2)")
    p.add_argument("--vae-chunk", type=int, default=16, help="frames per VAE decode call, ours (default 16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the flow models (ours)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each sampling step as a CUDA graph (ours)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); on a shared machine use 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny models, for the tests
    p.add_argument("--quiet", action="store_true", help="only the final table")
    p.set_defaults(func=cmd_bench)
