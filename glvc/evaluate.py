"""Rate-distortion evaluation of GLVC against classic codecs: ``python -m glvc eval``.

::

    python -m glvc eval data/val_set --glvc-rates 0 16 32 48 63 --codecs glvc x264 x265 --out docs/results

Inputs
------
Each positional argument is a clip or a folder of clips:

* a video file (anything FFmpeg reads) is one clip, read with :func:`glvc.video_io.read_video`;
* a folder holding image frames (``*.png``, ``*.jpg``, ...) is one clip, frames in name order
  (e.g. ``data/val_set/bikes``); its frame rate comes from ``manifest.json`` (the validation set's,
  in the folder or its parent, ``clips[].dir``/``fps``), else ``--fps`` (default 25);
* any other folder is searched one level deep for such clips, in ``manifest.json`` order when there
  is one (e.g. ``data/val_set`` gives bikes and carphone).

``--max-frames`` (default 33) keeps the first frames; ``--max-height`` downscales taller clips
(area filter, same aspect ratio, even sizes), before any codec sees them.

Rate points
-----------
* GLVC: the quality indices ``--glvc-rates`` (default 0 16 32 48 63), one full encode
  (:meth:`GLVC.encode`, ``reconstruct=False``) and one full decode (:meth:`GLVC.decode`) per point;
  metrics are computed on the decoder's output.
* Classic codecs (x264, x265, SVT-AV1 via :mod:`glvc.baselines`, low delay, one I frame, default
  presets), ``--baseline-mode``:

  - ``span`` (default): per clip, bisection over the CRF finds the largest CRF whose stream is still
    at least as large as GLVC's largest point and the smallest CRF whose stream is at most GLVC's
    smallest point; ``--baseline-points`` (default 5) CRFs evenly spaced between the two (inclusive)
    are then evaluated, so every baseline curve brackets GLVC's bpp range on that clip. The search
    encodes are not scored. Without GLVC in ``--codecs`` the fixed :data:`FALLBACK_CRFS` are used.
  - ``match``: for every GLVC point, :func:`glvc.baselines.match_bitrate` picks the integer CRF whose
    stream is the largest one not exceeding GLVC's bytes (equal-size pairs; integer CRF steps).

  ``--crf x264=20,26,32`` fixes a codec's CRFs and skips the search for it.

Byte counting (``--count``)
---------------------------
GLVC: the whole ``.glvc`` file (header, unit framing and payloads). Baselines, ``payload``
(default): the elementary stream without the units a decoder does not need (x264's ~0.6 kB version
SEI, HEVC SEI, AV1 temporal delimiters/metadata), parameter sets and sequence headers kept; no
container. ``bitstream``: every byte the encoder emitted. ``total_bytes`` always holds the latter
(for GLVC: the file size). ``bpp = 8 * bytes / (frames * width * height)`` of the evaluated clip,
``kbps = 8 * bytes * fps / frames / 1000``.

Metrics and unavailability
--------------------------
:func:`glvc.metrics.compute_all` (``psnr`` = PSNR-RGB, ``psnr_y``, ``ms_ssim``, ``vmaf``,
``lpips`` (AlexNet), ``dists``, ``cvvdp`` = ColorVideoVDP in JOD on the ``standard_fhd`` display model,
at the clip's frame rate; about 1.8 CPU-seconds per 426x240 frame, so drop it with ``--metrics`` for
a quick run on a CPU). A metric that cannot be computed honestly (e.g. LPIPS/DISTS without
ImageNet backbone weights) is an empty cell with the reason in ``<metric>_unavailable``; nothing is
ever filled in. Frames under 161 px fall back from MS-SSIM to single-scale SSIM; the column
``ms_ssim_variant`` then names what was computed. Encode/decode fps are wall-clock frames per
second of the whole encode/decode call (GLVC: tokenizer + latent codec + bitstream; baselines:
RGB->YUV conversion + encoder, decoder + YUV->RGB), on whatever threads torch and FFmpeg use by default.

BD-rate
-------
Bjontegaard deltas with the ``bjontegaard`` package, Akima interpolation
(``bd_rate``/``bd_psnr(..., method="akima", require_matching_points=False)``), rate = bpp,
against each anchor (x265 and x264 when evaluated), per clip and metric:

* **BD-rate** (%): average bitrate difference at equal quality over the overlapping quality range;
  **negative = the tested codec needs fewer bits** (better). LPIPS and DISTS are lower-is-better:
  they are negated before interpolation so that every curve rises with rate, which keeps the same
  sign convention for all metrics.
* **BD-metric**: average metric difference (test - anchor) at equal rate over the overlapping
  log-rate range, in the metric's own units; positive is better for PSNR/MS-SSIM/VMAF/ColorVideoVDP,
  negative is better for LPIPS/DISTS.
* Before interpolation each curve is reduced to its rate-quality Pareto front (points that do not
  improve quality over a cheaper point are dropped and counted), since Akima needs a monotone curve.
  A delta needs >= 2 points per curve; with no overlap it is "n/a" with the ranges stated;
  overlap below 75 % of the union is flagged.

Outputs (in ``--out``)
----------------------
``eval.csv`` / ``eval.json`` (a row per clip, codec and rate point; the JSON also holds the
configuration, the BD entries and the unavailability reasons), ``bd_rate.md`` (BD tables),
``results.md`` (all points + BD tables + notes), ``rd_<metric>.png`` (one RD plot per available
metric, a panel per clip). ``rows.partial.jsonl`` holds finished rows while running (``--resume``
reuses them) and is removed at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .defaults import default_model, local_max_quality, repo_relative
from .progress import Progress, is_terminal

CODEC_CHOICES = ("glvc", "x264", "x265", "svtav1")
DEFAULT_CODECS = ("glvc", "x264", "x265")
DEFAULT_GLVC_RATES = (0, 16, 32, 48, 63)
BD_ANCHORS = ("x265", "x264")
METRIC_KEYS = ("psnr", "psnr_y", "ms_ssim", "vmaf", "lpips", "dists", "cvvdp")
LOWER_IS_BETTER = frozenset({"lpips", "dists", "lpips_alex", "lpips_vgg"})
METRIC_LABELS = {
    "psnr": "PSNR-RGB (dB)",
    "psnr_y": "PSNR-Y (dB)",
    "ms_ssim": "MS-SSIM",
    "vmaf": "VMAF",
    "lpips": "LPIPS-Alex",
    "lpips_alex": "LPIPS-Alex",
    "lpips_vgg": "LPIPS-VGG",
    "dists": "DISTS",
    "cvvdp": "ColorVideoVDP (JOD, standard_fhd)",
}
CODEC_LABELS = {"glvc": "GLVC", "x264": "x264", "x265": "x265", "svtav1": "SVT-AV1"}
FALLBACK_CRFS = {"x264": (22, 27, 32, 37, 42), "x265": (22, 27, 32, 37, 42), "svtav1": (30, 38, 46, 54, 62)}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mpg", ".mpeg", ".y4m", ".flv", ".ogv")
MIN_OVERLAP = 0.75
PARTIAL_NAME = "rows.partial.jsonl"

# column order of eval.csv (metric columns are inserted per --metrics)
_LEAD_COLUMNS = [
    "clip", "codec", "rate_param", "rate", "frames", "width", "height", "fps",
    "bytes", "total_bytes", "byte_count", "bpp", "kbps",
]
_TAIL_COLUMNS = ["encode_seconds", "decode_seconds", "encode_fps", "decode_fps", "metrics_seconds"]


# ---------------------------------------------------------------------------------------------
# clips


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


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class EvalConfig:
    codecs: tuple[str, ...] = DEFAULT_CODECS
    glvc_rates: tuple[int, ...] = DEFAULT_GLVC_RATES
    baseline_mode: str = "span"  # "span" | "match"
    baseline_points: int = 5
    crfs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # fixed CRFs per codec
    count: str = "payload"  # baselines: "payload" | "bitstream"
    metrics: tuple[str, ...] = METRIC_KEYS
    max_frames: int | None = 33
    max_height: int | None = None
    fps: float = 25.0  # for frame folders without a manifest
    warmup: bool = True
    resume: bool = False
    device: str | None = None  # metrics device (default: CUDA if available, else CPU)
    progress: bool = True

    def validate(self) -> None:
        bad = [c for c in self.codecs if c not in CODEC_CHOICES]
        if bad:
            raise ValueError(f"unknown codec(s) {bad}; choose from {list(CODEC_CHOICES)}")
        if not self.codecs:
            raise ValueError("no codecs to evaluate")
        if self.baseline_mode not in ("span", "match"):
            raise ValueError(f"baseline mode must be 'span' or 'match', got {self.baseline_mode!r}")
        if self.baseline_mode == "match" and "glvc" not in self.codecs and any(c not in self.crfs for c in self.codecs):
            raise ValueError("--baseline-mode match needs glvc in --codecs (it matches GLVC's bytes)")
        if self.baseline_points < 2:
            raise ValueError(f"--baseline-points must be >= 2, got {self.baseline_points}")
        if self.count not in ("payload", "bitstream"):
            raise ValueError(f"--count must be 'payload' or 'bitstream', got {self.count!r}")
        if "glvc" in self.codecs and not self.glvc_rates:
            raise ValueError("no GLVC rates given")
        if "glvc" in self.codecs:
            from .bitstream import MAX_QUALITY

            _check_glvc_rates(self.glvc_rates, MAX_QUALITY, "the .glvc format's")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1, got {self.max_frames}")


def _check_glvc_rates(rates: Sequence[int], top: int, whose: str) -> None:
    bad = [q for q in rates if not 0 <= q <= top]
    if bad:
        raise ValueError(f"--glvc-rates {' '.join(map(str, bad))}: quality indices run from 0 to {top} ({whose} highest)")


def parse_crf_overrides(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x264=20,26,32", "x265=24,30"]`` -> ``{"x264": (20, 26, 32), "x265": (24, 30)}``."""
    from .baselines import codec_spec

    out: dict[str, tuple[int, ...]] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--crf takes CODEC=CRF,CRF,... (e.g. x264=20,26,32), got {item!r}")
        codec, values = item.split("=", 1)
        spec = codec_spec(codec.strip())
        try:
            crfs = tuple(int(v) for v in values.replace(" ", ",").split(",") if v)
        except ValueError:
            raise ValueError(f"--crf {item!r}: CRFs must be integers") from None
        for c in crfs:
            if not spec.crf_min <= c <= spec.crf_max:
                raise ValueError(f"--crf {item!r}: {c} is outside {spec.key}'s range {spec.crf_min}-{spec.crf_max}")
        if len(crfs) < 1:
            raise ValueError(f"--crf {item!r}: no CRFs")
        out[spec.key] = crfs
    return out


