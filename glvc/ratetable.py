"""A model's rate table: its bits per pixel measured at some quality indices (``rate_table.json``).

The app's quality hint reads it (``glvc.service.load_rate_table``): measured, not modelled. Every
listed clip is read with the app's default CPU limits (downscaled to ``max_height``, trimmed to
``max_seconds``), encoded at each quality with :meth:`glvc.pipeline.GLVC.encode`
(``reconstruct=False``) and the ``.glvc`` bytes are counted (header and container included).
Written by ``scripts/rate_table.py`` and at the end of ``glvc train`` (config key ``rate_table``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

from .defaults import RATE_TABLE_NAME, REPO_ROOT

RATE_TABLE_VERSION = 1
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples")
EXAMPLES = ("bigbuckbunny_3s.mp4", "vtest_3s.mp4", "bikes_2s.mp4")
DEFAULT_QUALITIES = (0, 7, 14, 21, 28, 35, 42, 49, 56, 63)
# the app's defaults on a CPU (glvc.service.CPU_LIMITS; a test checks that they agree)
DEFAULT_MAX_HEIGHT = 240
DEFAULT_MAX_SECONDS = 2.0

__all__ = ["RATE_TABLE_NAME", "RATE_TABLE_VERSION", "example_clips", "measure", "write_rate_table"]


def example_clips() -> list[str]:
    """The example clips the bundled model's table was measured on."""
    return [os.path.join(EXAMPLES_DIR, name) for name in EXAMPLES]


def measure(model, paths: Sequence[str], qualities: Sequence[int], max_height: int, max_seconds: float,
            log: Callable[[str], None] | None = print) -> dict:
    """Bytes and bpp of every clip at every quality; ``{"clips": [...], "mean_bpp": [...]}``."""
    from .video_io import read_video

    clips = []
    for path in paths:
        video = read_video(path, max_seconds=max_seconds, max_height=max_height)
        row = {"clip": os.path.basename(path), "frames": video.num_frames, "width": video.width,
               "height": video.height, "fps": float(video.fps), "bytes": [], "bpp": []}
        for q in qualities:
            start = time.perf_counter()
            report = model.encode(video.frames, video.fps, quality=q, reconstruct=False).report
            row["bytes"].append(report.bytes)
            row["bpp"].append(round(report.bits_per_pixel, 6))
            if log:
                log(f"{row['clip']} {video.width}x{video.height}x{video.num_frames} q={q}: {report.bytes} bytes, "
                    f"{report.bits_per_pixel:.5f} bpp ({time.perf_counter() - start:.1f} s)")
        clips.append(row)
    mean = [round(sum(c["bpp"][i] for c in clips) / len(clips), 6) for i in range(len(qualities))]
    return {"clips": clips, "mean_bpp": mean}


def write_rate_table(model, path: str, paths: Sequence[str] | None = None, qualities: Sequence[int] = DEFAULT_QUALITIES,
                     max_height: int = DEFAULT_MAX_HEIGHT, max_seconds: float = DEFAULT_MAX_SECONDS,
                     command: str | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Measure ``model`` (a :class:`~glvc.pipeline.GLVC`) and write its table to ``path``; returns the table."""
    paths = list(paths) if paths else example_clips()
    qualities = sorted({int(q) for q in qualities})
    if not qualities or qualities[0] < 0 or qualities[-1] > model.max_quality:
        raise ValueError(f"rate table qualities must lie in 0 .. {model.max_quality}, got {qualities}")
    start = time.perf_counter()
    table = measure(model, paths, qualities, max_height, max_seconds, log)
    out = {
        "version": RATE_TABLE_VERSION,
        "model_fingerprint": model.fingerprint.hex(),
        "qualities": qualities,
        **table,
        "measured_with": {
            "command": command,
            "max_height": max_height,
            "max_seconds": max_seconds,
            "bytes": "whole .glvc file (header, unit headers and CRC included)",
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    return out
