"""Progress bars, latent previews and the Cancel button (ComfyUI's interrupt), with a plain fallback."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._host import HAS_COMFY, latent_previews_on, log  # noqa: F401
from ._host import cu as _cu
from ._host import mm as _mm


class Interrupted(Exception):
    """Raised by the plain fallback when ``request_interrupt()`` was called (headless Ctrl-C)."""


_INTERRUPT = {"flag": False}


def request_interrupt() -> None:
    _INTERRUPT["flag"] = True


def clear_interrupt() -> None:
    _INTERRUPT["flag"] = False


def check_interrupt() -> None:
    """ComfyUI's ``throw_exception_if_processing_interrupted`` (the Cancel button / ``POST /interrupt``)."""
    if HAS_COMFY:
        _mm.throw_exception_if_processing_interrupted()
    if _INTERRUPT["flag"]:
        _INTERRUPT["flag"] = False
        raise Interrupted("EchoFlow run interrupted")


class Progress:
    """Step counter for one node: ComfyUI's ProgressBar in ComfyUI, an optional printer outside.

    ``callback`` has the pipeline's signature ``(step, total, latents)``; it checks for an interrupt on
    every step (raising aborts the solver) and may send a small preview image to the UI.
    """

    listener: Callable[[str, int, int], None] | None = None  # set by the headless runner

    def __init__(self, total: int, label: str = "", node_id: str | None = None, preview: Callable | None = None):
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.preview = preview if preview_enabled() else None
        self.bar = _cu.ProgressBar(self.total, node_id=node_id) if HAS_COMFY else None

    def update(self, n: int = 1, latents: torch.Tensor | None = None) -> None:
        check_interrupt()
        self.done = min(self.total, self.done + n)
        if self.bar is not None:
            pv = None
            if self.preview is not None and latents is not None:
                try:
                    pv = ("JPEG", self.preview(latents), 512)
                except Exception:  # a preview must never break sampling
                    pv = None
            self.bar.update_absolute(self.done, self.total, pv)
        if Progress.listener is not None:
            Progress.listener(self.label, self.done, self.total)

    def callback(self, weight: int = 1) -> Callable:
        """Pipeline callback: every call is one solver step worth ``weight`` units of this bar (e.g. the
        number of batch items the step advanced), so one bar spans several solver runs."""

        def cb(step: int, total: int, latents: torch.Tensor) -> None:
            self.update(weight, latents)

        return cb


def preview_enabled() -> bool:
    return latent_previews_on()
