"""A dependency-free progress bar for the terminal (stderr), with rate and ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


class ProgressBar:
    """`bar.update(done, total)`; redraws at most every `min_interval` seconds unless finished."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 28, min_interval: float = 0.1,
                 enabled: bool = True):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.enabled = enabled
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.postfix = ""

    def update(self, done: int, total: int, postfix: str | None = None) -> None:
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        elapsed = now - self.start
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        eta = elapsed / done * (total - done) if done else 0.0
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                f"{format_seconds(elapsed)}<{format_seconds(eta)} {self.postfix}")
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()

    def callback(self, step: int, total: int, *_: object) -> None:
        """Adapter for the samplers' `callback(step, total, latents)`."""
        self.update(step, total)
