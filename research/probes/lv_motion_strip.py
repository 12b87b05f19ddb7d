"""One generated anatomy animated at several EFs, with the segmented LV outlined: does the cavity contract?

    python -m research.probes.lv_motion_strip --out docs/images/lv_motion.png [--efs 20,80] [--seed 3]

Writes a PNG grid (one row per EF: the frames of largest and smallest segmented LV volume, outlined in red)
and prints EF by segmentation and by the EF regressor for each row. Uses the weights root's seg/ model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from echoflow_models.checkpoint import load_model
from echoflow_models.lv_ef import measure_ef
from echoflow_models.options import add_threads_arg, apply_threads
from echoflow_models.pipeline import EchoFlowPipeline
from echoflow_models.weights import default_weights_root

from ..evaluate import ef_regressor_folder, predict_ef
from ..lv_instrument import load_seg


def outline(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 gray [H, W] + bool [H, W] -> RGB [H, W, 3] with the mask's border in red."""
    rgb = np.repeat(frame[..., None], 3, axis=-1).copy()
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    border = m & ~inner
    rgb[border] = (255, 40, 40)
    return rgb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--efs", default="20,80")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--view", default="A4C")
    parser.add_argument("--guidance", type=float, default=None)
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    root = Path(args.weights) if args.weights else default_weights_root()
    pipe = EchoFlowPipeline.from_folder(root, views=[args.view], device="cpu")
    seg = load_seg(root)
    regressor = load_model(ef_regressor_folder(root))
    image = pipe.sample_images(args.view, None, 50, "euler", args.seed, 1)
    rows = []
    for ef in [float(x) for x in args.efs.split(",")]:
        frames = pipe.decode(pipe.animate(image, ef, 50, "euler", args.guidance, seed=args.seed))[0][..., 0].numpy()
        masks = seg.segment(frames).numpy()
        result = measure_ef(masks, 32.0, args.view)
        by_regressor = float(predict_ef(regressor, [frames])[0])
        big, small = int(np.argmax(result.volumes)), int(np.argmin(result.volumes))
        print(f"requested EF {ef:g}: by segmentation {result.ef:.1f} (EDV {result.edv:.1f}, ESV {result.esv:.1f} mL; "
              f"frames {big} / {small}), by the regressor {by_regressor:.1f}")
        rows.append(np.concatenate([outline(frames[big], masks[big]), outline(frames[small], masks[small])], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0)).resize((2 * 224, len(rows) * 224), Image.NEAREST)
    draw = ImageDraw.Draw(grid)
    for i, ef in enumerate(args.efs.split(",")):
        draw.text((4, i * 224 + 4), f"EF {ef}: max | min LV", fill=(255, 255, 0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    with torch.inference_mode():
        raise SystemExit(main())
