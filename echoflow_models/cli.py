"""The `echoflow` command (also `python -m echoflow_models`).

    echoflow generate --view A4C --ef 55 --seed 0 --out out.mp4
    echoflow info PATH                      describe a model folder or a weights root
    echoflow train|evaluate|bench|run|generate-dataset ...   (see `echoflow COMMAND --help`)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Modules that contribute sub-commands through `add_subcommands(subparsers)`.
SUBCOMMAND_MODULES = ("echoflow_models.train", "echoflow_models.evaluate", "echoflow_models.bench",
                      "echoflow_models.headless")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for CUDA but torch sees no GPU; use --device cpu")
    return device


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="precision of the flow models")


def add_weights_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None,
                        help="weights root in the released layout (default: $ECHOFLOW_WEIGHTS or the bundled "
                             "phantom demo weights)")
    parser.add_argument("--vae", default=None, help="VAE folder name under vae/ (default: avae-4f4 or the only one)")
    parser.add_argument("--lifm", default=None, help="image flow folder name under lifm/")
    parser.add_argument("--lvfm", default=None, help="video flow folder name under lvfm/")


# ----------------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoint import MAX_GUIDANCE
    from .pipeline import EchoFlowPipeline, PrivacyGateError
    from .progress import ProgressBar
    from .video_io import write_avi, write_mp4

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite or choose another --out")
    if not 0 <= args.ef <= 100:
        raise SystemExit(f"error: --ef is a percentage in [0, 100], got {args.ef}")
    if args.guidance is not None and not 0 <= args.guidance <= MAX_GUIDANCE:
        raise SystemExit(f"error: --guidance must be in [0, {MAX_GUIDANCE:g}] (1 = off), got {args.guidance}")
    device = pick_device(args.device)
    start = time.perf_counter()
    pipe = EchoFlowPipeline.from_folder(
        args.weights, args.vae, args.lifm, args.lvfm, views=[args.view.upper()], tau=args.tau,
        similarity=args.similarity, device=device, dtype=DTYPES[args.dtype],
    )
    load_s = time.perf_counter() - start
    quiet = args.quiet

    def progress(stage: str):
        labels = {"image": "latent image", "video": "latent video", "decode": "decode      "}
        return ProgressBar(labels.get(stage, stage), enabled=not quiet).callback

    try:
        result = pipe.generate(
            view=args.view, ef=args.ef, seed=args.seed, image_steps=args.image_steps,
            video_steps=args.video_steps, solver=args.solver, guidance=args.guidance,
            max_tries=args.max_tries, progress=progress,
        )
    except PrivacyGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    frames = result.frames.numpy()
    metadata = {
        "generator": "EchoFlow (comfyui-echoflow)", "view": result.view, "ef": result.ef, "seed": result.seed,
        "image_steps": args.image_steps, "video_steps": args.video_steps, "solver": args.solver,
        "guidance": result.guidance, "weights": str(args.weights or "bundled phantom demo"),
        "privacy": result.report.to_dict(),
    }
    write_mp4(out, frames, fps=args.fps or result.fps, metadata=metadata, overwrite=args.overwrite)
    if args.avi:
        write_avi(out.with_suffix(".avi"), frames, fps=args.fps or result.fps, overwrite=args.overwrite)
    item = result.report.items[0]
    total = time.perf_counter() - start
    print(f"privacy gate: PASS (max similarity {item.max_similarity:.6f} < tau {result.report.tau:g}, "
          f"nearest bank row {item.nearest_index} of {result.report.bank_size}, {result.tries} tr"
          f"{'y' if result.tries == 1 else 'ies'}, seed {result.seed})")
    print(f"video: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} at {args.fps or result.fps:g} fps, "
          f"view {result.view}, EF {result.ef:g} %, EF guidance {result.guidance:g} -> {out}")
    t = result.timings
    print(f"timings: load {load_s:.2f}s, image {t['image_s']:.2f}s, gate {t['gate_s']:.3f}s, "
          f"video {t['video_s']:.2f}s, decode {t['decode_s']:.2f}s, total {total:.2f}s on {device}")
    if args.json:
        summary = {**metadata, "out": str(out), "tries": result.tries, "timings": t, "total_s": total}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, read_model_class
    from .weights import KINDS, find_model_folders, is_model_folder

    path = Path(args.path)
    folders = [path] if is_model_folder(path) else [
        f for kind in KINDS for f in find_model_folders(path, kind).values()
    ]
    if not folders:
        raise SystemExit(f"error: no model folders at {path} (expected a folder with config.json/config.yaml, "
                         "or a root with vae/ lifm/ lvfm/ reid/)")
    for folder in folders:
        model = load_model(folder)
        params = sum(p.numel() for p in model.parameters())
        print(f"{folder}: {read_model_class(folder)}, {params / 1e6:.2f} M parameters, loads strictly")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echoflow", description="EchoFlow synthetic echocardiography")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="one privacy-checked, EF-conditioned echo video -> mp4")
    gen.add_argument("--view", default="A4C", type=str.upper, choices=["A4C", "PSAX", "PLAX"])
    gen.add_argument("--ef", type=float, default=55.0, help="ejection fraction in percent (default 55)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="echoflow.mp4", help="output .mp4 path")
    gen.add_argument("--avi", action="store_true", help="also write an EchoNet-style .avi next to the mp4")
    gen.add_argument("--image-steps", type=int, default=50)
    gen.add_argument("--video-steps", type=int, default=50)
    gen.add_argument("--solver", default="euler", choices=["euler", "heun", "midpoint"])
    gen.add_argument("--guidance", type=float, default=None,
                     help="EF guidance scale, 1 = off (default: the video model's recommended value from its "
                          "sampling.json, e.g. the bundled demo's tuned one; 1 for the released weights)")
    gen.add_argument("--tau", type=float, default=None, help="privacy threshold (default: the weights' own)")
    gen.add_argument("--similarity", default="pearson", choices=["pearson", "cosine"])
    gen.add_argument("--max-tries", type=int, default=8, help="new latent images to try while the gate rejects")
    gen.add_argument("--fps", type=float, default=None, help="frames per second (default 32)")
    gen.add_argument("--json", default=None, help="also write a JSON summary here")
    gen.add_argument("--overwrite", action="store_true")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    add_weights_args(gen)
    add_runtime_args(gen)
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("info", help="load a model folder (or every model under a weights root) and describe it")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # CheckpointError and friends carry their own explanation
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
