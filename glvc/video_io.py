"""Reading and writing video with PyAV.

Frames everywhere in GLVC are numpy ``uint8`` arrays of shape (T, H, W, 3), RGB, and a
frame rate as :class:`fractions.Fraction`.

Reading decodes the first video stream of any container FFmpeg knows (mp4, mov, webm,
mkv, avi, ts; H.264, HEVC, VP9, AV1, MPEG-4, ...), converts every pixel format (10-bit,
4:4:4, alpha) to 8-bit RGB, applies the rotation stored in the display matrix, and stops
at the limits given. Writing produces H.264 yuv420p mp4 with ``+faststart`` that browsers
play (odd sizes are padded by one replicated row/column, since 4:2:0 needs even sizes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

DEFAULT_FPS = Fraction(25)
MAX_SIDE = 8192


class VideoError(ValueError):
    """The input is not a readable video, or breaks a limit. The message is one line for the user."""


@dataclass
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: Fraction
    source_size: tuple[int, int]  # (width, height) as stored, after rotation, before any resizing
    truncated: bool = False  # True when max_frames or max_seconds cut the clip short

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def duration(self) -> float:
        return self.num_frames / float(self.fps)


def fit_size(width: int, height: int, max_height: int | None = None, max_width: int | None = None) -> tuple[int, int]:
    """Largest size with the same aspect ratio within the limits (never upscales), rounded to even numbers."""
    scale = 1.0
    if max_height and height > max_height:
        scale = min(scale, max_height / height)
    if max_width and width > max_width:
        scale = min(scale, max_width / width)
    if scale >= 1.0:
        return width, height
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _rotation(frame: av.VideoFrame) -> int:
    """Clockwise display rotation in degrees (0, 90, 180, 270) from the frame's display matrix."""
    angle = getattr(frame, "rotation", 0) or 0
    return int(round(angle / 90.0)) * 90 % 360


def _apply_rotation(rgb: np.ndarray, angle: int) -> np.ndarray:
    # PyAV reports the display-matrix angle counter-clockwise, as FFmpeg's av_display_rotation_get does
    if angle == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=angle // 90))


