"""`echoflow train all`: every network in order, then a weights root in the released layout.

    VAE -> latent cache + scaling.pt -> LIFM -> ReID + anatomy bank + tau -> LVFM -> EF regressor -> export

For a phantom dataset made by `echoflow train dataset` (its `dataset.json` recipe beside the FileList), the
preset can give the LVFM its own training set: the same patients, views and splits, each rendered at
`lvfm_data.extra_videos` more EFs at full length (stage `lvfm_data`), encoded with the trained A-VAE
(stage `lvfm_latents`, normalised with the main cache's scaling.pt, with LV masks). With `lifm.frames`
"first" the LIFM learns those clips' first frames too, so it generates the phase the LVFM animates.

Each stage trains into `WORK/<stage>/` and is skipped when it already finished (its
`training/summary.json` exists), so re-running the same command after an interruption continues where it
stopped (a half-finished stage restarts from its last checkpoint with --resume). The export writes

    OUT/vae/<name>-4f4/  OUT/lifm/<name>-dit/  OUT/lvfm/<name>-stdit/  OUT/reid/<name>-4f4/  OUT/ef/<name>-r3d/
    OUT/assets/scaling.pt  OUT/assets/anatomies_<name>.pt  OUT/gates.json  OUT/training.json

with the weights in float16 when `--fp16` (load_model casts to the requested dtype).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import REID_WEIGHTS_NAME, WEIGHTS_NAME
from ..conventions import VIEWS
from ..progress import format_seconds
from ..reid import DEFAULT_TAU
from .common import namespace_for
from .dataset import RECIPE_NAME, read_recipe
from .distributed import launched_world
from .latent_cache import is_finished_cache

# Per-stage settings. "phantom" is what the bundled demo weights are trained with: fixed step counts (so
# the result does not depend on how busy the machine is), with --max-minutes only as a safety cap.
# "tiny" is a smoke test (seconds).
PRESETS: dict[str, dict[str, dict]] = {
    "phantom": {
        "vae": {"channels": "16,32,64", "norm_groups": 16, "mid_attention": False, "batch_size": 8,
                "steps": 1500, "max_minutes": 30.0, "lr": 5e-4, "frames_per_video": 32, "disc_start": 0.6,
                "disc_weight": 0.1, "amp": "bf16"},
        "latents": {"amp": "bf16"},
        # frames "first": the LIFM learns the LVFM clips' first frames (end-diastole), the frames the LVFM
        # learned to animate; with any frame of --data it samples every phase and an ES-like image is
        # animated as if it were end-diastolic (measured about 7 EF points lower)
        "lifm": {"hidden": 128, "heads": 4, "layers": 4, "patch": 2, "batch_size": 16, "steps": 5000,
                 "max_minutes": 60.0, "lr": 1e-3, "t_sampling": "logit-normal", "label_init_std": 0.3,
                 "amp": "bf16", "save_every": 250, "frames": "first"},
        "reid": {"width": 16, "batch_size": 64, "steps": 1500, "max_minutes": 10.0, "lr": 1e-3},
        # uniform t: the motion (phase, amplitude) is decided at high t, which logit-normal rarely samples
        # cond_frame "first": the clip starts from its conditioning image (see lvfm_data); ef_pairs: each
        # batch is one heart at two EFs with one flow time and noise, so the EF's gradient is not buried
        # under the differences between hearts; caption_adaln: the EF also drives the AdaLN modulation
        # (an extension of the released STDiT, see lvfm.py), which a small model learns far faster
        "lvfm": {"hidden": 128, "heads": 4, "depth": 4, "patch": "2,4,4", "batch_size": 2, "steps": 18000,
                 "max_minutes": 240.0, "lr": 1e-3, "temporal_weight": 4.0, "amp": "bf16", "save_every": 250,
                 "cond_frame": "first", "ef_pairs": True, "caption_adaln": True},
        # The LVFM's own clips. With one EF per patient the LVFM can read a clip's motion off its anatomy and
        # ignore the EF token; the same hearts at 5 EFs each leave the EF token as the only cue to how hard
        # the heart beats. With a random starting phase and the patient's heart rate (55-95 bpm), an image
        # and an EF still allow any phase and tempo, whose average is a heart that hardly moves, which is
        # what a small model learns first; every clip starting at end-diastole at 75 bpm makes the motion a
        # function of the image and the EF.
        "lvfm_data": {"extra_videos": 4, "phase": 0.0, "heart_rate": 75.0},
        # fp32: the regressor reads EF off the temporal spread of its features, which bf16 rounds away
        "ef": {"batch_size": 8, "steps": 1200, "max_minutes": 15.0, "lr": 1e-3},
        # the LV segmentation instrument (EF by segmentation), on the traced frames and their A-VAE
        # reconstructions (generated videos are decoded by the same A-VAE)
        "seg": {"batch_size": 12, "steps": 1500, "max_minutes": 30.0, "lr": 2e-3, "channels": "16,32,48,64",
                "amp": "bf16", "save_every": 250, "eval_videos": 24},
    },
    "tiny": {
        "vae": {"channels": "8,8,8", "norm_groups": 4, "batch_size": 2, "steps": 3, "frames_per_video": 2,
                "disc_start": 1, "max_videos": 4, "eval_split": "", "log_every": 1},
        "lifm": {"hidden": 16, "heads": 2, "layers": 1, "batch_size": 2, "steps": 2, "frames": "first"},
        "reid": {"width": 2, "embed_dim": 8, "batch_size": 4, "steps": 2, "bank_frames": 2, "calib_frames": 2},
        "lvfm": {"hidden": 16, "heads": 2, "depth": 1, "patch": "2,4,4", "batch_size": 2, "steps": 2,
                 "frames": 8, "cond_frame": "first", "ef_pairs": True, "caption_adaln": True},
        "lvfm_data": {"extra_videos": 1, "phase": 0.0, "heart_rate": 75.0},
        "ef": {"batch_size": 2, "steps": 2, "channels": "8,8,8,8", "frames": 8, "size": 32, "clip_frames": 8,
               "eval_split": ""},
        "seg": {"batch_size": 2, "steps": 2, "channels": "8,8", "frames_per_video": 2, "eval_videos": 0},
    },
}
STAGES = ("vae", "latents", "lifm", "reid", "lvfm", "ef", "seg")  # (+ "masks", "lvfm_data", "lvfm_latents")
EXTRA_STAGES = ("masks", "lvfm_data", "lvfm_latents")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="EchoNet-Dynamic layout folder (e.g. a phantom dataset)")
    parser.add_argument("--work", required=True, help="folder for the training runs and the latent cache")
    parser.add_argument("--out", required=True, help="weights root to export to (released layout)")
    parser.add_argument("--name", default="phantom", help="model/bank name stem (default: phantom)")
    parser.add_argument("--preset", default="phantom", choices=sorted(PRESETS))
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every stage's --max-minutes")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every stage's --steps (e.g. 10 on a GPU; use with --time-scale)")
    parser.add_argument("--fp16", action="store_true", help="export the weights in float16 (half the size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads per stage (default: the physical cores divided by --jobs)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run up to this many independent stages at once (each with --threads threads): "
                             "the EF regressor beside the VAE, the LIFM beside the LVFM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantom-masks", action=argparse.BooleanOptionalAction, default=None,
                        help="write LV masks for a phantom dataset before encoding (default: when the "
                             "FileList has a PatientSeed column)")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                        help="override a stage option, e.g. --set lvfm.depth=3 (repeatable)")
    parser.add_argument("--only", default=None, help="comma-separated stages to run (default: all)")
    parser.add_argument("--quiet", action="store_true")


def _parse_sets(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        stage, _, option = key.partition(".")
        if not value or stage not in (*STAGES, *EXTRA_STAGES) or not option:
            raise SystemExit(f"error: --set {item!r}: expected STAGE.OPTION=VALUE with STAGE in "
                             f"{STAGES + EXTRA_STAGES}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(stage, {})[option.replace("-", "_")] = parsed
    return out


def _is_phantom(data: Path) -> bool:
    head = (data / "FileList.csv").read_text().splitlines()[:1]
    return bool(head) and "PatientSeed" in head[0].split(",")


def _stage_done(folder: Path) -> dict | None:
    summary = folder / "training" / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def _export_folder(src: Path, dst: Path, fp16: bool, weights_name: str, config_name: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / config_name, dst / config_name)
    state = load_file(str(src / weights_name))
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / weights_name), metadata={"format": "pt"})


# What each stage needs first; with --jobs 2 independent stages run side by side, one thread each.
DEPENDS = {"vae": (), "masks": (), "ef": (), "lvfm_data": (), "latents": ("vae", "masks"),
           "lvfm_latents": ("vae", "lvfm_data"), "lvfm": ("latents", "lvfm_latents"), "lifm": ("latents", "lvfm_latents"),
           "reid": ("latents",), "seg": ("vae", "masks")}
# start order when several are ready
ORDER = ("vae", "ef", "masks", "lvfm_data", "latents", "lvfm_latents", "lvfm", "lifm", "reid", "seg")
MODULES = {"vae": "vae", "ef": "ef", "lifm": "lifm", "lvfm": "lvfm", "reid": "reid", "latents": "latents",
           "lvfm_data": "dataset", "lvfm_latents": "latents", "seg": "seg"}


def lvfm_data_options(data: Path, out: Path, extra_videos: int, quiet: bool, phase: float | None = None,
                      heart_rate: float | None = None) -> dict | None:
    """`train dataset` options re-rendering --data's phantom patients at more EFs (starting at `phase`, at
    `heart_rate` bpm when given), or None when --data has no `dataset.json` recipe (real data, or a
    phantom written some other way)."""
    recipe = read_recipe(data)
    if extra_videos <= 0 or not recipe:
        return None
    frames = int(recipe["num_frames"])
    return {"out": str(out), "patients": int(recipe["num_patients"]), "seed": int(recipe["seed"]),
            "views": ",".join(recipe["views"]), "frames": frames, "extra_videos": int(extra_videos),
            "extra_frames": frames, "split": ",".join(str(f) for f in recipe["split_fractions"]),
            "codec": recipe.get("codec", "mjpeg"), "phase": phase, "heart_rate": heart_rate, "quiet": quiet}


def has_tracings(data: Path) -> bool:
    """Whether a dataset folder carries LV tracings `train seg` can learn from."""
    return (data / "VolumeTracings.csv").is_file() or (data / "Masks").is_dir()


def _run_stage(stage: str, opts: dict, threads: int | None) -> dict:
    """One stage, in this process or a spawned worker."""
    import importlib

    if threads:
        torch.set_num_threads(int(threads))
    if stage == "masks":
        from .data import write_phantom_masks

        written = write_phantom_masks(opts["data"], "TRAIN")
        Path(opts["done"]).write_text(json.dumps({"written": written}) + "\n")
        return {"written": written}
    module = importlib.import_module(f"{__package__}.{MODULES[stage]}")
    return module.run(namespace_for(module.add_args, **opts))


def _last_log(folder: Path) -> str:
    log = folder / "training" / "log.jsonl"
    if not log.is_file():
        return "starting"
    lines = log.read_text().strip().splitlines()
    if not lines:
        return "starting"
    row = json.loads(lines[-1])
    parts = [f"step {row.pop('step')}", f"{row.pop('minutes'):.1f} min"]
    parts += [f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k in ("loss", "rec", "bce", "mae")]
    return ", ".join(parts)


def run(args: argparse.Namespace) -> dict:
    if launched_world().distributed:
        raise SystemExit("error: train all runs in one process; under torchrun run the stages one at a time "
                         "(`torchrun ... -m echoflow_models train vae|latents|lifm|reid|lvfm|ef`, see the README's "
                         "\"Training on EchoNet-Dynamic\")")
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    preset = {k: dict(v) for k, v in PRESETS[args.preset].items()}
    for stage, opts in _parse_sets(args.set).items():
        preset.setdefault(stage, {}).update(opts)
    only = set(args.only.split(",")) if args.only else set(STAGES) | {"masks"}
    scaling, cache = work / "scaling.pt", work / "latents"
    lvfm_data, lvfm_cache = work / "lvfm_data", work / "latents_lvfm"
    want_masks = args.phantom_masks if args.phantom_masks is not None else _is_phantom(data)
    parallel = args.jobs > 1
    quiet_stage = args.quiet or parallel  # parallel stages would interleave their progress bars
    common = {"device": args.device, "threads": args.threads, "seed": args.seed, "quiet": quiet_stage}
    render = preset.get("lvfm_data", {})
    lvfm_render = lvfm_data_options(data, lvfm_data, int(render.get("extra_videos", 0)), quiet_stage,
                                    render.get("phase"), render.get("heart_rate"))
    if lvfm_render is None and render.get("extra_videos", 0) and not args.quiet:
        print(f"== lvfm_data: skipped ({data} has no dataset.json recipe); the LVFM trains on --data")
    # Stages that train on the LVFM clips: the LVFM, and the LIFM when it learns their first frames (all at
    # one phase) instead of any frame of --data
    clip_users = {"lvfm", "lifm"} if preset.get("lifm", {}).get("frames") == "first" else {"lvfm"}
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def encode_options(source: Path, out: Path, **more) -> dict:
        """`train latents` options encoding `source` with this run's A-VAE into `out`."""
        return {"data": str(source), "vae": str(work / "vae"), "out": str(out), **more, "device": args.device,
                "threads": args.threads, "quiet": quiet_stage, **preset.get("latents", {})}

    def options(stage: str) -> dict | None:
        """Arguments of a stage that still has to run, or None when it is finished (or not wanted)."""
        folder = work / stage
        if stage == "masks":
            done = work / "masks.done"
            if not want_masks or done.is_file() or "masks" not in only:
                return None
            return {"data": str(data), "done": str(done)}
        if stage == "lvfm_data":
            if lvfm_render is None or (lvfm_data / RECIPE_NAME).is_file() or not only & (clip_users | {stage}):
                return None
            return lvfm_render
        if stage == "lvfm_latents":
            if lvfm_render is None or is_finished_cache(lvfm_cache) or not only & (clip_users | {stage}):
                return None
            # masks too: a LIFM learning the clips' first frames (`lifm.frames` "first") keeps its mask channel
            return encode_options(lvfm_data, lvfm_cache, splits=preset.get("lvfm", {}).get("splits", "TRAIN"),
                                  phantom_masks=want_masks)
        if stage == "latents":
            if is_finished_cache(cache) and scaling.is_file():
                return None
            return encode_options(data, cache, scaling_out=str(scaling))
        finished = _stage_done(folder)
        if finished is not None:
            results[stage] = finished
            return None
        if stage not in only:
            return None
        if stage == "seg" and not (want_masks or has_tracings(data)):
            if not args.quiet:
                print(f"== seg: skipped ({data} has no LV tracings: Masks/ or VolumeTracings.csv)")
            return None
        if stage in ("vae", "ef"):
            extra = {"data": str(data)}
        elif stage == "seg":
            extra = {"data": str(data), "vae": str(work / "vae")}
        else:
            extra = {"latents": str(cache), "scaling": str(scaling)}
        if lvfm_render is not None and stage in clip_users:
            extra["latents"] = str(lvfm_cache)
        if stage == "reid":
            extra["bank_name"] = args.name
        opts = {**common, **preset.get(stage, {}), **extra, "out": str(folder)}
        if opts.get("max_minutes"):
            opts["max_minutes"] = float(opts["max_minutes"]) * args.time_scale
        if opts.get("steps") and args.steps_scale != 1.0:
            opts["steps"] = max(1, int(round(int(opts["steps"]) * args.steps_scale)))
        if (folder / "training" / "state.pt").is_file():
            opts["resume"] = True
        return opts

    pending = {s: options(s) for s in ORDER}
    pending = {s: o for s, o in pending.items() if o is not None}
    for s in ORDER:
        if s not in pending and not args.quiet:
            print(f"== {s}: nothing to do (finished, or not selected)")
    done_stages = {s for s in ORDER if s not in pending}
    started: dict[str, float] = {}

    def ready() -> list[str]:
        return [s for s in ORDER if s in pending and s not in started and all(d in done_stages for d in DEPENDS[s])]

    def finish(stage: str, result: dict) -> None:
        results[stage] = result
        timings[stage] = time.perf_counter() - started[stage]
        done_stages.add(stage)
        if not args.quiet:
            brief = {k: round(v, 4) for k, v in (result or {}).items() if isinstance(v, float)}
            print(f"== {stage}: done in {format_seconds(timings[stage])} {brief}", flush=True)

    if not parallel:
        while True:
            todo = ready()
            if not todo:
                break
            stage = todo[0]
            if not args.quiet:
                target = work if stage in ("latents", "masks", "lvfm_latents") else work / stage
                print(f"== {stage}: running -> {target}", flush=True)
            started[stage] = time.perf_counter()
            finish(stage, _run_stage(stage, pending[stage], args.threads))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            running = {}
            while True:
                for stage in ready():
                    if len(running) >= args.jobs:
                        break
                    started[stage] = time.perf_counter()
                    running[pool.submit(_run_stage, stage, pending[stage], args.threads)] = stage
                    if not args.quiet:
                        print(f"== {stage}: started", flush=True)
                if not running:
                    break
                finished, _ = wait(list(running), timeout=60, return_when=FIRST_COMPLETED)
                for fut in finished:
                    finish(running.pop(fut), fut.result())
                if not finished and not args.quiet:
                    status = "; ".join(f"{s}: {_last_log(work / s)}" for s in running.values())
                    print(f"   ... {status}", flush=True)
        missing = [s for s in pending if s not in done_stages]
        if missing:
            raise SystemExit(f"error: stages {missing} could not run (a stage they depend on did not finish)")
    manifest = export(args, work, out, results, timings)
    if not args.quiet:
        print(f"exported to {out} ({manifest['size_mb']:.1f} MB)")
    return manifest


