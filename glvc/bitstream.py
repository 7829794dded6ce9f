"""The ``.glvc`` container: pack and unpack bytes, each field with its reader.

This module imports no torch. It knows nothing about networks; it only turns a
:class:`Header` plus a list of :class:`FrameUnit` payloads into bytes and back, and
rejects malformed input with :class:`BitstreamError`.

Format, version 2 (all integers little-endian; ``varint`` is unsigned LEB128, at most
10 bytes). Version 2 has the container of version 1; what changed is the payload's meaning:
the codec computes everything that conditions its entropy coder in exact arithmetic
(``glvc/codec/model.py``), so a version 1 stream would decode to other latents and is refused::

    offset  field
    0       magic            4 bytes  b"GLVC"
    4       version          u8       2
    5       flags            u8       bit 0: one latent frame per pixel frame (temporal stride 1, a
                                      per-frame tokenizer); clear: the 1 + 4k grouping (stride 4).
                                      Other bits reserved, must be 0
    6       model fingerprint 16 bytes  (hash of tokenizer + codec configs and weights)
    22      width            varint   original width in pixels   (1 .. 8192)
            height           varint   original height in pixels  (1 .. 8192)
            frames           varint   original frame count       (1 .. 100000)
            fps numerator    varint   (1 .. 1000000)
            fps denominator  varint   (1 .. 1000000)
            pad right        varint   columns of replicate padding added before coding (< 1024)
            pad bottom       varint   rows of replicate padding added before coding (< 1024)
            pad frames       varint   frames repeated at the end to reach 1 + 4k (< 4; 0 at stride 1)
            quality          u8       rate index, 0 (lowest rate) .. 63 (highest)
            refresh period   varint   latent frames between memory resets, 0 = never (< 100000)
            tokenizer segment varint  latent frames per tokenizer segment, 0 = the whole clip (< 100000)
            unit count       varint   number of latent frames that follow (1 .. 25001)
    then ``unit count`` times:
            kind             u8       0 = intra (empty temporal memory), 1 = inter
            payload length   varint   (<= bytes left in the stream)
            payload          bytes    the codec's entropy-coded data for one latent frame
    trailer: CRC-32 (zlib) of every byte before it, u32

The tokenizer codes the clip in segments of ``1 + s (segment - 1)`` pixel frames, each on its
own (the whole clip when segment is 0), where s is the temporal stride (4, or 1 with flag bit 0):
in a segment, latent frame 0 covers pixel frame 0 and latent frame t >= 1 covers pixel frames
s(t-1)+1 .. st. The unit count must equal
:func:`latent_frame_count`, and the first unit must be intra. Every limit is checked before anything is allocated, so a bogus length field
cannot make the reader allocate more than the stream itself holds.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

MAGIC = b"GLVC"
VERSION = 2
FINGERPRINT_BYTES = 16

MAX_SIDE = 8192
MAX_FRAMES = 100_000
MAX_FPS_TERM = 1_000_000
MAX_PAD_PIXELS = 1023
MAX_QUALITY = 63
TEMPORAL_STRIDE = 4
FLAG_FRAME_LATENTS = 0x01
"""Flag bit 0: the tokenizer has temporal stride 1 (one latent frame per pixel frame)."""
TEMPORAL_STRIDES = {0: TEMPORAL_STRIDE, FLAG_FRAME_LATENTS: 1}  # the flags' stride bit -> temporal stride

KIND_INTRA = 0
KIND_INTER = 1
KIND_NAMES = {KIND_INTRA: "intra", KIND_INTER: "inter"}


class BitstreamError(ValueError):
    """A ``.glvc`` stream is malformed, truncated, corrupted or made for another model."""


def segment_frames(segment: int, stride: int = TEMPORAL_STRIDE) -> int:
    """Pixel frames in a full tokenizer segment of ``segment`` latent frames: 1 + stride (segment - 1)."""
    return 1 + stride * (segment - 1)


def _segment_lengths(frames: int, segment: int, stride: int) -> tuple[int, int]:
    """(full segments, pixel frames in the last, partial segment or 0); segment 0 = one segment."""
    if frames < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {frames}")
    if segment == 0:
        return 0, frames
    return divmod(frames, segment_frames(segment, stride))


def latent_frame_count(frames: int, segment: int = 0, stride: int = TEMPORAL_STRIDE) -> int:
    """Latent frames that code ``frames`` pixel frames with a tokenizer of temporal ``stride``.

    The tokenizer codes each segment of ``1 + stride (segment - 1)`` frames on its own (``segment``
    = 0: the whole clip is one segment); a segment of n frames needs ``1 + ceil((n - 1) / stride)``."""
    full, rest = _segment_lengths(frames, segment, stride)
    return full * segment + (1 + -(-(rest - 1) // stride) if rest else 0)


def pad_frame_count(frames: int, segment: int = 0, stride: int = TEMPORAL_STRIDE) -> int:
    """Frames repeated at the end so that the last segment has 1 + stride k frames (0 at stride 1)."""
    _, rest = _segment_lengths(frames, segment, stride)
    return (stride - (rest - 1) % stride) % stride if rest else 0


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the payloads."""

    fingerprint: bytes
    width: int
    height: int
    frames: int
    fps: Fraction
    quality: int
    refresh_period: int = 0
    segment: int = 0
    pad_right: int = 0
    pad_bottom: int = 0
    pad_frames: int = 0
    temporal_stride: int = TEMPORAL_STRIDE  # pixel frames per latent frame after the first (flags bit 0)

    @property
    def flags(self) -> int:
        return {stride: flag for flag, stride in TEMPORAL_STRIDES.items()}[self.temporal_stride]

    def validate(self) -> None:
        """Raise :class:`BitstreamError` if any field is outside the format's limits."""
        if len(self.fingerprint) != FINGERPRINT_BYTES:
            raise BitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(self.fingerprint)}")
        _check_range("width", self.width, 1, MAX_SIDE)
        _check_range("height", self.height, 1, MAX_SIDE)
        _check_range("frames", self.frames, 1, MAX_FRAMES)
        _check_range("fps numerator", self.fps.numerator, 1, MAX_FPS_TERM)
        _check_range("fps denominator", self.fps.denominator, 1, MAX_FPS_TERM)
        _check_range("pad right", self.pad_right, 0, MAX_PAD_PIXELS)
        _check_range("pad bottom", self.pad_bottom, 0, MAX_PAD_PIXELS)
        if self.temporal_stride not in TEMPORAL_STRIDES.values():
            raise BitstreamError(f"temporal stride is {self.temporal_stride}; the format holds "
                                 f"{' or '.join(map(str, sorted(TEMPORAL_STRIDES.values())))}")
        _check_range("pad frames", self.pad_frames, 0, self.temporal_stride - 1)
        _check_range("quality", self.quality, 0, MAX_QUALITY)
        _check_range("refresh period", self.refresh_period, 0, MAX_FRAMES)
        _check_range("tokenizer segment", self.segment, 0, MAX_FRAMES)
        expected_pad = pad_frame_count(self.frames, self.segment, self.temporal_stride)
        if self.pad_frames != expected_pad:
            raise BitstreamError(
                f"pad frames is {self.pad_frames} but {self.frames} frames need {expected_pad} to reach "
                f"1 + {self.temporal_stride}k"
            )

    @property
    def latent_frames(self) -> int:
        return latent_frame_count(self.frames, self.segment, self.temporal_stride)


