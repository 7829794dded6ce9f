"""Classic-codec baselines (x264, x265, SVT-AV1) through PyAV's bundled FFmpeg.

Frames in and out are numpy ``uint8`` arrays ``(T, H, W, 3)``, RGB 0-255.

Coding setup
------------
* Low-delay structure: no B-frames, no frame reordering (decode order =
  display order), an intra frame exactly every ``gop`` frames (default
  ``gop = T``: a single I frame) with scene-cut detection off, as in the
  low-delay test conditions of learned video codec papers.  x264:
  ``max_b_frames = 0`` and ``gop_size`` on the codec context (the preset's
  B-frames stay on otherwise), ``x264-params scenecut=0``; x265:
  ``x265-params bframes=0:keyint=N:scenecut=0:info=0:log-level=error``
  (``info=0`` drops a 2.3 kB version/info SEI); SVT-AV1: ``svtav1-params
  pred-struct=1:scd=0`` (its low-delay mode).  Not a zero-latency tune:
  look-ahead/rate-control tools of the preset stay on (x264/x265 encoder-side
  look-ahead delays output but never reorders frames).
* Rate control: constant quality ``crf`` (x264/x265 0-51, SVT-AV1 1-63) or an
  average bitrate ``target_kbps`` (one of the two; ABR for x264/x265, CBR
  ``rc=2`` for SVT-AV1, which refuses VBR in low-delay mode).  On short clips
  ABR lands far from the target; use :func:`match_bitrate` to match sizes.
* Colour: RGB -> yuv420p 8-bit, BT.601 matrix, limited ("tv") range, signalled
  in the bitstream; swscale with bicubic + accurate rounding + full chroma
  interpolation both ways.  The conversion alone (no coding) caps every
  baseline's PSNR-RGB (see :func:`yuv420_roundtrip`): measured 52.0 dB on
  bikes 640x272, 43.6 dB on vtest 384x288, ~38 dB on saturated synthetic
  test patterns.
* Sizes: yuv420p needs even sizes; frames are padded by edge replication and
  cropped back after decoding.  libx265 and libsvtav1 are additionally padded
  to >= 64 px per side: measured here, libx265 corrupts the heap (glibc abort)
  on e.g. 24x40 or any 8 px side, and libsvtav1 hangs on e.g. 66x18 or 8x200.
  The padding costs some bytes on tiny clips only.

Byte counting convention
------------------------
``bitstream_bytes`` is the sum of the sizes of the packets the encoder emits:
the raw elementary stream (H.264/HEVC Annex B with start codes, AV1
low-overhead OBU stream), with no container.  It includes, equally for every
codec, all parameter sets / sequence headers and every SEI / metadata unit
the encoder writes (notably x264's ~0.6 kB version SEI in the first packet).

``payload_bytes`` is the same stream minus units a decoder does not need to
reconstruct the pictures: H.264 SEI (NAL type 6), HEVC prefix/suffix SEI
(types 39/40), and AV1 temporal delimiter (2), metadata (5) and padding (15)
OBUs, each with its start code / header.  Parameter sets and sequence headers
stay.  Decoding the payload-only stream gives identical frames (tested).
Report which of the two you compare; at ~0.01 bpp on small clips the
difference matters.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

# SVT-AV1 prints a banner and warnings to stderr on every encoder open unless told otherwise.
os.environ.setdefault("SVT_LOG", "1")

import av  # noqa: E402
from av.video.reformatter import Interpolation  # noqa: E402

__all__ = [
    "CodecSpec",
    "CODECS",
    "BaselineResult",
    "encode_decode",
    "match_bitrate",
    "crf_sweep",
    "yuv420_roundtrip",
    "payload_packets",
    "codec_spec",
]

_SWS_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
_COLORSPACE = "ITU601"
_COLOR_RANGE = "MPEG"
_AVCOL_SPC_SMPTE170M = 6  # BT.601 matrix, for the bitstream's colour description
_AVCOL_RANGE_MPEG = 1


@dataclass(frozen=True)
class CodecSpec:
    """One baseline codec: FFmpeg encoder/decoder names, CRF range and defaults."""

    key: str
    encoder: str
    decoder: str
    crf_min: int
    crf_max: int
    default_crf: int
    default_preset: str
    min_side: int  # frames are padded to at least this many pixels per side
    bitstream: str  # "annexb-h264" | "annexb-hevc" | "av1-obu"


CODECS: dict[str, CodecSpec] = {
    "x264": CodecSpec("x264", "libx264", "h264", 0, 51, 23, "medium", 2, "annexb-h264"),
    "x265": CodecSpec("x265", "libx265", "hevc", 0, 51, 28, "medium", 64, "annexb-hevc"),
    # SVT-AV1 presets run 0 (slowest) .. 13 (fastest); 8 is a middle-of-the-road speed.
    "svtav1": CodecSpec("svtav1", "libsvtav1", "libdav1d", 1, 63, 35, "8", 64, "av1-obu"),
}
_ALIASES = {
    "x264": "x264", "libx264": "x264", "h264": "x264", "avc": "x264",
    "x265": "x265", "libx265": "x265", "hevc": "x265", "h265": "x265",
    "svtav1": "svtav1", "libsvtav1": "svtav1", "svt-av1": "svtav1", "av1": "svtav1",
}


def codec_spec(codec: str) -> CodecSpec:
    """Look up a codec by key or alias (``x264``/``libx264``, ``x265``/``hevc``, ``svtav1``/``libsvtav1``/``av1``)."""
    key = _ALIASES.get(codec.lower())
    if key is None:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(_ALIASES)}")
    return CODECS[key]


@dataclass
class BaselineResult:
    """Outcome of one encode + decode.

    ``decoded``: uint8 (T, H, W, 3) RGB with the input's exact shape.
    ``bitstream_bytes`` / ``payload_bytes``: see the module docstring.
    ``encode_seconds``: RGB -> YUV conversion + encoder open/encode/flush;
    ``decode_seconds``: decoder + YUV -> RGB conversion.
    ``params``: everything that defines the run (codec, preset, crf or
    target_kbps, gop, fps, coded size, FFmpeg options, per-packet sizes, ...).
    ``packets``: the encoder's packets (raw elementary stream, one per frame
    in low-delay mode); ``b"".join(packets)`` is a playable .264/.265/.obu
    stream of ``bitstream_bytes`` bytes.
    """

    bitstream_bytes: int
    payload_bytes: int
    decoded: np.ndarray
    encode_seconds: float
    decode_seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    packets: list[bytes] = field(default_factory=list, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.decoded.shape[0])

    @property
    def num_pixels(self) -> int:
        t, h, w = self.decoded.shape[:3]
        return int(t * h * w)

    @property
    def bpp(self) -> float:
        """Bits per pixel of ``bitstream_bytes`` over the *input* size (T*H*W)."""
        return 8.0 * self.bitstream_bytes / self.num_pixels

    @property
    def payload_bpp(self) -> float:
        return 8.0 * self.payload_bytes / self.num_pixels

    @property
    def kbps(self) -> float:
        """Average bitrate of ``bitstream_bytes`` in kbit/s at the clip's fps."""
        return 8.0 * self.bitstream_bytes * float(self.params["fps"]) / self.num_frames / 1000.0