def iter_frames(
    path: str,
    max_frames: int | None = None,
    max_seconds: float | None = None,
    max_height: int | None = None,
    max_width: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 RGB frames of the first video stream, in decoding order, within the limits."""
    for frame, _ in _decode(path, max_frames, max_seconds, max_height, max_width):
        yield frame


def _open(path: str) -> av.container.InputContainer:
    if not os.path.isfile(path):
        raise VideoError(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{os.path.basename(path)} is empty (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise VideoError(f"{os.path.basename(path)} is not a readable video ({err.__class__.__name__})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{os.path.basename(path)} has no video stream")
    return container


def probe_fps(path: str) -> Fraction:
    """The frame rate of the first video stream, or 25 when the container does not say."""
    container = _open(path)
    try:
        return _stream_fps(container.streams.video[0])
    finally:
        container.close()


def frames_in(seconds: float, fps: Fraction | float) -> int:
    """Whole frames in the first ``seconds`` of a clip at ``fps``, at least 1. Floored with a
    tolerance for float rounding: 0.9 s at 10 fps is 9 frames, 0.29 s at 100 fps 29, not 28."""
    return max(1, math.floor(seconds * fps + 1e-6))


def _stream_fps(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < rate <= 1000:
            return Fraction(rate).limit_denominator(1001)
    return DEFAULT_FPS


def _decode(path, max_frames, max_seconds, max_height, max_width):
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        limit = max_frames
        if max_seconds is not None:
            by_time = frames_in(max_seconds, fps)
            limit = by_time if limit is None else min(limit, by_time)
        count = 0
        try:
            for frame in container.decode(stream):
                if limit is not None and count >= limit:
                    return
                angle = _rotation(frame)
                w, h = (frame.width, frame.height) if angle in (0, 180) else (frame.height, frame.width)
                if w > MAX_SIDE or h > MAX_SIDE:
                    raise VideoError(f"video is {w}x{h}; at most {MAX_SIDE}x{MAX_SIDE} is supported")
                out_w, out_h = fit_size(w, h, max_height, max_width)
                if angle in (90, 270):
                    out_w, out_h = out_h, out_w
                if (out_w, out_h) != (frame.width, frame.height):
                    rgb = frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA").to_ndarray()
                else:
                    rgb = frame.to_ndarray(format="rgb24")
                yield _apply_rotation(rgb, angle), (w, h, fps)
                count += 1
        except av.FFmpegError as err:
            if count == 0:
                raise VideoError(f"{os.path.basename(path)} could not be decoded ({err.__class__.__name__})") from None
            # a damaged tail: keep the frames decoded so far
    finally:
        container.close()


class FrameStream:
    """The frames :func:`read_video` returns, decoded one at a time and not kept.

    Iterate once; afterwards ``count``, ``truncated`` and ``source_size`` say what was read (as
    the fields of :class:`Video` do). ``fps`` is known before the first frame. Memory does not
    grow with the clip's length. Raises :class:`VideoError` like :func:`read_video`.
    """

    def __init__(
        self,
        path: str,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        max_height: int | None = None,
        max_width: int | None = None,
    ):
        self.path = path
        self.max_frames, self.max_seconds = max_frames, max_seconds
        self.max_height, self.max_width = max_height, max_width
        self.fps = probe_fps(path)  # opens the file: a bad upload fails here, before any work
        self.count = 0
        self.truncated = False  # True when max_frames or max_seconds cut the clip short
        self.source_size: tuple[int, int] | None = None  # (width, height) after rotation, before resizing
        self.frame_shape: tuple[int, ...] | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        for rgb, (w, h, fps) in _decode(self.path, None, None, self.max_height, self.max_width):
            self.fps = fps
            if (self.max_frames is not None and self.count >= self.max_frames) or (
                self.max_seconds is not None and self.count >= frames_in(self.max_seconds, fps)
            ):
                self.truncated = True
                return
            if self.frame_shape is not None and rgb.shape != self.frame_shape:
                raise VideoError(
                    f"frame size changes mid-stream ({self.frame_shape[1]}x{self.frame_shape[0]} to {rgb.shape[1]}x{rgb.shape[0]})"
                )
            self.source_size = self.source_size or (w, h)
            self.frame_shape = rgb.shape
            self.count += 1
            yield rgb
        if not self.count:
            raise VideoError(f"{os.path.basename(self.path)} has no decodable video frames")


def read_video(
    path: str,
    max_frames: int | None = None,
    max_seconds: float | None = None,
    max_height: int | None = None,
    max_width: int | None = None,
) -> Video:
    """Decode a whole clip (within the limits) into memory.

    ``max_frames``/``max_seconds`` trim the clip (``Video.truncated`` says so);
    ``max_height``/``max_width`` downscale it, keeping the aspect ratio. :class:`FrameStream`
    gives the same frames one at a time.
    """
    stream = FrameStream(path, max_frames, max_seconds, max_height, max_width)
    frames = list(stream)
    return Video(np.stack(frames), stream.fps, stream.source_size, truncated=stream.truncated)


def write_video(path: str, frames: np.ndarray, fps: Fraction | float, crf: int = 18, preset: str = "medium") -> None:
    """Write (T, H, W, 3) uint8 RGB as browser-playable H.264 yuv420p mp4 (``+faststart``)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    with VideoWriter(path, fps, crf=crf, preset=preset) as writer:
        writer.write(frames)


class VideoWriter:
    """What :func:`write_video` writes, fed a few frames at a time (memory does not grow with the clip).

    ``with VideoWriter(path, fps) as w: w.write(frames)`` for each (n, H, W, 3) uint8 batch; the file
    is opened at the first frame, finished on a clean exit and removed when the block raises.
    """

    def __init__(self, path: str, fps: Fraction | float, crf: int = 18, preset: str = "medium"):
        self.path = path
        self.rate = Fraction(fps).limit_denominator(1001)
        self.crf, self.preset = crf, preset
        self.container = None
        self.stream = None
        self.shape: tuple[int, int] | None = None  # (H, W) of the frames given
        self.count = 0

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        if self.shape is None:
            self.shape = frames.shape[1:3]
        elif frames.shape[1:3] != self.shape:
            raise ValueError(f"frame size changed from {self.shape[1]}x{self.shape[0]} to {frames.shape[2]}x{frames.shape[1]}")
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # 4:2:0 needs even sizes
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        if self.container is None:
            self.container = av.open(self.path, mode="w", format="mp4", options={"movflags": "+faststart"})
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height = frames.shape[2], frames.shape[1]
            self.stream.pix_fmt = "yuv420p"
            # x264's macroblock-tree rate control (mbtree) made the file depend on what else had
            # run in the process: the same frames gave another mp4 after an x265 rate search, up
            # to 13 levels apart after decoding (also with the frames' row padding zeroed); without
            # it the same frames give the same bytes (tests/test_video_io.py). Cost at CRF 18:
            # bikes 2 s +26% bytes at the same PSNR, Big Buck Bunny 3 s -10% bytes and -1.3 dB.
            self.stream.options = {"crf": str(self.crf), "preset": self.preset, "x264-params": "mbtree=0"}
        for rgb in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                self.container.mux(packet)
            self.count += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        if self.container is not None:
            try:
                self.container.close()
            except av.FFmpegError:
                pass
            self.container = None
        if os.path.exists(self.path):
            os.remove(self.path)