# ---------------------------------------------------------------------------------------------
# rows


def _metric_fields(results: dict, keys: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key in keys:
        mv = results[key]
        row[key] = None if mv.value is None else float(mv.value)
        row[f"{key}_unavailable"] = mv.unavailable_reason
    if "ms_ssim" in results:
        row["ms_ssim_variant"] = results["ms_ssim"].name
    return row


def _columns(metrics: Sequence[str]) -> list[str]:
    cols = list(_LEAD_COLUMNS)
    for m in metrics:
        cols.append(m)
    if "ms_ssim" in metrics:
        cols.append("ms_ssim_variant")
    for m in metrics:
        cols.append(f"{m}_unavailable")
    cols += _TAIL_COLUMNS + ["crf_search", "notes"]
    return cols


def _row_key(row: dict) -> tuple:
    return (row["clip"], row["codec"], row["rate_param"], int(row["rate"]), int(row["frames"]), int(row["width"]), int(row["height"]))


def _score(clip: Clip, decoded: np.ndarray, cfg: EvalConfig) -> tuple[dict, float]:
    from .metrics import compute_all

    start = time.perf_counter()
    results = compute_all(clip.frames, decoded, metrics=cfg.metrics, device=cfg.device, fps=clip.fps)
    return _metric_fields(results, cfg.metrics), time.perf_counter() - start


def _base_row(clip: Clip, codec: str, rate_param: str, rate: int, counted: int, total: int, count_desc: str) -> dict:
    pixels = clip.num_frames * clip.width * clip.height
    return {
        "clip": clip.name,
        "codec": codec,
        "rate_param": rate_param,
        "rate": int(rate),
        "frames": clip.num_frames,
        "width": clip.width,
        "height": clip.height,
        "fps": float(clip.fps),
        "bytes": int(counted),
        "total_bytes": int(total),
        "byte_count": count_desc,
        "bpp": 8.0 * counted / pixels,
        "kbps": 8.0 * counted * float(clip.fps) / clip.num_frames / 1000.0,
    }


class _Bar:
    """Outer progress over (clip, codec, rate) jobs; total grows as CRFs are chosen. A tqdm bar on a
    terminal; written to a file or a pipe, one plain line per finished point (no escape codes)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.total, self.n, self.text = total, 0, ""
        if enabled and is_terminal(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="eval", unit=" points", file=sys.stderr, dynamic_ncols=True)

    def describe(self, text: str) -> None:
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def add_total(self, n: int) -> None:
        self.total += n
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def step(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"eval: {self.n}/{self.total} points ({self.text})", file=sys.stderr, flush=True)

    def inner(self, desc: str):
        """A transient display fed by GLVC's (done, total) progress callback; returns (callback, close)."""
        if not self.enabled:
            return None, lambda: None
        progress = Progress(desc.strip(), leave=False)
        return progress, progress.close

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _glvc_row(model, clip: Clip, quality: int, cfg: EvalConfig, bar: _Bar) -> dict:
    callback, close = bar.inner(f"  GLVC q{quality} encode")
    try:
        start = time.perf_counter()
        enc = model.encode(clip.frames, clip.fps, quality, reconstruct=False, progress=callback)
        encode_seconds = time.perf_counter() - start
    finally:
        close()
    callback, close = bar.inner(f"  GLVC q{quality} decode")
    try:
        start = time.perf_counter()
        dec = model.decode(enc.bitstream, progress=callback)
        decode_seconds = time.perf_counter() - start
    finally:
        close()
    if dec.frames.shape != clip.frames.shape:
        raise RuntimeError(f"GLVC decoded {dec.frames.shape}, expected {clip.frames.shape}")
    n = len(enc.bitstream)
    row = _base_row(clip, "glvc", "quality", quality, n, n, ".glvc file (header + units)")
    metrics, metric_seconds = _score(clip, dec.frames, cfg)
    row.update(metrics)
    row.update(
        encode_seconds=encode_seconds,
        decode_seconds=decode_seconds,
        encode_fps=clip.num_frames / encode_seconds,
        decode_fps=clip.num_frames / decode_seconds,
        metrics_seconds=metric_seconds,
        stage_seconds={"encode": dict(enc.report.timings), "decode": dict(dec.report.timings)},
    )
    return row


def _baseline_row(clip: Clip, codec: str, crf: int, result, cfg: EvalConfig, search: list | None) -> dict:
    counted = result.payload_bytes if cfg.count == "payload" else result.bitstream_bytes
    desc = (
        "elementary stream without SEI/metadata units (parameter sets kept)" if cfg.count == "payload" else "all encoder packets (raw elementary stream)"
    )
    row = _base_row(clip, codec, "crf", crf, counted, result.bitstream_bytes, desc)
    metrics, metric_seconds = _score(clip, result.decoded, cfg)
    row.update(metrics)
    row.update(
        encode_seconds=result.encode_seconds,
        decode_seconds=result.decode_seconds,
        encode_fps=clip.num_frames / result.encode_seconds,
        decode_fps=clip.num_frames / result.decode_seconds,
        metrics_seconds=metric_seconds,
        preset=result.params.get("preset"),
        crf_search=search,
    )
    return row


class _CrfCache:
    """Encodes of one clip with one codec, by CRF (the search's encodes are reused by the sweep)."""

    def __init__(self, clip: Clip, codec: str, count: str):
        from .baselines import codec_spec

        self.clip, self.codec, self.count = clip, codec, count
        self.spec = codec_spec(codec)
        self.results: dict[int, Any] = {}

    def get(self, crf: int):
        from .baselines import encode_decode

        if crf not in self.results:
            self.results[crf] = encode_decode(self.clip.frames, self.clip.fps, codec=self.codec, crf=crf)
        return self.results[crf]

    def size(self, crf: int) -> int:
        r = self.get(crf)
        return r.payload_bytes if self.count == "payload" else r.bitstream_bytes

    def largest_crf_at_least(self, target: int) -> int:
        """Largest CRF whose size is >= target (sizes fall as CRF rises); crf_min when none reaches it."""
        lo, hi = self.spec.crf_min, self.spec.crf_max
        if self.size(lo) < target:
            return lo
        if self.size(hi) >= target:
            return hi
        while hi - lo > 1:  # size(lo) >= target > size(hi)
            mid = (lo + hi) // 2
            if self.size(mid) >= target:
                lo = mid
            else:
                hi = mid
        return lo

    def smallest_crf_at_most(self, target: int) -> int:
        """Smallest CRF whose size is <= target; crf_max when even that overshoots."""
        lo, hi = self.spec.crf_min, self.spec.crf_max
        if self.size(hi) > target:
            return hi
        if self.size(lo) <= target:
            return lo
        while hi - lo > 1:  # size(lo) > target >= size(hi)
            mid = (lo + hi) // 2
            if self.size(mid) <= target:
                hi = mid
            else:
                lo = mid
        return hi

    def searched(self) -> list[list[int]]:
        return sorted([c, self.size(c)] for c in self.results)


def span_crfs(top: int, bottom: int, n: int, crf_min: int, crf_max: int) -> list[int]:
    """``n`` integer CRFs evenly spaced over [top, bottom] (widened inside the codec's range when
    the interval holds fewer than ``n`` integers)."""
    top, bottom = min(top, bottom), max(top, bottom)
    while bottom - top + 1 < n and (top > crf_min or bottom < crf_max):
        if top > crf_min:
            top -= 1
        if bottom - top + 1 < n and bottom < crf_max:
            bottom += 1
    return sorted({int(round(v)) for v in np.linspace(top, bottom, n)})


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class EvalResult:
    rows: list[dict]
    bd: list[dict]
    files: dict[str, str]
    config: dict
    elapsed_seconds: float


def _load_model(model):
    from .pipeline import GLVC

    if model is None:
        model = default_model()
    if isinstance(model, str):
        return GLVC.from_pretrained(model), repo_relative(model)
    return model, getattr(model, "name_or_path", "<in-memory model>")


def run_eval(
    clips: Sequence[str],
    out_dir: str,
    cfg: EvalConfig | None = None,
    model=None,
    command: str | None = None,
) -> EvalResult:
    """Evaluate ``clips`` (paths, see the module docstring) and write all outputs into ``out_dir``.

    ``model``: a :class:`~glvc.pipeline.GLVC`, a model folder / Hub id, or None for the default model.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    if "glvc" in cfg.codecs:  # checked before the model loads (a local folder's config is read alone)
        name = default_model() if model is None else model
        top = local_max_quality(name) if isinstance(name, str) else name.max_quality
        if top is not None:
            _check_glvc_rates(cfg.glvc_rates, top, "this model's")
    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    sources = discover_clips(clips)
    os.makedirs(out_dir, exist_ok=True)
    partial_path = os.path.join(out_dir, PARTIAL_NAME)
    cached: dict[tuple, dict] = {}
    if cfg.resume and os.path.isfile(partial_path):
        with open(partial_path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    cached[_row_key(row)] = row
    elif os.path.exists(partial_path):
        os.remove(partial_path)

    glvc_model = model_name = None
    fingerprint = None
    if "glvc" in cfg.codecs:
        glvc_model, model_name = _load_model(model)
        fingerprint = glvc_model.fingerprint.hex()
        # a cached GLVC row only counts when it came from this very model
        cached = {k: r for k, r in cached.items() if r["codec"] != "glvc" or r.get("model_fingerprint") == fingerprint}

    baselines = [c for c in cfg.codecs if c != "glvc"]
    per_clip = (len(cfg.glvc_rates) if glvc_model else 0) + len(baselines) * (
        len(cfg.glvc_rates) if cfg.baseline_mode == "match" else cfg.baseline_points
    )
    bar = _Bar(per_clip * len(sources), cfg.progress)
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        with open(partial_path, "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
        bar.step()

    try:
        for src in sources:
            clip = load_clip(src, cfg.max_frames, cfg.max_height, cfg.fps)
            glvc_rows: list[dict] = []
            if glvc_model is not None:
                if cfg.warmup and not all(
                    (clip.name, "glvc", "quality", int(q), clip.num_frames, clip.width, clip.height) in cached for q in cfg.glvc_rates
                ):
                    bar.describe(f"{clip.name}: GLVC warm-up")
                    warm = clip.frames[: min(5, clip.num_frames)]
                    model_out = glvc_model.encode(warm, clip.fps, cfg.glvc_rates[0], reconstruct=False)
                    glvc_model.decode(model_out.bitstream)
                for q in cfg.glvc_rates:
                    key = (clip.name, "glvc", "quality", int(q), clip.num_frames, clip.width, clip.height)
                    bar.describe(f"{clip.name}: GLVC q{q}")
                    if key in cached:
                        row = cached[key]
                    else:
                        row = _glvc_row(glvc_model, clip, int(q), cfg, bar)
                        row["model"] = model_name
                        row["model_fingerprint"] = fingerprint
                    glvc_rows.append(row)
                    keep(row)
            for codec in baselines:
                cache = _CrfCache(clip, codec, cfg.count)
                spec = cache.spec
                search = None
                if codec in cfg.crfs:
                    crfs = list(cfg.crfs[codec])
                    mode = "fixed"
                elif cfg.baseline_mode == "match":
                    mode = "match"
                    crfs = []
                elif glvc_rows:
                    mode = "span"
                    sizes = [r["bytes"] for r in glvc_rows]
                    bar.describe(f"{clip.name}: {codec} CRF search")
                    top = cache.largest_crf_at_least(max(sizes))
                    bottom = cache.smallest_crf_at_most(min(sizes))
                    crfs = span_crfs(top, bottom, cfg.baseline_points, spec.crf_min, spec.crf_max)
                    search = cache.searched()
                else:
                    mode = "fallback"
                    crfs = list(FALLBACK_CRFS[codec])
                if mode == "match":
                    from .baselines import match_bitrate

                    chosen = []
                    for g in glvc_rows:
                        bar.describe(f"{clip.name}: {codec} matching GLVC q{g['rate']}")
                        result, crf = match_bitrate(clip.frames, clip.fps, codec, g["bytes"], count=cfg.count)
                        cache.results.setdefault(crf, result)
                        chosen.append((crf, [list(p) for p in result.params["search"]], g["rate"]))
                    seen = set()
                    todo = []
                    for crf, srch, q in chosen:
                        if crf not in seen:
                            seen.add(crf)
                            todo.append((crf, srch, q))
                    bar.add_total(len(todo) - len(glvc_rows))
                else:
                    bar.add_total(len(crfs) - (len(cfg.glvc_rates) if cfg.baseline_mode == "match" else cfg.baseline_points))
                    todo = [(c, search, None) for c in crfs]
                for crf, srch, matched_q in todo:
                    key = (clip.name, codec, "crf", int(crf), clip.num_frames, clip.width, clip.height)
                    bar.describe(f"{clip.name}: {codec} crf {crf}")
                    if key in cached:
                        row = cached[key]
                    else:
                        row = _baseline_row(clip, codec, crf, cache.get(crf), cfg, srch)
                        row["crf_mode"] = mode
                        if matched_q is not None:
                            row["notes"] = f"CRF matched to GLVC q{matched_q} bytes"
                    keep(row)
                cache.results.clear()
    finally:
        bar.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bd = compute_bd(rows, cfg.metrics, anchors=[a for a in BD_ANCHORS if a in cfg.codecs])
    config = _config_record(cfg, sources, model_name, fingerprint, command)
    elapsed = time.perf_counter() - t_start
    config["cpu_seconds_this_run"] = _cpu_seconds() - cpu_start
    config["resumed_rows"] = sum(1 for r in rows if _row_key(r) in cached)
    files = write_outputs(out_dir, rows, bd, cfg, config, elapsed)
    if os.path.exists(partial_path):
        os.remove(partial_path)
    return EvalResult(rows, bd, files, config, elapsed)


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads, FFmpeg included)."""
    t = os.times()
    return t.user + t.system


def _json_default(obj):
    if isinstance(obj, Fraction):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _config_record(cfg: EvalConfig, sources: Sequence[ClipSource], model_name, fingerprint, command) -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("av", "bjontegaard", "vmaf_torch", "lpips", "matplotlib"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # pragma: no cover - optional
            versions[mod] = None
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "clips": [{"name": s.name, "path": repo_relative(s.path), "kind": s.kind} for s in sources],
        "codecs": list(cfg.codecs),
        "glvc_rates": list(cfg.glvc_rates) if "glvc" in cfg.codecs else [],
        "model": model_name,
        "model_fingerprint": fingerprint,
        "baseline_mode": cfg.baseline_mode,
        "baseline_points": cfg.baseline_points,
        "fixed_crfs": {k: list(v) for k, v in cfg.crfs.items()},
        "baseline_setup": "low delay (no B-frames), one I frame, scene-cut off, default presets "
        "(x264/x265 medium, SVT-AV1 8), yuv420p BT.601 limited range, FFmpeg default threads",
        "byte_count": cfg.count,
        "metrics": list(cfg.metrics),
        "cvvdp_display": _cvvdp_display() if "cvvdp" in cfg.metrics else None,
        "max_frames": cfg.max_frames,
        "max_height": cfg.max_height,
        "warmup": cfg.warmup,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
            "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
            "nice": os.nice(0),
        },
        "versions": versions,
        "bd_convention": "bjontegaard Akima; rate = bpp; BD-rate % negative = fewer bits at equal quality (better); "
        "LPIPS/DISTS negated before interpolation; BD-metric = mean (test - anchor) at equal rate in metric units",
    }


