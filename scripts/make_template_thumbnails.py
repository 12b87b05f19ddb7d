"""Thumbnails for the shipped workflow templates: `workflows/<name>.jpg`, made from what each workflow makes.

    python -m scripts.make_template_thumbnails [--threads 1]

ComfyUI's template browser shows `/api/workflow_templates/<pack>/<name>.jpg` for each `workflows/<name>.json`
of a pack. Each thumbnail is rendered from a real in-process run of the workflow's API twin on the bundled
demo weights (its saved videos or dataset AVIs): the middle frame of up to four videos side by side, with
the workflow's purpose written underneath.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import headless
from echoflow_models.video_io import read_video

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = {
    "echoflow_full_pipeline": "image -> privacy gate -> EF video",
    "echoflow_masked_image": "LV-mask guided image -> video",
    "echoflow_ef_sweep": "one anatomy at EF 25 / 45 / 65",
    "echoflow_dataset_batch": "privacy-filtered EchoNet dataset",
}
SIZE = (384, 256)  # width, height


def made_videos(out: Path) -> list[Path]:
    return sorted(out.rglob("*.mp4")) or sorted(out.rglob("*.avi"))


def thumbnail(videos: list[Path], caption: str) -> Image.Image:
    frames = []
    for path in videos[:4]:
        clip, _fps = read_video(path)
        frames.append(Image.fromarray(np.ascontiguousarray(clip[clip.shape[0] // 2])))
    canvas = Image.new("RGB", SIZE, (12, 12, 16))
    band, gap = 40, 8
    cell_w, cell_h = (SIZE[0] - gap * (len(frames) + 1)) // len(frames), SIZE[1] - band - 2 * gap
    for i, frame in enumerate(frames):  # each frame fitted into its cell, aspect kept, centred
        scale = min(cell_w / frame.width, cell_h / frame.height)
        fitted = frame.resize((int(frame.width * scale), int(frame.height * scale)), Image.Resampling.LANCZOS)
        x = gap + i * (cell_w + gap) + (cell_w - fitted.width) // 2
        canvas.paste(fitted, (x, gap + (cell_h - fitted.height) // 2))
    draw = ImageDraw.Draw(canvas)
    draw.text((12, SIZE[1] - band + 6), "EchoFlow", fill=(120, 200, 255))
    draw.text((12, SIZE[1] - band + 22), caption, fill=(230, 230, 230))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for api in sorted((ROOT / "workflows" / "api").glob("*.json")):
        prompt = json.loads(api.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            headless.run_prompt(prompt, output_dir=tmp, log=None)
            videos = made_videos(Path(tmp))
            if not videos:
                raise SystemExit(f"{api.name} made no video")
            image = thumbnail(videos, CAPTIONS.get(api.stem, api.stem.replace("_", " ")))
        target = ROOT / "workflows" / f"{api.stem}.jpg"
        image.save(target, quality=85, optimize=True)
        print(f"{target.relative_to(ROOT)}: {len(videos)} video(s), {target.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
