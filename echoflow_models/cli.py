"""The `echoflow` command (also `python -m echoflow_models`).

    echoflow generate --view A4C --ef 55 --seed 0 --out out.mp4
    echoflow info PATH                      describe a model folder or a weights root
    echoflow generate-dataset|train ...       (see `echoflow COMMAND --help`)

Workflows, benchmarks and evaluation live beside the library, in the repository: `python -m headless run`,
`python -m bench`, `python -m research evaluate|tune-guidance|relabel-dataset`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from .conventions import EF_MAX, EF_MIN, PRECISION_NAMES, VIEWS, dtype_of
from .options import (
    UsageError,
    add_threads_arg,
    apply_threads,
    check_count,
    check_output_file,
    check_sampling_options,
    check_tau_option,
    pick_device,
    require,
    run_command,
)

DTYPES = {name: dtype_of(name) for name in PRECISION_NAMES}

# Modules that contribute sub-commands through `add_subcommands(subparsers)`.
SUBCOMMAND_MODULES = ("echoflow_models.dataset_maker", "echoflow_models.train")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: the GPU when torch sees one, else the CPU)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="precision of the flow models and the VAE (default fp32; the privacy gate always runs in "
                             "fp32, and the VAE stays fp32 under fp16 when its config asks to upcast)")


def add_weights_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None,
                        help="weights root in the released layout (default: $ECHOFLOW_WEIGHTS or the bundled "
                             "phantom demo weights)")
    parser.add_argument("--vae", default=None, help="VAE folder name under vae/ (default: avae-4f4 or the only one)")
    parser.add_argument("--lifm", default=None, help="image flow folder name under lifm/ (default: the only or first one)")
    parser.add_argument("--lvfm", default=None, help="video flow folder name under lvfm/ (default: the only or first one)")


# ----------------------------------------------------------------------------------------------------


def _check_generate_args(args: argparse.Namespace) -> dict:
    """Every `generate` option checked before any model loads; returns what the run needs (paths, mask)."""
    from .conventions import check_ef
    from .pipeline import MAX_TRIES, RETRY_SEED_STRIDE
    from .sampling import check_seed

    try:
        check_ef(args.ef, "--ef")
        check_seed(args.seed, (args.max_tries - 1) * RETRY_SEED_STRIDE + 1 if args.max_tries >= 1 else 1, "--seed")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_tau_option(args, [args.view.upper()])
    check_count(args.max_tries, "--max-tries", 1, MAX_TRIES)
    check_sampling_options(args)
    out = check_output_file(args.out, "--out", (".mp4", ".avi"), args.overwrite)
    avi = None
    if args.avi:
        require(out.suffix.lower() == ".mp4", "--avi adds an EchoNet-style .avi beside an .mp4 --out, but --out is "
                "already .avi; drop --avi")
        avi = check_output_file(out.with_suffix(".avi"), "--avi", (".avi",), args.overwrite)
    summary = check_output_file(args.json, "--json", (".json",), args.overwrite) if args.json else None
    mask = None
    if args.mask:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(Path(args.mask).expanduser()) as img:
                mask = img.convert("L")
        except (OSError, UnidentifiedImageError) as exc:
            raise UsageError(f"--mask {args.mask!r}: cannot read it as an image ({exc}); give a PNG/JPEG of the LV "
                             "mask, white inside the cavity") from None
        require(mask.getextrema()[1] > mask.getextrema()[0], f"--mask {args.mask!r} is one flat colour; the LV "
                "cavity must be white (or light) on black")
    return {"out": out, "avi": avi, "json": summary, "mask": mask}


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline import EchoFlowPipeline, PrivacyGateError
    from .progress import ProgressBar
    from .video_io import write_avi, write_mp4

    checked = _check_generate_args(args)
    out = checked["out"]
    threads = apply_threads(args)
    device = pick_device(args.device)
    start = time.perf_counter()
    pipe = EchoFlowPipeline.from_folder(
        args.weights, args.vae, args.lifm, args.lvfm, views=[args.view.upper()], tau=args.tau,
        similarity=args.similarity, device=device, dtype=DTYPES[args.dtype], allow_looser_tau=args.allow_looser_tau,
    )
    load_s = time.perf_counter() - start
    quiet = args.quiet

    def progress(stage: str):
        labels = {"image": "latent image", "video": "latent video", "decode": "decode      "}
        return ProgressBar(labels.get(stage, stage), enabled=not quiet).callback

    try:
        result = pipe.generate(
            view=args.view, ef=args.ef, seed=args.seed, image_steps=args.image_steps,
            video_steps=args.video_steps, solver=args.solver, guidance=args.guidance, mask=checked["mask"],
            max_tries=args.max_tries, progress=progress,
        )
    except PrivacyGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    frames = result.frames.numpy()
    fps = args.fps or result.fps
    metadata = {
        "generator": "EchoFlow (comfyui-echoflow)", "view": result.view, "ef": result.ef, "seed": result.seed,
        "image_steps": args.image_steps, "video_steps": args.video_steps, "solver": args.solver,
        "guidance": result.guidance, "masked": checked["mask"] is not None, **pipe.provenance,
        "privacy": result.report.to_dict(),
    }
    if out.suffix.lower() == ".avi":
        write_avi(out, frames, fps=fps, overwrite=args.overwrite)
    else:
        write_mp4(out, frames, fps=fps, metadata=metadata, overwrite=args.overwrite)
    if checked["avi"] is not None:
        write_avi(checked["avi"], frames, fps=fps, overwrite=args.overwrite)
    item = result.report.items[0]
    total = time.perf_counter() - start
    tau_note = result.report.extra.get("tau_chosen_by", "")
    print(f"privacy gate: PASS (max similarity {item.max_similarity:.6f} < tau {result.report.tau:g}"
          f"{f' [{tau_note}]' if tau_note else ''}, nearest bank row {item.nearest_index} of "
          f"{result.report.bank_size}, {result.tries} tr{'y' if result.tries == 1 else 'ies'}, seed {result.seed})")
    print(f"video: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} at {fps:g} fps, view {result.view}, "
          f"EF {result.ef:g} %, EF guidance {result.guidance:g} -> {out}")
    t = result.timings
    print(f"timings: load {load_s:.2f}s, image {t['image_s']:.2f}s, gate {t['gate_s']:.3f}s, "
          f"video {t['video_s']:.2f}s, decode {t['decode_s']:.2f}s, total {total:.2f}s on {device}, "
          f"{threads} thread{'s' if threads > 1 else ''}")
    if checked["json"] is not None:
        summary = {**metadata, "out": out.name, "tries": result.tries, "timings": t, "total_s": total,
                   "threads": threads}
        checked["json"].write_text(json.dumps(summary, indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Load every model strictly (shapes, finite values) and check a weights root's assets and gates.json."""
    from .checkpoint import load_model, read_model_class
    from .conventions import VIEWS
    from .privacy import GATES_NAME, gate_spec, load_gate
    from .scaling import LatentScaler
    from .weights import KINDS, find_model_folders, is_model_folder

    path = Path(args.path)
    is_root = not is_model_folder(path)
    folders = [path] if not is_root else [f for kind in KINDS for f in find_model_folders(path, kind).values()]
    if not folders:
        raise UsageError(f"no model folders at {path} (expected a folder with config.json/config.yaml, or a root "
                         "with vae/ lifm/ lvfm/ reid/)")
    image_shapes = {}
    for folder in folders:
        model = load_model(folder)
        params = sum(p.numel() for p in model.parameters())
        print(f"{folder}: {read_model_class(folder)}, {params / 1e6:.2f} M parameters, loads strictly, all "
              "values finite")
        if read_model_class(folder) == "SegDiTTransformer2DModel":
            image_shapes[folder.name] = (model.out_channels, model.config.sample_size, model.config.sample_size)
    if not is_root:
        return 0
    problems = []
    scaling = path / "assets" / "scaling.pt"
    if scaling.is_file():
        scaler = LatentScaler.load(scaling)
        print(f"{scaling}: {scaler.channels} channels, finite, std > 0")
    elif folders:
        problems.append(f"{scaling} is missing: latents cannot be scaled, so nothing can be generated or decoded")
    guarded = 0
    for view in VIEWS:
        try:
            spec = gate_spec(path, view)
        except FileNotFoundError as exc:
            print(f"privacy gate {view}: not available ({exc})")
            continue
        gate = load_gate(spec)  # refuses a ReID/bank/latent shape it cannot judge with
        extra = gate.report_extra
        print(f"privacy gate {view}: {extra['reid']} + {', '.join(extra['banks'])} ({gate.bank.shape[0]} rows), "
              f"judges latents {list(gate.latent_shape)}, tau {gate.tau:g} ({extra['calibrated_source']})")
        for name, shape in image_shapes.items():
            if shape != gate.latent_shape:
                problems.append(f"the {view} gate judges latents {list(gate.latent_shape)} but lifm/{name} makes "
                                f"{list(shape)}: it could not judge them")
        guarded += 1
    if guarded == 0:
        print(f"no privacy gate is complete under {path}: generation will refuse to release anything "
              f"(see {GATES_NAME} or the release's reid/ and assets/ folders)")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echoflow", description="EchoFlow synthetic echocardiography")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate", help="one privacy-checked, EF-conditioned echo video -> mp4",
        description="Latent image -> privacy gate (new seeds while it rejects) -> EF-conditioned latent video "
                    "-> frames -> .mp4 (H.264) or .avi (EchoNet-style MJPEG). Every option is checked before "
                    "any model loads; nothing is written unless the gate passed. Exit status: 0 written, "
                    "2 bad option or weights, 3 the gate rejected every try.",
    )
    gen.add_argument("--view", default="A4C", type=str.upper, choices=list(VIEWS), help="echo view (default A4C)")
    gen.add_argument("--ef", type=float, default=55.0, metavar="PERCENT",
                     help=f"ejection fraction to animate, in percent, {EF_MIN:g}-{EF_MAX:g} (default 55; the "
                          "released LVFM saw about 7-97, the demo 10-85)")
    gen.add_argument("--seed", type=int, default=0, metavar="N",
                     help="noise seed, a whole number >= 0 (default 0); the k-th retry after a gate rejection "
                          "uses N + k * 100003, and the summary prints the seed that passed")
    gen.add_argument("--mask", default=None, metavar="IMAGE",
                     help="optional LV mask image (PNG/JPEG, white = LV cavity, any size), prepared as the "
                          "reference demo does: autocontrast, threshold at 127, resize to 112 then to the latent")
    gen.add_argument("--out", default="echoflow.mp4", metavar="PATH",
                     help="output file: .mp4 (H.264, metadata in its comment tag) or .avi (MJPEG, EchoNet-style); "
                          "default echoflow.mp4; never replaced without --overwrite")
    gen.add_argument("--avi", action="store_true", help="also write an EchoNet-style .avi beside an .mp4 --out")
    gen.add_argument("--image-steps", type=int, default=50, metavar="N",
                     help="solver steps for the latent image, 1-10000 (default 50, as the reference)")
    gen.add_argument("--video-steps", type=int, default=50, metavar="N",
                     help="solver steps for the latent video, 1-10000 (default 50, as the reference)")
    gen.add_argument("--solver", default="euler", choices=["euler", "heun", "midpoint"],
                     help="ODE solver (default euler, the reference's: 1 model call per step) or heun/midpoint (2 calls, "
                          "second order)")
    gen.add_argument("--guidance", type=float, default=None, metavar="S",
                     help="EF guidance scale, 0-20, 1 = off (default: the video model's recommended value from its "
                          "sampling.json, e.g. the bundled demo's tuned one; 1 for the released weights)")
    gen.add_argument("--tau", type=float, default=None, metavar="T",
                     help="privacy threshold in (0, 1]: an image passes only if its highest similarity to every "
                          "training anatomy is below T (default: the weights' calibrated tau from gates.json, "
                          "else the release's 0.9997). Lower is stricter; looser needs --allow-looser-tau")
    gen.add_argument("--allow-looser-tau", action="store_true",
                     help="accept a --tau above the calibrated one (more look-alikes of training patients pass); "
                          "recorded in the metadata")
    gen.add_argument("--similarity", default="pearson", choices=["pearson", "cosine"],
                     help="similarity of ReID embeddings (default pearson, the reference)")
    gen.add_argument("--max-tries", type=int, default=8, metavar="N",
                     help="latent images to try while the gate rejects, 1-1000 (default 8)")
    gen.add_argument("--fps", type=float, default=None, metavar="FPS",
                     help="frames per second of the file, > 0 and <= 240 (default 32, EchoFlow's)")
    gen.add_argument("--json", default=None, metavar="PATH", help="also write a JSON summary (.json) here")
    gen.add_argument("--overwrite", action="store_true", help="replace --out, the .avi and --json if they exist")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    add_weights_args(gen)
    add_runtime_args(gen)
    add_threads_arg(gen)
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("info", help="load a model folder (or every model under a weights root) strictly, check "
                                       "its values, assets and gates.json, and describe it")
    info.add_argument("path")
    info.set_defaults(func=cmd_info)

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # optional part not present in this checkout
                continue
            raise
        module.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