# ---------------------------------------------------------------------------
# helpers


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 RGB 0-255, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames are empty: shape {frames.shape}")
    return frames


def _fps_fraction(fps: float | Fraction | int) -> Fraction:
    f = Fraction(fps).limit_denominator(1001 * 1000) if not isinstance(fps, Fraction) else fps
    if f <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return f


def _coded_size(h: int, w: int, min_side: int) -> tuple[int, int]:
    def up(n: int) -> int:
        n = max(n, min_side)
        return n + (n % 2)

    return up(h), up(w)


def _pad(frames: np.ndarray, hc: int, wc: int) -> np.ndarray:
    t, h, w, _ = frames.shape
    if (h, w) == (hc, wc):
        return frames
    return np.pad(frames, ((0, 0), (0, hc - h), (0, wc - w), (0, 0)), mode="edge")


def _rgb_to_yuv_frame(rgb: np.ndarray) -> av.VideoFrame:
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return vf.reformat(
        format="yuv420p", dst_colorspace=_COLORSPACE, dst_color_range=_COLOR_RANGE, interpolation=_SWS_FLAGS
    )


def _yuv_frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(
        format="rgb24", src_colorspace=_COLORSPACE, src_color_range=_COLOR_RANGE, interpolation=_SWS_FLAGS
    )


def yuv420_roundtrip(frames: np.ndarray) -> np.ndarray:
    """RGB -> yuv420p -> RGB with exactly the baselines' conversion, no coding.

    The PSNR of this against the input is an upper bound for every baseline.
    Odd sizes are padded/cropped like in :func:`encode_decode`.
    """
    frames = _check_frames(frames)
    t, h, w, _ = frames.shape
    hc, wc = _coded_size(h, w, 2)
    padded = _pad(frames, hc, wc)
    out = np.stack([_yuv_frame_to_rgb(_rgb_to_yuv_frame(f)) for f in padded])
    return np.ascontiguousarray(out[:, :h, :w])


