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
