"""The shipped workflows as ComfyUI templates: each has a thumbnail where the template browser looks for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_every_template_has_a_real_thumbnail(path):
    # ComfyUI 0.33 lists <pack>/workflows/*.json and shows /api/workflow_templates/<pack>/<name>.jpg
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: run python -m scripts.make_template_thumbnails"
    assert thumb.stat().st_size < 64 * 1024
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.size == (384, 256)
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # a picture of echo frames, not a blank card


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_template_nodes_do_not_overlap(path):
    """Every node's box (title bar included) is clear of every other's, so a template opens readable."""
    import json

    boxes = []
    for node in json.loads(path.read_text())["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        boxes.append((node["id"], x, y - TITLE_HEIGHT, x + w, y + h))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"