# ---------------------------------------------------------------------------------------------
# Bjontegaard deltas


def pareto_front(rates: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Points sorted by rate keeping only those whose (higher-is-better) value beats every cheaper
    point. Returns (rates, values, number dropped)."""
    pts = sorted(zip(rates, values))
    keep_r, keep_v = [], []
    for r, v in pts:
        if keep_r and r <= keep_r[-1]:
            if v > keep_v[-1]:  # same rate, better value: replace
                keep_v[-1] = v
            continue
        if not keep_v or v > keep_v[-1]:
            keep_r.append(r)
            keep_v.append(v)
    return np.asarray(keep_r, float), np.asarray(keep_v, float), len(pts) - len(keep_r)


def bd_pair(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]], lower_is_better: bool) -> dict:
    """BD-rate (%) and BD-metric between two (rate, metric) point sets, see the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import bjontegaard as bd

    sign = -1.0 if lower_is_better else 1.0
    ra, qa, drop_a = pareto_front([p[0] for p in anchor], [sign * p[1] for p in anchor])
    rt, qt, drop_t = pareto_front([p[0] for p in test], [sign * p[1] for p in test])
    out: dict[str, Any] = {
        "anchor_points": int(len(ra)),
        "test_points": int(len(rt)),
        "dropped_points": {"anchor": drop_a, "test": drop_t},
        "bd_rate": None,
        "bd_metric": None,
        "quality_overlap": None,
        "rate_overlap": None,
        "bd_rate_note": None,
        "bd_metric_note": None,
    }
    if len(ra) < 2 or len(rt) < 2:
        note = f"needs >= 2 monotone points per curve (anchor {len(ra)}, test {len(rt)})"
        out["bd_rate_note"] = out["bd_metric_note"] = note
        return out

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        union = max(a.max(), b.max()) - min(a.min(), b.min())
        inter = min(a.max(), b.max()) - max(a.min(), b.min())
        return max(inter, 0.0) / union if union > 0 else 0.0

    def rng(v: np.ndarray) -> str:
        lo, hi = sorted((sign * v.min(), sign * v.max()))
        return f"{lo:.4g}-{hi:.4g}"

    q_ov = overlap(qa, qt)
    r_ov = overlap(np.log10(ra), np.log10(rt))
    out["quality_overlap"], out["rate_overlap"] = q_ov, r_ov
    # (key, bjontegaard function, scale of its value, overlap it needs, note when there is none, what overlaps)
    measures = (
        ("bd_rate", bd.bd_rate, 1.0, q_ov, f"no quality overlap (anchor {rng(qa)}, test {rng(qt)})", "quality ranges"),
        ("bd_metric", bd.bd_psnr, sign, r_ov,
         f"no rate overlap (anchor {ra.min():.4g}-{ra.max():.4g} bpp, test {rt.min():.4g}-{rt.max():.4g} bpp)", "log-rate ranges"),
    )
    for key, function, scale, ov, no_overlap, ranges in measures:
        if ov <= 0:
            out[f"{key}_note"] = no_overlap
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(function(ra, qa, rt, qt, method="akima", require_matching_points=False, min_overlap=0))
        if not math.isfinite(value):
            out[f"{key}_note"] = "not finite"
            continue
        out[key] = scale * value
        if ov < MIN_OVERLAP:
            out[f"{key}_note"] = f"{ranges} overlap only {100 * ov:.0f} %"
    return out


def compute_bd(rows: Sequence[dict], metrics: Sequence[str], anchors: Sequence[str] = BD_ANCHORS) -> list[dict]:
    """One entry per (anchor, clip, tested codec, metric); see :func:`bd_pair`."""
    entries = []
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    for anchor in anchors:
        for clip in clips:
            for test in codecs:
                if test == anchor:
                    continue
                for m in metrics:
                    a_rows = [r for r in rows if r["clip"] == clip and r["codec"] == anchor]
                    t_rows = [r for r in rows if r["clip"] == clip and r["codec"] == test]
                    if not a_rows or not t_rows:
                        continue
                    entry = {"anchor": anchor, "clip": clip, "test": test, "metric": m, "lower_is_better": m in LOWER_IS_BETTER}
                    reasons = {r.get(f"{m}_unavailable") for r in a_rows + t_rows if r.get(m) is None}
                    a_pts = [(r["bpp"], r[m]) for r in a_rows if r.get(m) is not None]
                    t_pts = [(r["bpp"], r[m]) for r in t_rows if r.get(m) is not None]
                    if not a_pts or not t_pts:
                        reason = "; ".join(sorted(x for x in reasons if x)) or "no values"
                        entry.update(bd_rate=None, bd_metric=None, bd_rate_note=f"unavailable: {reason}", bd_metric_note=f"unavailable: {reason}", unavailable=True)
                    else:
                        entry.update(bd_pair(a_pts, t_pts, m in LOWER_IS_BETTER))
                        entry["unavailable"] = False
                    variants = {r.get("ms_ssim_variant") for r in a_rows} if m == "ms_ssim" else set()
                    if variants and variants != {"MS-SSIM"}:
                        entry["metric_variant"] = "; ".join(sorted(v for v in variants if v))
                    entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------
# outputs


def _fmt(v, digits: int) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}"


