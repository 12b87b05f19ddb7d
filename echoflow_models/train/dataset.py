"""`echoflow train dataset`: a phantom training set in the EchoNet-Dynamic layout, plus its recipe.

Writes `--patients` phantom patients x `--views` with `echoflow_models.echonet.write_phantom_dataset`:
one `--frames`-frame video per patient and view, and, with `--extra-videos K`, K more short
(`--extra-frames`) videos of the same patient and view at other EFs, phases and noise. The extra videos
give the ReID positives across EF (the same heart beating differently), and cost a quarter of a full
video each. `dataset.json` records the recipe; `train all` copies it next to the exported weights as
`training_data.json`, from which the evaluation re-derives which patients the privacy bank holds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..echonet import write_phantom_dataset
from ..progress import ProgressBar

RECIPE_NAME = "dataset.json"


def read_recipe(folder: str | Path) -> dict:
    """The `dataset.json` recipe `train dataset` leaves beside a phantom FileList, or {} when there is none
    (real data, or a phantom written some other way)."""
    path = Path(folder) / RECIPE_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder (created; re-running resumes)")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", default="A4C,PSAX,PLAX")
    parser.add_argument("--frames", type=int, default=64, help="frames of each patient's main video (32 fps)")
    parser.add_argument("--extra-videos", type=int, default=1, help="short extra videos per patient and view")
    parser.add_argument("--extra-frames", type=int, default=16)
    parser.add_argument("--split", default="0.9,0.1,0.0", help="TRAIN,VAL,TEST fractions of the patients")
    parser.add_argument("--codec", default="mjpeg", choices=["mjpeg", "ffv1"])
    parser.add_argument("--phase", type=float, default=None,
                        help="start every video at this cycle fraction (0 = end-diastole); default random")
    parser.add_argument("--heart-rate", type=float, default=None,
                        help="render every video at this heart rate (bpm); default each patient's own")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    views = tuple(v.strip().upper() for v in str(args.views).split(",") if v.strip())
    split = tuple(float(x) for x in str(args.split).split(","))
    if len(split) != 3:
        raise SystemExit(f"error: --split needs three fractions TRAIN,VAL,TEST, got {args.split!r}")
    common = {"seed": args.seed, "views": views, "split_fractions": split, "codec": args.codec,
              "phase": args.phase, "heart_rate": args.heart_rate}
    bar = ProgressBar("phantom videos", enabled=not args.quiet)
    records = write_phantom_dataset(out, args.patients, videos_per_patient=1, num_frames=args.frames,
                                    progress=bar.update, **common)
    if args.extra_videos > 0:
        # Same patients and names `_00` (kept, never rewritten) plus `_01..`: short videos at other EFs.
        bar = ProgressBar("extra videos  ", enabled=not args.quiet)
        records = write_phantom_dataset(out, args.patients, videos_per_patient=1 + args.extra_videos,
                                        num_frames=args.extra_frames, progress=bar.update, **common)
    recipe = {
        "generator": "echoflow_models.echonet.write_phantom_dataset",
        "num_patients": args.patients,
        "seed": args.seed,
        "views": list(views),
        "split_fractions": list(split),
        "num_frames": args.frames,
        "extra_videos_per_patient": args.extra_videos,
        "extra_frames": args.extra_frames,
        "fps": 32.0,
        "codec": args.codec,
        "phase": args.phase,
        "heart_rate": args.heart_rate,
        "bank_splits": ["TRAIN"],
        "videos": len(records),
        "splits": {s: sum(1 for r in records if r.split == s) for s in ("TRAIN", "VAL", "TEST")},
    }
    (out / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
    if not args.quiet:
        print(f"dataset: {len(records)} videos of {args.patients} patients x {len(views)} views -> {out}")
    return recipe