@dataclass(frozen=True)
class FrameUnit:
    """One latent frame's entropy-coded data."""

    kind: int
    payload: bytes

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"unknown({self.kind})")


@dataclass(frozen=True)
class Container:
    header: Header
    units: list[FrameUnit] = field(default_factory=list)

    @property
    def payload_bytes(self) -> int:
        return sum(len(u.payload) for u in self.units)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise BitstreamError(f"{name} is {value}, outside the allowed range {low} .. {high}")


# ---------------------------------------------------------------------------- writer


def write_varint(value: int) -> bytes:
    """Unsigned LEB128."""
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pack(header: Header, units: list[FrameUnit]) -> bytes:
    """Serialise a header and its latent-frame units into a ``.glvc`` byte string."""
    header.validate()
    if len(units) != header.latent_frames:
        raise BitstreamError(f"{header.frames} frames need {header.latent_frames} units, got {len(units)}")
    out = bytearray()
    out += MAGIC
    out += struct.pack("<BB", VERSION, header.flags)
    out += header.fingerprint
    for value in (
        header.width,
        header.height,
        header.frames,
        header.fps.numerator,
        header.fps.denominator,
        header.pad_right,
        header.pad_bottom,
        header.pad_frames,
    ):
        out += write_varint(value)
    out += struct.pack("<B", header.quality)
    out += write_varint(header.refresh_period)
    out += write_varint(header.segment)
    out += write_varint(len(units))
    for index, unit in enumerate(units):
        if unit.kind not in KIND_NAMES:
            raise BitstreamError(f"unit {index} has unknown kind {unit.kind}")
        out += struct.pack("<B", unit.kind)
        out += write_varint(len(unit.payload))
        out += unit.payload
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