_DIGITS = {"psnr": 2, "psnr_y": 2, "ms_ssim": 4, "vmaf": 2, "lpips": 4, "lpips_alex": 4, "lpips_vgg": 4, "dists": 4, "cvvdp": 3}


def _available_metrics(rows: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if any(r.get(m) is not None for r in rows)]


def _unavailable_reasons(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, list[str]]:
    out = {}
    for m in metrics:
        reasons = sorted({r.get(f"{m}_unavailable") for r in rows if r.get(m) is None and r.get(f"{m}_unavailable")})
        if reasons:
            out[m] = reasons
    return out


def bd_markdown(bd: Sequence[dict], metrics: Sequence[str]) -> str:
    """Markdown BD-rate and BD-metric tables, one pair per anchor, with numbered notes."""
    lines: list[str] = []
    notes: dict[str, int] = {}

    def note(text: str) -> str:
        if text not in notes:
            notes[text] = len(notes) + 1
        return f"<sup>{notes[text]}</sup>"

    anchors = list(dict.fromkeys(e["anchor"] for e in bd))
    for anchor in anchors:
        entries = [e for e in bd if e["anchor"] == anchor]
        pairs = list(dict.fromkeys((e["clip"], e["test"]) for e in entries))
        for kind, title, unit in (
            ("bd_rate", f"BD-rate vs {CODEC_LABELS.get(anchor, anchor)} (%, Akima; negative = fewer bits for the same quality)", "%"),
            ("bd_metric", f"BD-metric vs {CODEC_LABELS.get(anchor, anchor)} (mean test - anchor at equal bpp, metric units)", ""),
        ):
            lines.append(f"### {title}")
            lines.append("")
            header = ["clip", "codec"] + [METRIC_LABELS.get(m, m) + (" (lower better)" if m in LOWER_IS_BETTER and kind == "bd_metric" else "") for m in metrics]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            means: dict[tuple[str, str], list[float | None]] = {}
            for clip, test in pairs:
                cells = [clip, CODEC_LABELS.get(test, test)]
                for m in metrics:
                    e = next((x for x in entries if x["clip"] == clip and x["test"] == test and x["metric"] == m), None)
                    if e is None:
                        cells.append("")
                        continue
                    v = e.get(kind)
                    text = "n/a" if v is None else (f"{v:+.1f} %" if kind == "bd_rate" else f"{v:+.{_DIGITS.get(m, 3)}f}")
                    if e.get("metric_variant"):
                        text += note(f"{clip}: {e['metric_variant']} instead of MS-SSIM")
                    if e.get(f"{kind}_note"):
                        text += note(e[f"{kind}_note"])
                    cells.append(text)
                    means.setdefault((test, m), []).append(v)
                lines.append("| " + " | ".join(cells) + " |")
            clips = list(dict.fromkeys(c for c, _ in pairs))
            if len(clips) > 1:
                for test in dict.fromkeys(t for _, t in pairs):
                    cells = ["**mean**", CODEC_LABELS.get(test, test)]
                    for m in metrics:
                        vals = means.get((test, m), [])
                        if vals and len(vals) == len(clips) and all(v is not None for v in vals):
                            mean = float(np.mean(vals))
                            cells.append(f"{mean:+.1f} %" if kind == "bd_rate" else f"{mean:+.{_DIGITS.get(m, 3)}f}")
                        else:
                            cells.append("n/a")
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    if notes:
        lines.append("Notes:")
        lines.append("")
        for text, k in notes.items():
            lines.append(f"{k}. {text}")
        lines.append("")
    return "\n".join(lines)


