"""The evaluation's inputs: clips found on disk (video files and folders of frames) and read
into frames, for ``glvc eval`` and the scripts (rules in :mod:`glvc.evaluate`'s docstring)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mpg", ".mpeg", ".y4m", ".flv", ".ogv")


@dataclass
class ClipSource:
    name: str
    path: str
    kind: str  # "frames" | "video"
    fps: Fraction | None = None  # from a manifest, for frame folders


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: Fraction
    path: str
    source_size: tuple[int, int]  # (width, height) before resizing
    truncated: bool

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def _images_in(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))


def _manifest_fps(folder: str) -> Fraction | None:
    """fps of a frame folder from a validation-set manifest in the folder or its parent."""
    folder = os.path.abspath(folder)
    base = os.path.basename(folder)
    for manifest, key in ((os.path.join(folder, "manifest.json"), None), (os.path.join(os.path.dirname(folder), "manifest.json"), base)):
        if not os.path.isfile(manifest):
            continue
        try:
            with open(manifest) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if key is None and "fps" in data:
            return Fraction(data["fps"]).limit_denominator(1001)
        for clip in data.get("clips", []) if isinstance(data, dict) else []:
            if key is not None and clip.get("dir", clip.get("name")) == key and clip.get("fps"):
                return Fraction(clip["fps"]).limit_denominator(1001)
    return None


def discover_clips(paths: Sequence[str]) -> list[ClipSource]:
    """Expand clip arguments (video files, frame folders, folders of those) into clip sources."""
    found: list[ClipSource] = []
    for path in paths:
        if os.path.isfile(path):
            found.append(ClipSource(os.path.splitext(os.path.basename(path))[0], path, "video"))
            continue
        if not os.path.isdir(path):
            raise ValueError(f"no such clip or folder: {path}")
        if _images_in(path):
            found.append(ClipSource(os.path.basename(os.path.normpath(path)), path, "frames", _manifest_fps(path)))
            continue
        entries = sorted(os.listdir(path))
        manifest = os.path.join(path, "manifest.json")
        if os.path.isfile(manifest):
            try:
                with open(manifest) as f:
                    order = [c.get("dir", c.get("name")) for c in json.load(f).get("clips", [])]
                entries = [e for e in order if e in entries] + [e for e in entries if e not in order]
            except (OSError, ValueError, AttributeError):
                pass
        inner = []
        for entry in entries:
            full = os.path.join(path, entry)
            if entry.startswith("."):
                continue
            if os.path.isdir(full) and _images_in(full):
                inner.append(ClipSource(entry, full, "frames", _manifest_fps(full)))
            elif os.path.isfile(full) and entry.lower().endswith(VIDEO_EXTS):
                inner.append(ClipSource(os.path.splitext(entry)[0], full, "video"))
        if not inner:
            raise ValueError(f"{path} holds no image frames, video files or folders of frames")
        found.extend(inner)
    names: dict[str, int] = {}
    for src in found:  # make names unique
        n = names.get(src.name, 0)
        names[src.name] = n + 1
        if n:
            src.name = f"{src.name}_{n + 1}"
    return found


def load_clip(src: ClipSource, max_frames: int | None = None, max_height: int | None = None, default_fps: float = 25.0) -> Clip:
    """Read a clip as (T, H, W, 3) uint8 RGB, first ``max_frames`` frames, at most ``max_height`` rows."""
    from .video_io import fit_size, read_video

    if src.kind == "video":
        video = read_video(src.path, max_frames=max_frames, max_height=max_height)
        return Clip(src.name, video.frames, video.fps, src.path, video.source_size, video.truncated)
    from PIL import Image

    names = _images_in(src.path)
    truncated = max_frames is not None and len(names) > max_frames
    if max_frames is not None:
        names = names[:max_frames]
    frames = []
    source_size = None
    for name in names:
        with Image.open(os.path.join(src.path, name)) as img:
            img = img.convert("RGB")
            source_size = source_size or img.size
            if img.size != source_size:
                raise ValueError(f"{src.path}: {name} is {img.size[0]}x{img.size[1]}, earlier frames {source_size[0]}x{source_size[1]}")
            size = fit_size(img.size[0], img.size[1], max_height)
            if size != img.size:
                img = img.resize(size, Image.Resampling.BOX)
            frames.append(np.asarray(img, dtype=np.uint8))
    fps = src.fps or Fraction(default_fps).limit_denominator(1001)
    return Clip(src.name, np.stack(frames), fps, src.path, tuple(source_size), truncated)