# ---------------------------------------------------------------------------- reader


class _Reader:
    """A cursor over bytes whose every read checks the bytes left."""

    def __init__(self, data: bytes, end: int):
        self.data = data
        self.pos = 0
        self.end = end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, count: int, what: str) -> bytes:
        if count > self.left():
            raise BitstreamError(
                f"truncated stream: {what} needs {count} bytes at offset {self.pos}, only {self.left()} left"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = 0
        start = self.pos
        for shift in range(0, 70, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise BitstreamError(f"{what} at offset {start} is a varint longer than 10 bytes")


def unpack_header(data: bytes) -> tuple[Header, _Reader]:
    """Read and validate the header only (for ``info``); returns it and a cursor after it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) + 2 + FINGERPRINT_BYTES + 4:
        raise BitstreamError(f"stream is {len(data)} bytes, shorter than the smallest possible header")
    if data[:4] != MAGIC:
        raise BitstreamError(f"not a .glvc stream: magic is {data[:4]!r}, expected {MAGIC!r}")
    stored_crc = struct.unpack("<I", data[-4:])[0]
    actual_crc = zlib.crc32(data[:-4]) & 0xFFFFFFFF
    reader = _Reader(data, len(data) - 4)
    reader.take(4, "magic")
    version = reader.u8("version")
    if version != VERSION:
        made_by = "a newer GLVC: update GLVC" if version > VERSION else "an older GLVC: decode it with that release"
        raise BitstreamError(f"unsupported format version {version}; this decoder reads version {VERSION} "
                             f"(the stream was written by {made_by}, or encode the video again)")
    if stored_crc != actual_crc:
        raise BitstreamError(
            f"checksum mismatch: stream says CRC-32 {stored_crc:08x}, content has {actual_crc:08x} "
            "(the file is corrupted or truncated)"
        )
    flags = reader.u8("flags")
    if flags not in TEMPORAL_STRIDES:
        raise BitstreamError(f"flags byte is {flags:#04x}; version {VERSION} defines only bit 0 (temporal stride 1)")
    fingerprint = reader.take(FINGERPRINT_BYTES, "model fingerprint")
    width = reader.varint("width")
    height = reader.varint("height")
    frames = reader.varint("frames")
    fps_num = reader.varint("fps numerator")
    fps_den = reader.varint("fps denominator")
    _check_range("fps numerator", fps_num, 1, MAX_FPS_TERM)
    _check_range("fps denominator", fps_den, 1, MAX_FPS_TERM)
    pad_right = reader.varint("pad right")
    pad_bottom = reader.varint("pad bottom")
    pad_frames = reader.varint("pad frames")
    quality = reader.u8("quality")
    refresh_period = reader.varint("refresh period")
    segment = reader.varint("tokenizer segment")
    header = Header(
        fingerprint=fingerprint,
        width=width,
        height=height,
        frames=frames,
        fps=Fraction(fps_num, fps_den),
        quality=quality,
        refresh_period=refresh_period,
        segment=segment,
        pad_right=pad_right,
        pad_bottom=pad_bottom,
        pad_frames=pad_frames,
        temporal_stride=TEMPORAL_STRIDES[flags],
    )
    header.validate()
    return header, reader


def unpack(data: bytes) -> Container:
    """Parse a whole ``.glvc`` stream; raises :class:`BitstreamError` on any defect."""
    header, reader = unpack_header(data)
    count = reader.varint("unit count")
    if count != header.latent_frames:
        raise BitstreamError(f"unit count is {count} but {header.frames} frames need {header.latent_frames}")
    units = []
    for index in range(count):
        kind = reader.u8(f"unit {index} kind")
        if kind not in KIND_NAMES:
            raise BitstreamError(f"unit {index} at offset {reader.pos - 1} has unknown kind {kind}")
        if index == 0 and kind != KIND_INTRA:
            raise BitstreamError("the first unit must be intra-coded")
        length = reader.varint(f"unit {index} payload length")
        payload = reader.take(length, f"unit {index} payload")
        units.append(FrameUnit(kind=kind, payload=payload))
    if reader.left():
        raise BitstreamError(f"{reader.left()} unexpected bytes after the last unit at offset {reader.pos}")
    return Container(header=header, units=units)