def points_markdown(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    avail = _available_metrics(rows, metrics)
    header = ["clip", "codec", "rate", "bytes", "bpp", "kbps"] + [METRIC_LABELS.get(m, m) for m in avail] + ["enc fps", "dec fps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rate = f"q{r['rate']}" if r["rate_param"] == "quality" else f"crf {r['rate']}"
        cells = [r["clip"], CODEC_LABELS.get(r["codec"], r["codec"]), rate, str(r["bytes"]), f"{r['bpp']:.4f}", f"{r['kbps']:.1f}"]
        for m in avail:
            cells.append(_fmt(r.get(m), _DIGITS.get(m, 4)) or "n/a")
        cells += [f"{r['encode_fps']:.2f}", f"{r['decode_fps']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rd(rows: Sequence[dict], metrics: Sequence[str], out_dir: str) -> dict[str, str]:
    """One PNG per available metric (``rd_<metric>.png``), a panel per clip, bpp on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    files = {}
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    styles = {"glvc": ("tab:red", "o"), "x264": ("tab:blue", "s"), "x265": ("tab:green", "^"), "svtav1": ("tab:purple", "D")}
    for m in _available_metrics(rows, metrics):
        fig, axes = plt.subplots(1, len(clips), figsize=(5.2 * len(clips), 4.2), squeeze=False)
        for ax, clip in zip(axes[0], clips):
            clip_rows = [r for r in rows if r["clip"] == clip]
            variant = {r.get("ms_ssim_variant") for r in clip_rows if r.get(m) is not None} if m == "ms_ssim" else set()
            for codec in codecs:
                pts = sorted((r["bpp"], r[m]) for r in clip_rows if r["codec"] == codec and r.get(m) is not None)
                if not pts:
                    continue
                color, marker = styles.get(codec, (None, "o"))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=CODEC_LABELS.get(codec, codec))
            first = clip_rows[0]
            ax.set_title(f"{clip} ({first['width']}x{first['height']}, {first['frames']} frames)", fontsize=10)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
            ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
            ax.tick_params(axis="x", which="minor", labelsize=7)
            ax.set_xlabel("bits per pixel (log scale)")
            label = METRIC_LABELS.get(m, m)
            if variant and variant != {"MS-SSIM"}:
                label = "SSIM (frame < 161 px: no MS-SSIM)"
            if m in LOWER_IS_BETTER:
                label += " (lower is better)"
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Rate-distortion: {METRIC_LABELS.get(m, m)}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"rd_{m}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[f"rd_{m}"] = path
    return files


def write_outputs(out_dir: str, rows: Sequence[dict], bd: Sequence[dict], cfg: EvalConfig, config: dict, elapsed: float) -> dict[str, str]:
    files: dict[str, str] = {}
    cols = _columns(cfg.metrics)
    csv_path = os.path.join(out_dir, "eval.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            out = {}
            for c in cols:
                v = r.get(c)
                if v is None:
                    out[c] = ""
                elif isinstance(v, (list, dict)):
                    out[c] = json.dumps(v)
                else:
                    out[c] = v
            writer.writerow(out)
    files["csv"] = csv_path

    unavailable = _unavailable_reasons(rows, cfg.metrics)
    json_path = os.path.join(out_dir, "eval.json")
    with open(json_path, "w") as f:
        json.dump(
            {"config": config, "elapsed_seconds": elapsed, "rows": list(rows), "bd": list(bd), "unavailable_metrics": unavailable},
            f,
            indent=1,
            default=_json_default,
        )
    files["json"] = json_path

    bd_md = bd_markdown(bd, cfg.metrics) if bd else "No BD-rate anchors (x265/x264) were evaluated.\n"
    bd_path = os.path.join(out_dir, "bd_rate.md")
    with open(bd_path, "w") as f:
        f.write("# Bjontegaard deltas\n\n")
        f.write(_conventions_text())
        f.write("\n")
        f.write(bd_md)
    files["bd_markdown"] = bd_path

    files.update(plot_rd(rows, cfg.metrics, out_dir))

    md = ["# GLVC evaluation", ""]
    if config.get("command"):
        md += ["```", config["command"], "```", ""]
    resumed = config.get("resumed_rows") or 0
    md.append(
        f"{len(rows)} rate points over {len({r['clip'] for r in rows})} clip(s), {elapsed / 60:.1f} min wall, "
        f"{config.get('cpu_seconds_this_run', 0) / 60:.1f} CPU-min"
        + (f" (this run; {resumed} rows reused from an interrupted run)" if resumed else "")
        + f" on {config['machine']['cpus']} CPU(s) ({config['machine']['torch_threads']} torch threads, "
        f"load average at the end {config['machine']['load_average_1_5_15min_at_end']}). "
        f"Model: `{config.get('model')}` (fingerprint {config.get('model_fingerprint')}). "
        f"Baseline CRFs: `{cfg.baseline_mode}` mode, byte count `{cfg.count}`."
    )
    md += ["", "## Rate points", "", points_markdown(rows, cfg.metrics), "", "## Bjontegaard deltas", "", _conventions_text(), bd_md]
    if unavailable:
        md += ["## Unavailable metrics", ""]
        for m, reasons in unavailable.items():
            md.append(f"- {METRIC_LABELS.get(m, m)}: " + "; ".join(reasons))
        md.append("")
    plots = [k for k in files if k.startswith("rd_")]
    if plots:
        md += ["## Plots", ""] + [f"![{k}]({os.path.basename(files[k])})" for k in plots] + [""]
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    files["markdown"] = md_path
    return files


def _cvvdp_display() -> str:
    from .metrics import CVVDP_DISPLAY

    return CVVDP_DISPLAY


def _conventions_text() -> str:
    return (
        "Bjontegaard deltas from the `bjontegaard` package with Akima interpolation; rate = bpp. "
        "BD-rate: mean bitrate difference at equal quality over the overlapping quality range, "
        "negative = the codec needs fewer bits than the anchor (better). LPIPS and DISTS (lower is better) "
        "are negated before interpolation, so the same sign convention holds. "
        "BD-metric: mean metric difference (codec - anchor) at equal bpp over the overlapping log-rate range, "
        "in the metric's units (higher is better except LPIPS/DISTS). Each curve is first reduced to its "
        "rate-quality Pareto front. n/a: see the numbered note.\n"
    )


# ---------------------------------------------------------------------------------------------
# command line


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clips", nargs="+", help="video files, folders of frames (PNG...), or folders of those (e.g. data/val_set)")
    p.add_argument("--out", default="eval_results", help="output folder (default: eval_results)")
    p.add_argument("--codecs", nargs="+", default=list(DEFAULT_CODECS), choices=CODEC_CHOICES, help="codecs to evaluate (default: glvc x264 x265)")
    p.add_argument("--glvc-rates", nargs="+", type=int, default=list(DEFAULT_GLVC_RATES), help="GLVC quality indices (default: 0 16 32 48 63)")
    p.add_argument(
        "--baseline-mode",
        choices=("span", "match"),
        default="span",
        help="span: CRFs chosen per clip so each baseline curve brackets GLVC's bpp range (default); "
        "match: one CRF per GLVC point, the largest stream not above GLVC's bytes",
    )
    p.add_argument("--baseline-points", type=int, default=5, help="CRF points per baseline in span mode (default 5)")
    p.add_argument("--crf", action="append", metavar="CODEC=CRF,CRF,...", help="fixed CRFs for a codec, e.g. x264=20,26,32 (repeatable)")
    p.add_argument("--count", choices=("payload", "bitstream"), default="payload", help="baseline bytes: payload (no SEI/metadata, default) or bitstream (all)")
    p.add_argument("--metrics", nargs="+", default=list(METRIC_KEYS), help=f"metrics (default: {' '.join(METRIC_KEYS)})")
    p.add_argument("--max-frames", type=int, default=33, help="first N frames of each clip (default 33)")
    p.add_argument("--max-height", type=int, default=None, help="downscale taller clips to this height")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of frame folders without a manifest (default 25)")
    p.add_argument("--device", default=None, help="device for the metrics (default: cuda if available, else cpu)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed GLVC warm-up encode of 5 frames per clip")
    p.add_argument("--resume", action="store_true", help=f"reuse finished rows from <out>/{PARTIAL_NAME} of an interrupted run")


def cmd_eval(args) -> int:
    from .metrics import ALL_METRICS

    known = set(ALL_METRICS) | {"psnr_rgb", "lpips_alex", "lpips_vgg"}
    bad = [m for m in args.metrics if m not in known]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {sorted(known)}")
    cfg = EvalConfig(
        codecs=tuple(dict.fromkeys(args.codecs)),
        glvc_rates=tuple(args.glvc_rates),
        baseline_mode=args.baseline_mode,
        baseline_points=args.baseline_points,
        crfs=parse_crf_overrides(args.crf),
        count=args.count,
        metrics=tuple(dict.fromkeys(args.metrics)),
        max_frames=args.max_frames,
        max_height=args.max_height,
        fps=args.fps,
        warmup=not args.no_warmup,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    # --resume does not change the results: leave it out of the recorded command
    command = "python -m glvc " + " ".join(_quote(a) for a in sys.argv[1:] if a != "--resume") if sys.argv and sys.argv[0].endswith(("glvc", "__main__.py")) else None
    result = run_eval(args.clips, args.out, cfg, model=args.model if "glvc" in cfg.codecs else None, command=command)
    with open(result.files["bd_markdown"]) as f:
        print(f.read())
    print(f"{len(result.rows)} rows in {result.elapsed_seconds / 60:.1f} min; wrote:")
    for path in result.files.values():
        print(f"  {path}")
    return 0


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
