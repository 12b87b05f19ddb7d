"""EF fidelity of generated videos by both instruments, on `evaluate`'s own fidelity and response videos.

    python -m research.probes.ef_instruments [--weights ROOT] [--lvfm NAME] [--guidance G] [--out F.json]

The (b) part of `python -m research evaluate` alone (16 videos at EF 20..80 %, seeds 0..15; 4 images at EF
20/50/80, seeds 100..103), read by the EF regressor and by LV segmentation, plus the segmentation
instrument's own error on real phantom videos; a few minutes instead of the full evaluation's 45.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from echoflow_models.checkpoint import load_model
from echoflow_models.options import add_threads_arg, apply_threads
from echoflow_models.pipeline import EchoFlowPipeline
from echoflow_models.weights import default_weights_root

from ..evaluate import EvalSizes, ef_regressor_folder, evaluate_ef_fidelity, evaluate_ef_response
from ..lv_instrument import instrument_error, load_seg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--lvfm", default=None, help="video flow folder name under lvfm/")
    parser.add_argument("--guidance", type=float, default=None, help="default: the video model's recommendation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-response", action="store_true", help="skip the EF 20/50/80 response images")
    parser.add_argument("--out", default=None)
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    root = Path(args.weights) if args.weights else default_weights_root()
    pipe = EchoFlowPipeline.from_folder(root, lvfm=args.lvfm, views=["A4C"], device="cpu")
    seg, regressor = load_seg(root), load_model(ef_regressor_folder(root))
    sizes = replace(EvalSizes(), guidance=args.guidance if args.guidance is not None else pipe.default_guidance)
    with torch.inference_mode():
        report = {"weights": str(root), "lvfm": args.lvfm, "guidance": sizes.guidance,
                  "seg_instrument": instrument_error(seg, pipe, sizes.fidelity_videos, "A4C"),
                  "ef_fidelity": evaluate_ef_fidelity(pipe, regressor, sizes, args.seed, "A4C", True, seg)}
        if not args.no_response:
            report["ef_response"] = evaluate_ef_response(pipe, regressor, sizes, args.seed, "A4C", seg)
    f, s = report["ef_fidelity"], report["ef_fidelity"]["by_segmentation"]
    print(f"guidance {sizes.guidance:g}: regressor MAE {f['mae']:.2f}, r {f['pearson_r']:.3f}, slope {f['slope']:.2f}; "
          f"segmentation MAE {s.get('mae', float('nan')):.2f}, r {s.get('pearson_r', float('nan')):.3f}, slope "
          f"{s.get('slope', float('nan')):.2f}, bias {s.get('bias', float('nan')):+.2f}; flicker-EF r {f['flicker_ef_r']:.2f}")
    print("requested -> by segmentation:", ", ".join(f"{a:g} -> {b}" for a, b in s["table"]))
    if "ef_response" in report:
        r = report["ef_response"]
        print(f"response slope: regressor {r['slope_mean']:.2f}, segmentation {r['by_segmentation']['slope_mean']:.2f}")
    inst = report["seg_instrument"]
    print(f"instrument on real phantom videos: MAE {inst['rendered']['mae']:.2f} as rendered, "
          f"{inst['through_vae']['mae']:.2f} through the A-VAE")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