def export(args: argparse.Namespace, work: Path, out: Path, results: dict, timings: dict) -> dict:
    name = args.name
    names = {"vae": f"{name}-4f4", "lifm": f"{name}-dit", "lvfm": f"{name}-stdit", "reid": f"{name}-4f4",
             "ef": f"{name}-r3d", "seg": f"{name}-unet"}
    exported = []
    for kind, folder_name in names.items():
        src = work / kind
        if kind == "reid":
            if not (src / REID_WEIGHTS_NAME).is_file():
                continue
            _export_folder(src, out / "reid" / folder_name, args.fp16, REID_WEIGHTS_NAME, "config.yaml")
        else:
            if not (src / WEIGHTS_NAME).is_file():
                continue
            _export_folder(src, out / kind / folder_name, args.fp16, WEIGHTS_NAME, "config.json")
        exported.append(kind)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    if (work / "scaling.pt").is_file():
        shutil.copy2(work / "scaling.pt", assets / "scaling.pt")
    bank = work / "reid" / f"anatomies_{name}.pt"
    tau = DEFAULT_TAU
    calibration = {}
    if bank.is_file():
        shutil.copy2(bank, assets / bank.name)
        calib_path = work / "reid" / "training" / "calibration.json"
        if calib_path.is_file():
            calibration = json.loads(calib_path.read_text())
            tau = float(calibration.get("chosen", {}).get("tau", DEFAULT_TAU))
        gates = {v: {"reid": names["reid"], "banks": [bank.name], "tau": tau} for v in VIEWS}
        (out / "gates.json").write_text(json.dumps(gates, indent=2) + "\n")
    recipe = Path(args.data) / RECIPE_NAME
    if recipe.is_file():  # which phantom patients the bank holds, for the privacy evaluation
        shutil.copy2(recipe, out / "training_data.json")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    previous = {}
    if (out / "training.json").is_file():
        previous = json.loads((out / "training.json").read_text())
    manifest = {
        "models": {k: f"{k}/{names[k]}" for k in exported},
        "dataset": _dataset_info(Path(args.data)),
        "preset": args.preset,
        "stages": {k: _brief(v) for k, v in results.items()},
        "privacy": {"tau": tau, **{k: calibration.get("chosen", {}).get(k) for k in
                                   ("train_rejected_frac", "new_passed_frac")}},
        "timings_s": {**previous.get("timings_s", {}), **{k: round(v, 1) for k, v in timings.items()}},
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform()},
        "dtype": "float16" if args.fp16 else "float32",
        "size_mb": size / 1e6,
    }
    (out / "training.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def _brief(result: dict) -> dict:
    keep = {}
    for k, v in result.items():
        if k in ("summary", "scaling", "cache") or isinstance(v, int | float | str):
            keep[k] = v
        elif k == "last" and isinstance(v, dict):
            keep["last"] = {kk: vv for kk, vv in v.items() if isinstance(vv, int | float)}
    return keep


def _dataset_info(data: Path) -> dict:
    return {"path": str(data), **read_recipe(data)}