# ---------------------------------------------------------------------------
# payload accounting


def _annexb_units(data: bytes) -> list[tuple[int, int, int]]:
    """Split an Annex B byte string into (start, payload_start, end) per NAL unit.

    ``start`` includes the start code (and any leading zero bytes), so the
    units tile ``data`` exactly from the first start code on.
    """
    pos = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        pos.append(i)
        i = data.find(b"\x00\x00\x01", i + 3)
    units = []
    for k, p in enumerate(pos):
        s = p
        while s > 0 and data[s - 1] == 0 and (k == 0 or s - 1 > pos[k - 1] + 2):
            s -= 1
        units.append([s, p + 3, None])
    for k in range(len(units)):
        units[k][2] = units[k + 1][0] if k + 1 < len(units) else len(data)
    if units:
        units[0][0] = 0  # bytes before the first start code (none in practice) go with the first unit
    return [tuple(u) for u in units]


def _leb128(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    for k in range(8):
        b = data[i + k]
        value |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            return value, i + k + 1
    raise ValueError(f"leb128 longer than 8 bytes at offset {i}")


def _av1_obus(data: bytes) -> list[tuple[int, int, int]]:
    """Split a low-overhead AV1 stream into (start, end, obu_type)."""
    out = []
    i = 0
    while i < len(data):
        hdr = data[i]
        obu_type = (hdr >> 3) & 0xF
        ext = (hdr >> 2) & 1
        has_size = (hdr >> 1) & 1
        j = i + 1 + ext
        if has_size:
            size, j = _leb128(data, j)
            end = j + size
        else:
            end = len(data)
        if end > len(data):
            raise ValueError(f"AV1 OBU at offset {i} claims {end - j} bytes, only {len(data) - j} left")
        out.append((i, end, obu_type))
        i = end
    return out


_DROP_H264 = {6}  # SEI
_DROP_HEVC = {39, 40}  # prefix / suffix SEI
_DROP_AV1 = {2, 5, 15}  # temporal delimiter, metadata, padding


def payload_packets(packets: Sequence[bytes], codec: str) -> list[bytes]:
    """Return ``packets`` with decoder-irrelevant units removed (see module docstring)."""
    spec = codec_spec(codec)
    out = []
    for pkt in packets:
        keep = []
        if spec.bitstream == "av1-obu":
            for s, e, typ in _av1_obus(pkt):
                if typ not in _DROP_AV1:
                    keep.append(pkt[s:e])
        else:
            for s, ps, e in _annexb_units(pkt):
                if ps >= e:
                    keep.append(pkt[s:e])
                    continue
                b = pkt[ps]
                typ = (b & 0x1F) if spec.bitstream == "annexb-h264" else ((b >> 1) & 0x3F)
                drop = _DROP_H264 if spec.bitstream == "annexb-h264" else _DROP_HEVC
                if typ not in drop:
                    keep.append(pkt[s:e])
        out.append(b"".join(keep))
    return out


# ---------------------------------------------------------------------------
# encode / decode


def _encoder_options(spec: CodecSpec, preset: str, crf: int | float | None, gop: int,
                     extra_params: str | None, abr: bool) -> dict[str, str]:
    opts: dict[str, str] = {"preset": str(preset)}
    if crf is not None:
        opts["crf"] = str(crf)
    if spec.key == "x265":
        params = f"bframes=0:keyint={gop}:scenecut=0:info=0:log-level=error"
        # GLVC_X265_PARAMS: x265 parameters for every baseline encode, e.g. "pools=none" (no
        # thread pool). With its pool, x265 (PyAV 18 wheels) crashed (SIGSEGV at the flush) in
        # 1 of 30 runs of the tests' sequence of short encodes, 0 of 40 with pools=none; the
        # tests set it.
        for more in (os.environ.get("GLVC_X265_PARAMS", "").strip(":"), extra_params):
            if more:
                params += ":" + more
        opts["x265-params"] = params
    elif spec.key == "svtav1":
        params = "pred-struct=1:scd=0"
        if abr:  # SVT-AV1: "VBR Rate control is currently not supported for LOW_DELAY, use CBR mode"
            params += ":rc=2"
        if extra_params:
            params += ":" + extra_params
        opts["svtav1-params"] = params
    else:
        opts["x264-params"] = "scenecut=0" + (":" + extra_params if extra_params else "")
    return opts


def _open_checked(enc: "av.CodecContext", opts: dict[str, str]) -> list[str]:
    """Open the encoder; FFmpeg only *warns* about unknown x26x/SVT params, so fail on those here."""
    import av.logging

    old = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture() as logs:
            enc.open()
    finally:
        av.logging.set_level(old)
    msgs = [m.strip() for _, _, m in logs]
    bad = [m for m in msgs if "Unknown option" in m or "Error parsing option" in m]
    if bad:
        raise ValueError(f"{enc.name} rejected options {opts}: {bad}")
    return msgs


def _decode(spec: CodecSpec, packets: Iterable[bytes]) -> list[av.VideoFrame]:
    dec = av.CodecContext.create(spec.decoder, "r")
    frames: list[av.VideoFrame] = []
    for data in packets:
        if data:
            frames.extend(dec.decode(av.Packet(data)))
    frames.extend(dec.decode(None))
    return frames


@contextlib.contextmanager
def scheduling_kept() -> Iterator[None]:
    """Give the calling thread its scheduling policy and priority back afterwards (Linux).

    SVT-AV1 (libSvtAv1Enc in PyAV 18), run as root, switches the thread that drives it to
    real-time SCHED_FIFO priority 99 and leaves it so. Every process started from that thread
    afterwards inherits it: in the test suite the app server and its clients then ran real-time
    on 2 cores, threads that spin while they wait starved the others, and a CI run stalled for
    over an hour. Restoring the policy after each encoder's use keeps it to the encoder's own
    threads, which end with it.
    """
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != (policy, param.sched_priority):
            os.sched_setscheduler(0, policy, param)


def encode_decode(
    frames: np.ndarray,
    fps: float | Fraction,
    codec: str = "x265",
    crf: int | float | None = None,
    target_kbps: float | None = None,
    preset: str | int | None = None,
    gop: int | None = None,
    threads: int | None = None,
    extra_params: str | None = None,
) -> BaselineResult:
    """Encode ``frames`` with a classic codec in low-delay mode and decode them back.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        fps: frame rate (for time stamps, ABR and ``kbps``).
        codec: ``"x264"``, ``"x265"`` or ``"svtav1"`` (aliases accepted).
        crf: constant-quality factor (x264/x265 0-51, SVT-AV1 1-63).  Default:
            the codec's default (23 / 28 / 35) when ``target_kbps`` is unset.
        target_kbps: average bitrate instead of CRF (exclusive with ``crf``).
        preset: encoder preset (x264/x265 names, SVT-AV1 0-13); default
            ``medium`` / ``medium`` / ``8``.
        gop: intra period in frames; default ``T`` (one I frame).
        threads: encoder thread count (FFmpeg default when None).
        extra_params: appended to ``x264-params`` / ``x265-params`` /
            ``svtav1-params`` (``key=value:key=value``); an option the
            encoder does not know raises ValueError.

    Returns:
        :class:`BaselineResult`; byte counts follow the module docstring's convention.
    """
    frames = _check_frames(frames)
    spec = codec_spec(codec)
    if crf is not None and target_kbps is not None:
        raise ValueError(f"give crf ({crf}) or target_kbps ({target_kbps}), not both")
    if crf is None and target_kbps is None:
        crf = spec.default_crf
    if crf is not None and not (spec.crf_min <= crf <= spec.crf_max):
        raise ValueError(f"crf {crf} outside {spec.key}'s range {spec.crf_min}-{spec.crf_max}")
    if target_kbps is not None and target_kbps <= 0:
        raise ValueError(f"target_kbps must be > 0, got {target_kbps}")
    t, h, w, _ = frames.shape
    gop = int(gop) if gop is not None else t
    if gop < 1:
        raise ValueError(f"gop must be >= 1, got {gop}")
    preset = str(preset if preset is not None else spec.default_preset)
    rate = _fps_fraction(fps)
    hc, wc = _coded_size(h, w, spec.min_side)
    padded = _pad(frames, hc, wc)
    opts = _encoder_options(spec, preset, crf, gop, extra_params, abr=target_kbps is not None)

    # SVT-AV1 switches the calling thread to real-time scheduling and leaves it so (scheduling_kept)
    with scheduling_kept():
        t0 = time.perf_counter()
        enc = av.CodecContext.create(spec.encoder, "w")
        enc.width, enc.height = wc, hc
        enc.pix_fmt = "yuv420p"
        enc.framerate = rate
        enc.time_base = 1 / rate
        enc.gop_size = gop
        enc.max_b_frames = 0
        enc.colorspace = _AVCOL_SPC_SMPTE170M
        enc.color_range = _AVCOL_RANGE_MPEG
        if target_kbps is not None:
            enc.bit_rate = int(round(target_kbps * 1000))
        if threads is not None:
            enc.thread_count = int(threads)
        enc.options = opts
        log = _open_checked(enc, opts)
        packets: list[bytes] = []
        pts: list[int | None] = []
        keyframes: list[bool] = []

        def take(pkts):
            for p in pkts:
                packets.append(bytes(p))
                pts.append(p.pts)
                keyframes.append(bool(p.is_keyframe))

        for i, f in enumerate(padded):
            vf = _rgb_to_yuv_frame(f)
            vf.pts = i
            take(enc.encode(vf))
        take(enc.encode(None))
        encode_seconds = time.perf_counter() - t0
        del enc

    t1 = time.perf_counter()
    dec_frames = _decode(spec, packets)
    if len(dec_frames) != t:
        raise RuntimeError(
            f"{spec.decoder} decoded {len(dec_frames)} frames from {len(packets)} {spec.encoder} packets, expected {t}"
        )
    decoded = np.stack([_yuv_frame_to_rgb(f) for f in dec_frames])
    decode_seconds = time.perf_counter() - t1
    if decoded.shape[1:3] != (hc, wc):
        raise RuntimeError(f"decoded frames are {decoded.shape[1:3]}, coded size was {(hc, wc)}")
    decoded = np.ascontiguousarray(decoded[:, :h, :w])

    bitstream_bytes = sum(len(p) for p in packets)
    payload_bytes = sum(len(p) for p in payload_packets(packets, spec.key))
    params = {
        "codec": spec.key,
        "encoder": spec.encoder,
        "decoder": spec.decoder,
        "preset": preset,
        "crf": crf,
        "target_kbps": target_kbps,
        "gop": gop,
        "fps": float(rate),
        "input_size": (h, w),
        "coded_size": (hc, wc),
        "pix_fmt": "yuv420p",
        "color": "BT.601 limited range, swscale bicubic+accurate_rnd+full_chroma",
        "options": dict(opts),
        "max_b_frames": 0,
        "threads": threads,
        "num_packets": len(packets),
        "packet_bytes": [len(p) for p in packets],
        "packet_pts": pts,
        "keyframes": [i for i, k in enumerate(keyframes) if k],
        "byte_count": "sum of encoder packet sizes (raw elementary stream, no container)",
        "encoder_log": log,
    }
    return BaselineResult(
        bitstream_bytes=bitstream_bytes,
        payload_bytes=payload_bytes,
        decoded=decoded,
        encode_seconds=encode_seconds,
        decode_seconds=decode_seconds,
        params=params,
        packets=packets,
    )


def _count(result: BaselineResult, count: str) -> int:
    if count == "bitstream":
        return result.bitstream_bytes
    if count == "payload":
        return result.payload_bytes
    raise ValueError(f"count must be 'bitstream' or 'payload', got {count!r}")


def match_bitrate(
    frames: np.ndarray,
    fps: float | Fraction,
    codec: str,
    target_bytes: int,
    count: str = "bitstream",
    crf_range: tuple[int, int] | None = None,
    **kwargs: Any,
) -> tuple[BaselineResult, int]:
    """Find the integer CRF whose stream is closest to ``target_bytes`` without exceeding it.

    A guided search over the codec's CRF range (or ``crf_range``), assuming size falls as CRF
    rises: it starts at the codec's default CRF and predicts the next CRF from the sizes seen
    (log size is close to linear in CRF: x264/x265 halve the size about every 6 CRF steps,
    :data:`CRF_STEPS_PER_HALVING`), always inside the bracket the encodes so far leave open, and
    stops when two adjacent CRFs bracket the target (or an end of the range settles it). Every
    encode made is kept and the final pick is, among them, the largest size <= target (lowest
    CRF on ties), or - when even the highest CRF overshoots - the smallest size (check
    ``result.bitstream_bytes > target_bytes``). Same answer as a bisection when size falls
    with CRF, in about half the encodes (typically 3-4; a bisection over 0-51 made 7-9, with
    the slowest, CRF 0, among them). ``count`` selects ``"bitstream"`` or ``"payload"`` bytes.
    ``kwargs`` go to :func:`encode_decode` (preset, gop, threads, extra_params).

    Returns ``(result, crf)``; ``result.params["search"]`` lists the (crf, bytes) pairs tried.
    """
    spec = codec_spec(codec)
    if target_bytes <= 0:
        raise ValueError(f"target_bytes must be > 0, got {target_bytes}")
    lo, hi = crf_range if crf_range is not None else (spec.crf_min, spec.crf_max)
    if not (spec.crf_min <= lo <= hi <= spec.crf_max):
        raise ValueError(f"crf_range {(lo, hi)} outside {spec.key}'s {spec.crf_min}-{spec.crf_max}")
    tried: dict[int, BaselineResult] = {}

    def size(c: int) -> int:
        if c not in tried:
            tried[c] = encode_decode(frames, fps, codec=spec.key, crf=c, **kwargs)
        return _count(tried[c], count)

    crf, width_before = min(max(spec.default_crf, lo), hi), None
    while True:
        size(crf)
        fitting = [c for c in tried if _count(tried[c], count) <= target_bytes]
        over = [c for c in tried if _count(tried[c], count) > target_bytes]
        first_fit = min(fitting) if fitting else hi + 1  # the open bracket: (last_over, first_fit)
        last_over = max(over) if over else lo - 1
        if first_fit - last_over <= 1 or first_fit == lo or last_over == hi:
            break
        width = first_fit - last_over
        # a guided step that did not halve the bracket is followed by a bisection: never many encodes
        halve = width_before is not None and over and fitting and width > width_before / 2
        crf = (last_over + first_fit) // 2 if halve else _next_crf(tried, count, target_bytes, last_over, first_fit, lo, hi)
        width_before = width
    fits = [c for c in tried if _count(tried[c], count) <= target_bytes]
    if fits:
        best = max(fits, key=lambda c: (_count(tried[c], count), -c))
    else:
        best = min(tried, key=lambda c: (_count(tried[c], count), c))
    result = tried[best]
    result.params["search"] = sorted((c, _count(r, count)) for c, r in tried.items())
    result.params["target_bytes"] = int(target_bytes)
    result.params["target_count"] = count
    return result, best


CRF_STEPS_PER_HALVING = 6.0
"""CRF steps that halve a stream's size, the first guess of :func:`match_bitrate`'s search (x264/x265's
rule of thumb; the search then uses the slope it measures)."""


def _next_crf(tried: dict[int, "BaselineResult"], count: str, target: int, last_over: int, first_fit: int,
              lo: int, hi: int) -> int:
    """The CRF to try next, strictly inside the open bracket (last_over, first_fit) and [lo, hi].

    Bracketed: where log size reaches the target on the line between the bracket's ends. One side
    only: from the tried CRF nearest the bracket, with the slope between the two nearest tried CRFs
    (held between halving every 2 and every 12 steps, so noise cannot send it far), one step
    beyond the prediction so that the next encode tends to close the bracket."""
    floor, ceiling = max(last_over + 1, lo), min(first_fit - 1, hi)
    log_size = {c: math.log2(max(_count(r, count), 1)) for c, r in tried.items()}
    goal = math.log2(target)
    if last_over in log_size and first_fit in log_size:
        a, b = last_over, first_fit
        predicted = a + (goal - log_size[a]) / (log_size[b] - log_size[a]) * (b - a) if log_size[b] < log_size[a] else (a + b) / 2
        return min(max(round(predicted), floor), ceiling)
    edge = last_over if last_over in log_size else first_fit
    others = sorted((c for c in log_size if c != edge), key=lambda c: abs(c - edge))
    slope = -1.0 / CRF_STEPS_PER_HALVING
    if others and log_size[others[0]] != log_size[edge]:
        slope = (log_size[edge] - log_size[others[0]]) / (edge - others[0])
    slope = min(max(slope, -1 / 2), -1 / 12)  # log2 bytes per CRF step
    predicted = edge + (goal - log_size[edge]) / slope
    step = math.ceil(predicted) + 1 if edge == last_over else math.floor(predicted) - 1
    return min(max(step, floor), ceiling)


def crf_sweep(
    frames: np.ndarray,
    fps: float | Fraction,
    codec: str,
    crfs: Iterable[int | float],
    **kwargs: Any,
) -> list[BaselineResult]:
    """:func:`encode_decode` at each CRF in ``crfs`` (in the given order); ``kwargs`` pass through."""
    return [encode_decode(frames, fps, codec=codec, crf=c, **kwargs) for c in crfs]
