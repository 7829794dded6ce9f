"""The work behind the GLVC demo (``app.py``): everything but the layout.

One request of the first tab::

    uploaded clip --read_video (downscale to max_height, trim to max_seconds)--> frames (T, H, W, 3) uint8
      -> GLVC.encode(quality=q | target_bytes=n)      .glvc bytes + the decoder's exact frames
      -> metrics.compute_all(original, decoded)       PSNR, MS-SSIM, VMAF, LPIPS, DISTS (+ ColorVideoVDP if asked)
      -> baselines.match_bitrate(x265, same bytes)    optional comparison, with the same metrics
      -> write_video                                  H.264 mp4s the browser plays, the .glvc file

and of the second: ``.glvc`` file -> GLVC.decode -> mp4. Nothing here imports gradio: a handler
passes a progress callable (``gr.Progress`` fits) and turns :class:`UserError` into a message.

Files: every request writes into its own temporary folder (:func:`workspace`), which the
caller removes once the files are served (gradio copies them into its cache first).

Models are loaded once per name and kept in :data:`_MODELS`; a :class:`~glvc.pipeline.GLVC`
keeps no per-stream state, so concurrent requests may share one.
"""

from __future__ import annotations

# spaces must come before torch: on a ZeroGPU Space it patches CUDA initialisation.
import spaces  # isort: skip

import atexit
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Protocol

import av
import numpy as np
import torch

from . import bitstream
from .bitstream import BitstreamError
from .defaults import default_model
from .pictures import Inspection, make_inspection
from .pipeline import GLVC, ModelLoadError, bytes_for_kbps, bytes_for_kilobytes
from .video_io import Video, VideoError, read_video, write_video

# ---------------------------------------------------------------------------------------------
# limits

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How much of an upload is coded, and what is refused. Heights in pixels, times in seconds."""

    default_height: int
    max_height: int
    default_seconds: float
    max_seconds: float
    min_height: int = 64
    max_upload_bytes: int = 200 * MB  # a larger upload is refused
    max_source_seconds: float = 600.0  # a longer upload is refused (only the first max_seconds are coded)
    max_glvc_bytes: int = 50 * MB
    max_decode_pixels: int = 25_000_000  # width x height x frames of a .glvc the second tab decodes

    def describe(self, device: str) -> str:
        return (
            f"On {device.upper()} clips are downscaled to at most {self.default_height}p and trimmed to the first "
            f"{self.default_seconds:g} s by default (the sliders go up to {self.max_height}p and {self.max_seconds:g} s); "
            f"uploads up to {self.max_upload_bytes // MB} MB and {self.max_source_seconds:g} s."
        )


CPU_LIMITS = Limits(default_height=240, max_height=360, default_seconds=2.0, max_seconds=3.0)
GPU_LIMITS = Limits(default_height=480, max_height=720, default_seconds=5.0, max_seconds=10.0, max_decode_pixels=500_000_000)


def on_zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space, where CUDA appears only inside ``@spaces.GPU`` calls."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def has_gpu() -> bool:
    return on_zero_gpu() or torch.cuda.is_available()


def device() -> str:
    """Where the tokenizer runs: CUDA when there is one (the latent codec always codes on the CPU)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def limits() -> Limits:
    return GPU_LIMITS if has_gpu() else CPU_LIMITS


class UserError(ValueError):
    """Something the user can fix (a bad upload, a model that cannot be had). One line, no traceback."""


class ProgressFn(Protocol):
    """``gr.Progress`` or anything called like it."""

    def __call__(self, progress: float, desc: str | None = None) -> Any: ...


def _no_progress(progress: float, desc: str | None = None) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# models

PAPER_MODEL_ID = "glvc/glvc-wan21"
"""Hub repository of the paper-scale model: Wan2.1's VAE (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``,
subfolder ``vae``, named in the repository's ``glvc.json``) and a latent codec trained on it."""


@dataclass(frozen=True)
class ModelChoice:
    key: str
    label: str
    note: str


MODEL_CHOICES: dict[str, ModelChoice] = {
    "default": ModelChoice(
        "default",
        "GLVC small (bundled)",
        "The bundled model: a small causal video VAE tokenizer and a latent codec, trained for this demo; it runs on a CPU.",
    ),
    "wan21": ModelChoice(
        "wan21",
        f"GLVC Wan2.1 (paper scale, {PAPER_MODEL_ID})",
        f"Wan2.1's 127M-parameter VAE as tokenizer plus a latent codec, fetched from the Hub as {PAPER_MODEL_ID}. "
        "**Not published anywhere yet**, so it cannot load even with network: it is made with "
        "`torchrun -m glvc train --config configs/paper.json` on GPUs with the Hub (see the README, *Training*). "
        "Needs a GPU: on 2 CPU cores the VAE alone runs at about 0.13 frames per second.",
    ),
}
DEFAULT_MODEL_KEY = "default"

_MODELS: dict[str, GLVC] = {}
_MODELS_LOCK = threading.Lock()


def model_source(key: str) -> str:
    """Folder or Hub id of a model choice (``$GLVC_MODEL`` overrides the bundled default)."""
    if key == "default":
        return default_model()
    if key == "wan21":
        return PAPER_MODEL_ID
    raise UserError(f"unknown model {key!r}; choose one of {sorted(MODEL_CHOICES)}")


def _hub_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` cannot be fetched from the Hub, or None when it can. Takes at most ~10 s.

    Asked before loading, because a download that cannot reach the Hub retries for about a minute
    and then reports a missing file.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return f"{repo_id} is gated on the Hugging Face Hub: accept its terms and log in (HF_TOKEN)"
    except RepositoryNotFoundError:
        return f"{repo_id} is not published on the Hugging Face Hub yet"
    except OfflineModeIsEnabled:
        return f"the Hugging Face Hub cannot be reached (HF_HUB_OFFLINE is set), so {repo_id} cannot be fetched"
    except Exception as err:  # noqa: BLE001 - the HTTP client's network errors share no base class with OSError
        return f"the Hugging Face Hub cannot be reached ({err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}), so {repo_id} cannot be fetched"
    return None


def get_model(key: str) -> GLVC:
    """The model of a choice, loaded on first use and kept (one per name). Raises UserError."""
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        source = model_source(key)
        if not os.path.isdir(source):
            problem = _hub_problem(source)
            if problem:
                raise UserError(f"cannot load model {MODEL_CHOICES[key].label}: {problem}")
        try:
            model = GLVC.from_pretrained(source, device=device())
        except ModelLoadError as err:
            raise UserError(str(err).splitlines()[0]) from err
        _MODELS[key] = model
        return model


def prepare_tokenizer(key: str = DEFAULT_MODEL_KEY) -> None:
    """Compile the tokenizer's CPU engine of a model ahead of its first request. The openvino engine
    converts a model once per machine, then compiles it in each process: 34.6 s and 1.7 s for the
    bundled model on 2 busy AMD EPYC cores (README, *Speed*)."""
    try:
        get_model(key).tokenizer.compiled
    except UserError:
        pass  # the request says why


def model_status(key: str) -> str:
    """One line about a model choice for the page (loads it if it is local or reachable)."""
    choice = MODEL_CHOICES.get(key)
    if choice is None:
        return f"unknown model {key!r}"
    try:
        model = get_model(key)
    except UserError as err:
        return f"{choice.note} **Not available:** {err}"
    params = sum(p.numel() for p in model.tokenizer.vae.parameters()) + sum(p.numel() for p in model.codec.parameters())
    return f"{choice.note} {params / 1e6:.1f}M parameters, quality indices 0 .. {model.max_quality}, tokenizer on {device().upper()}."


# ---------------------------------------------------------------------------------------------
# rate table

from .ratetable import RATE_TABLE_NAME, RATE_TABLE_VERSION  # noqa: E402  (measured by glvc.ratetable)


@dataclass(frozen=True)
class RateTable:
    """Measured bits per pixel at some quality indices (``scripts/rate_table.py``)."""

    qualities: tuple[int, ...]
    mean_bpp: tuple[float, ...]
    clips: tuple[str, ...]
    max_height: int
    max_seconds: float

    def expected_bpp(self, quality: int) -> tuple[float, bool]:
        """(bpp, measured): a measured value, or log-linear interpolation between the nearest two."""
        qs, bpp = self.qualities, self.mean_bpp
        if quality in qs:
            return bpp[qs.index(quality)], True
        if quality <= qs[0]:
            return bpp[0], False
        if quality >= qs[-1]:
            return bpp[-1], False
        hi = next(i for i, q in enumerate(qs) if q > quality)
        lo = hi - 1
        t = (quality - qs[lo]) / (qs[hi] - qs[lo])
        return math.exp((1 - t) * math.log(bpp[lo]) + t * math.log(bpp[hi])), False


def load_rate_table(model: GLVC, folder: str) -> RateTable | None:
    """The table in ``folder`` if it was measured with this very model (same fingerprint), else None."""
    path = os.path.join(folder, RATE_TABLE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if data.get("version") != RATE_TABLE_VERSION or data.get("model_fingerprint") != model.fingerprint.hex():
        return None
    measured = data["measured_with"]
    return RateTable(
        qualities=tuple(data["qualities"]),
        mean_bpp=tuple(data["mean_bpp"]),
        clips=tuple(c["clip"] for c in data["clips"]),
        max_height=int(measured["max_height"]),
        max_seconds=float(measured["max_seconds"]),
    )


_RATE_TABLES: dict[str, RateTable | None] = {}


def rate_table(key: str) -> RateTable | None:
    if key not in _RATE_TABLES:
        source = model_source(key)
        _RATE_TABLES[key] = load_rate_table(get_model(key), source) if os.path.isdir(source) else None
    return _RATE_TABLES[key]


def quality_hint(key: str, quality: int) -> str:
    """One line: the expected bpp of a quality index, from the model's measured rate table."""
    try:
        table = rate_table(key)
    except UserError as err:
        return f"Quality {quality}: no rate table ({err})."
    if table is None:
        return f"Quality {quality}: this model has no measured rate table; the rate is shown after encoding."
    bpp, measured = table.expected_bpp(int(quality))
    how = "measured" if measured else f"interpolated between the measured indices {', '.join(map(str, table.qualities))}"
    return (
        f"Quality {quality}: about **{bpp:.4f} bpp** ({how}; mean over {len(table.clips)} example clips at "
        f"{table.max_height}p, {table.max_seconds:g} s). Real clips vary with content."
    )


# ---------------------------------------------------------------------------------------------
# requests

RATE_MODES = ("quality", "kbps", "kilobytes")


@dataclass(frozen=True)
class Rate:
    """The rate asked for: a quality index, or a target the encoder meets by choosing the index."""

    mode: str  # "quality" | "kbps" | "kilobytes"
    quality: int = 32
    kbps: float = 100.0
    kilobytes: float = 20.0  # 1 kB = 1000 bytes

    def target_bytes(self, frames: int, fps: float | Fraction) -> int | None:
        if self.mode == "quality":
            return None
        if self.mode == "kbps":
            if not self.kbps or not 0 < self.kbps < math.inf:  # NaN fails too
                raise UserError(f"the target bitrate must be a positive number, got {self.kbps} kbps")
            return bytes_for_kbps(self.kbps, frames, fps)
        if self.mode == "kilobytes":
            if not self.kilobytes or not 0 < self.kilobytes < math.inf:
                raise UserError(f"the target size must be a positive number, got {self.kilobytes} kB")
            return bytes_for_kilobytes(self.kilobytes)
        raise UserError(f"unknown rate mode {self.mode!r}; choose one of {RATE_MODES}")


X265_SERVER_PARAMS = "pools=none:frame-threads=1"
"""x265 without its thread pool in the app. In the server, x265's default threading hung once in
``Lookahead::getDecidedPicture`` (flushing the encoder, a worker thread of the running app under
tests/test_concurrency.py; seen with py-spy), which holds the codec queue for every user. Without a
pool x265 runs its lookahead in the calling thread, with no other thread to wait for (no hang in
the 4 runs since). On 2 cores the bitrate search for a 240p 2 s clip took the same time (4.3 s vs
4.4 s), and the stream no longer depends on the machine's core count."""

WORKSPACE_ROOT: str | None = None
"""Where request folders are made (None: the system's temporary folder). Served files must lie
where gradio may serve them from (the system temporary folder or below it)."""
_ACTIVE_WORKSPACES: set[str] = set()


@contextlib.contextmanager
def workspace() -> Iterator[str]:
    """A fresh folder for one request's files, removed with everything in it on exit (and, for
    requests still running when the server stops, when the interpreter exits)."""
    folder = tempfile.mkdtemp(prefix="glvc-app-", dir=WORKSPACE_ROOT)
    _ACTIVE_WORKSPACES.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _ACTIVE_WORKSPACES.discard(folder)


@atexit.register
def _remove_active_workspaces() -> None:
    for folder in list(_ACTIVE_WORKSPACES):
        shutil.rmtree(folder, ignore_errors=True)


def frames_digest(frames: np.ndarray) -> str:
    """sha256 of decoded frames (shape and bytes): equal digests mean bit-identical video."""
    digest = hashlib.sha256(repr(tuple(frames.shape)).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()


def _source_seconds(path: str) -> float | None:
    """Duration the container states, or None when it states none (or is unreadable: read_video says why)."""
    try:
        with av.open(path, mode="r") as container:
            if container.duration:
                return container.duration / av.time_base
            for stream in container.streams.video:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return None
    return None


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1000:.1f} kB"


def _check_upload(path: str | None, what: str, max_bytes: int) -> int:
    if not path:
        raise UserError(f"no {what} given: upload one first")
    if not os.path.isfile(path):
        raise UserError(f"the uploaded {what} is gone ({os.path.basename(path)}); upload it again")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise UserError(f"{os.path.basename(path)} is {_size(size)}; at most {_size(max_bytes)} is accepted")
    if size == 0:
        raise UserError(f"{os.path.basename(path)} is empty (0 bytes)")
    return size


def load_clip(path: str | None, max_height: int, max_seconds: float, lim: Limits | None = None) -> Video:
    """Read an upload within the limits; every refusal is a UserError with the numbers."""
    lim = lim or limits()
    if not lim.min_height <= max_height <= lim.max_height:
        raise UserError(f"max height {max_height} px is outside {lim.min_height} .. {lim.max_height} px on this server")
    if not 0 < max_seconds <= lim.max_seconds:
        raise UserError(f"max duration {max_seconds:g} s is outside 0 .. {lim.max_seconds:g} s on this server")
    _check_upload(path, "video", lim.max_upload_bytes)
    seconds = _source_seconds(path)
    if seconds is not None and seconds > lim.max_source_seconds:
        raise UserError(
            f"{os.path.basename(path)} is {seconds:.0f} s long; uploads up to {lim.max_source_seconds:.0f} s are accepted "
            f"(and only the first {max_seconds:g} s are coded): cut it first"
        )
    try:
        video = read_video(path, max_seconds=max_seconds, max_height=int(max_height))
    except VideoError as err:
        raise UserError(str(err).splitlines()[0]) from err
    # robustness (tests/test_hostile.py): a 1-pixel side breaks the quality metrics (SSIM)
    if min(video.width, video.height) < 2:
        raise UserError(f"{os.path.basename(path)} is {video.width}x{video.height} pixels; at least 2x2 are needed")
    return video


# ---------------------------------------------------------------------------------------------
# composition


def _label_patch(text: str, height: int) -> np.ndarray:
    """White text on a dark box, (h, w, 3) uint8, scaled to the frame height."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(10, min(24, height // 14))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    image = Image.new("RGB", (box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad), (20, 20, 20))
    ImageDraw.Draw(image).text((pad - box[0], pad - box[1]), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def side_by_side(panels: list[tuple[str, np.ndarray]], gap: int = 4) -> np.ndarray:
    """Clips of one size (T, H, W, 3) side by side with a label in each top-left corner."""
    t, h, w, _ = panels[0][1].shape
    for label, frames in panels:
        if frames.shape != (t, h, w, 3):
            raise ValueError(f"panel {label!r} is {frames.shape}, expected {(t, h, w, 3)}")
    out = np.full((t, h, len(panels) * w + (len(panels) - 1) * gap, 3), 255, np.uint8)
    for i, (label, frames) in enumerate(panels):
        x = i * (w + gap)
        out[:, :, x : x + w] = frames
        patch = _label_patch(label, h)[:h, :w]
        out[:, : patch.shape[0], x : x + patch.shape[1]] = patch
    return out


# ---------------------------------------------------------------------------------------------
# encoding


@dataclass
class EncodePreview:
    """What a request shows as soon as GLVC has coded and decoded the clip, before the scores and
    the x265 comparison (:func:`encode_clip_steps`)."""

    status: str  # one line
    decoded_mp4: str
    bitstream_path: str


@dataclass
class EncodeOutcome:
    """What one encode request produced. Paths lie in the request's workspace."""

    status: str  # one line
    decoded_mp4: str
    side_by_side_mp4: str
    bitstream_path: str
    table: list[list[str]]  # [measure, GLVC, x265 or "-"]
    timings: list[list[str]]  # [stage, seconds]
    details: dict[str, Any]
    decoded: np.ndarray = field(repr=False)  # (T, H, W, 3) uint8, bit-identical to decoding the .glvc
    inspection: "Inspection | None" = field(default=None, repr=False)  # what the pictures need (glvc.pictures)


def _metric_cell(value) -> str:
    if value is None:
        return "-"
    if not value.available:  # the first clause; the whole reason is in the details
        return f"unavailable: {value.unavailable_reason.split(':')[0].split(' (')[0]}"
    if value.name.startswith("PSNR"):
        return f"{value.value:.2f} dB"
    if value.name == "VMAF":
        return f"{value.value:.2f}"
    if value.name == "ColorVideoVDP":
        return f"{value.value:.2f} JOD"
    return f"{value.value:.4f}"


METRIC_ROWS = (
    ("psnr", "PSNR-RGB (dB, higher is better)"),
    ("ms_ssim", "MS-SSIM (higher is better)"),
    ("vmaf", "VMAF v0.6.1 (0-100, higher is better)"),
    ("lpips", "LPIPS-Alex (lower is better)"),
    ("dists", "DISTS (lower is better)"),
    ("cvvdp", "ColorVideoVDP (JOD, 10 = no visible difference; 24-inch FHD display)"),
)
SLOW_METRICS = ("dists", "cvvdp")
"""Metrics a request scores only when asked (the page's box; by default only with a GPU). On 2 CPU
cores, per 2 s 240p clip (50 frames of 564x240), scored twice per request with x265: DISTS (VGG16
on every frame) 82-92 s, ColorVideoVDP about 88 CPU-seconds; LPIPS-Alex, kept, 3.9-4.4 s (docs/metrics.md)."""
SLOW_METRIC_OFF = "not computed (slow metrics box off)"


def slow_metrics_default() -> bool:
    """Whether a request scores :data:`SLOW_METRICS` unless told: with a GPU only."""
    return has_gpu()


def _score(frames: np.ndarray, decoded: np.ndarray, fps: Fraction, slow_metrics: bool, stages: dict[str, float], who: str) -> dict:
    """The metrics of one decoded clip that the page shows; :data:`SLOW_METRICS` (each timed as a
    stage of its own) only if asked."""
    from . import metrics

    start = time.perf_counter()
    shown = [key for key, _ in METRIC_ROWS if key not in SLOW_METRICS]
    scores = metrics.compute_all(frames, decoded, metrics=shown, device=device())
    stages[f"{who} metrics"] = time.perf_counter() - start
    if slow_metrics:
        for key in SLOW_METRICS:
            start = time.perf_counter()
            scores.update(metrics.compute_all(frames, decoded, metrics=(key,), device=device(), fps=fps))
            stages[f"{who} {scores[key].name}"] = time.perf_counter() - start
    return scores


def _metric_label(key: str, label: str, value) -> str:
    if key == "ms_ssim" and value is not None and value.name != "MS-SSIM":
        return value.name  # SSIM fallback on frames under 161 px
    return label


@dataclass
class _Comparison:
    """x265 at GLVC's size: its result (a :class:`~glvc.baselines.BaselineResult`), CRF and scores."""

    result: Any
    crf: int
    scores: dict


def _encode_glvc(model: GLVC, frames: np.ndarray, fps: Fraction, quality: int | None, target: int | None,
                 progress: ProgressFn, stages: dict[str, float]):
    """GLVC at a quality or a target size, keeping the latents for the pictures; returns (result, seconds)."""

    def on_latent(done: int, total: int) -> None:
        progress(0.05 + 0.55 * done / max(total, 1), desc=f"GLVC: latent frame {done}/{total or '?'}")

    progress(0.05, desc="GLVC: analysing the clip" if target else "GLVC: encoding")
    start = time.perf_counter()
    rate = {"quality": quality} if target is None else {"target_bytes": target}
    result = model.encode(frames, fps, progress=on_latent, keep_latents=True, **rate)
    seconds = time.perf_counter() - start
    for name, spent in result.report.timings.items():
        stages[f"GLVC {name.replace('_', ' ')}"] = spent
    return result, seconds


def _compare_x265(frames: np.ndarray, fps: Fraction, target_bytes: int, slow_metrics: bool, progress: ProgressFn,
                  stages: dict[str, float]) -> _Comparison:
    from .baselines import match_bitrate

    progress(0.7, desc="x265 at the same size")
    start = time.perf_counter()
    x265, crf = match_bitrate(frames, fps, "x265", target_bytes=target_bytes, extra_params=X265_SERVER_PARAMS)
    stages["x265 rate search (encode + decode)"] = time.perf_counter() - start
    progress(0.85, desc="scoring x265")
    return _Comparison(x265, crf, _score(frames, x265.decoded, fps, slow_metrics, stages, "x265"))


DISPLAY_PRESET = "veryfast"
"""x264 preset of the mp4s the page plays (CRF 18, a display copy: the .glvc holds the frames). On the
default request's side-by-side video (3 x 564x240, 50 frames) medium took 1.62 s, veryfast 0.73 s,
for a 2% smaller file."""


def _write_glvc_files(workdir: str, name: str, fps: Fraction, result, stages: dict[str, float]) -> tuple[str, str]:
    """The .glvc file and the decoded mp4: their paths."""
    start = time.perf_counter()
    bitstream_path = os.path.join(workdir, f"{name}.glvc")
    with open(bitstream_path, "wb") as f:
        f.write(result.bitstream)
    decoded_mp4 = os.path.join(workdir, f"{name}_glvc.mp4")
    write_video(decoded_mp4, result.reconstruction, fps, preset=DISPLAY_PRESET)
    stages["write .glvc + decoded mp4"] = time.perf_counter() - start
    return bitstream_path, decoded_mp4


def _write_side_by_side(workdir: str, name: str, frames: np.ndarray, fps: Fraction, result, x265: _Comparison | None,
                        stages: dict[str, float]) -> str:
    """original | GLVC | x265 as one mp4: its path."""
    start = time.perf_counter()
    report, decoded = result.report, result.reconstruction
    panels = [("original", frames), (f"GLVC {report.bits_per_pixel:.3f} bpp", decoded)]
    if x265 is not None:
        panels.append((f"x265 {x265.result.bpp:.3f} bpp", x265.result.decoded))
    sbs_mp4 = os.path.join(workdir, f"{name}_side_by_side.mp4")
    write_video(sbs_mp4, side_by_side(panels), fps, preset=DISPLAY_PRESET)
    stages["write side-by-side mp4"] = time.perf_counter() - start
    return sbs_mp4


def _scores_table(frames: np.ndarray, report, scores: dict, x265: _Comparison | None) -> list[list[str]]:
    """[measure, GLVC, x265 or "-"] rows: rate, then every metric of METRIC_ROWS."""
    raw_bytes = frames.size  # 8-bit RGB of the coded frames
    x = x265.result if x265 else None
    table = [
        ["bytes", f"{report.bytes:,}", f"{x.bitstream_bytes:,}" if x else "-"],
        ["kbps", f"{report.kbps:.1f}", f"{x.kbps:.1f}" if x else "-"],
        ["bits per pixel", f"{report.bits_per_pixel:.4f}", f"{x.bpp:.4f}" if x else "-"],
        ["compression ratio (vs 8-bit RGB)", f"{raw_bytes / report.bytes:,.0f}:1",
         f"{raw_bytes / x.bitstream_bytes:,.0f}:1" if x else "-"],
        ["rate setting", f"quality {report.quality}", f"CRF {x265.crf}" if x else "-"],
    ]
    for key, label in METRIC_ROWS:
        if key not in scores:  # a slow metric not asked for
            table.append([label, SLOW_METRIC_OFF, SLOW_METRIC_OFF if x265 else "-"])
            continue
        table.append([_metric_label(key, label, scores[key]), _metric_cell(scores[key]),
                      _metric_cell(x265.scores[key]) if x265 else "-"])
    return table


def _status_line(video: Video, report, target: int | None, scores: dict, glvc_seconds: float,
                 x265: _Comparison | None, max_seconds: float) -> str:
    how = f"quality {report.quality}" if target is None else f"quality {report.quality} (chosen for a target of {target:,} bytes)"
    status = (
        f"GLVC: {report.frames} frames {report.width}x{report.height} @ {float(video.fps):g} fps, {how}: "
        f"{report.bytes:,} bytes, {report.kbps:.1f} kbps, {report.bits_per_pixel:.4f} bpp, "
        f"PSNR {_metric_cell(scores['psnr'])}; encode {glvc_seconds:.1f} s"
    )
    if report.target_note():
        status += f". Note: {report.target_note()}"
    if x265 is not None:
        x = x265.result
        status += f". x265 CRF {x265.crf}: {x.bitstream_bytes:,} bytes, PSNR {_metric_cell(x265.scores['psnr'])}"
        if x.bitstream_bytes > report.bytes:
            status += " (its smallest stream is larger than GLVC's)"
    if video.truncated:
        status += f". Input trimmed to {max_seconds:g} s"
    return status


def _metric_values(scores: dict) -> dict[str, Any]:
    return {k: v.value if v.available else f"unavailable: {v.unavailable_reason}" for k, v in scores.items()}


def _details(video_path: str, video: Video, model_key: str, model: GLVC, rate: Rate, target: int | None, result,
             scores: dict, slow_metrics: bool, x265: _Comparison | None, stages: dict[str, float]) -> dict[str, Any]:
    from . import metrics

    report, fps = result.report, video.fps
    details = {
        "input": {
            "file": os.path.basename(video_path),
            "source_size": list(video.source_size),
            "coded_size": [video.width, video.height],
            "frames": video.num_frames,
            "fps": f"{fps.numerator}/{fps.denominator}",
            "truncated": video.truncated,
        },
        "model": {"choice": model_key, "source": model_source(model_key), "fingerprint": model.fingerprint.hex(),
                  "device": device()},
        "rate": {"mode": rate.mode, "target_bytes": target, "chosen_quality": report.quality},
        "glvc": report.as_dict(),
        "glvc_metrics": _metric_values(scores),
        "cvvdp_display": metrics.CVVDP_DISPLAY if slow_metrics else None,
        "decoded_sha256": frames_digest(result.reconstruction),
        "stages_seconds": {k: round(v, 3) for k, v in stages.items()},
    }
    if x265 is not None:
        x = x265.result
        details["x265"] = {
            "crf": x265.crf, "bytes": x.bitstream_bytes, "payload_bytes": x.payload_bytes,
            "kbps": x.kbps, "bpp": x.bpp, "search": x.params.get("search"),
            "byte_count": x.params.get("byte_count"), "preset": x.params.get("preset"),
            "metrics": _metric_values(x265.scores),
        }
    return details


def _inspection(model_key: str, model: GLVC, video: Video, result, target: int | None, scores: dict,
                x265: _Comparison | None, stages: dict[str, float]) -> Inspection:
    """What the pictures need (glvc.pictures), from this encode's own data; and what a sweep will cost."""
    start = time.perf_counter()
    report = result.report
    passes = 1 if target is None else 1 + math.ceil(math.log2(model.max_quality + 1))  # the bisection's codec passes
    per_rate = {"GLVC": report.timings.get("latent_coding", 0.0) / passes + report.timings.get("tokenizer_decode", 0.0)}
    if x265 is not None:
        per_rate["x265"] = stages["x265 rate search (encode + decode)"]
    inspection = make_inspection(
        model_key, video.fps, video.frames, result.reconstruction, result.latents, report.bytes,
        x265.result if x265 else None, seconds_per_rate=per_rate,
        glvc_psnr=scores["psnr"].per_frame, x265_psnr=x265.scores["psnr"].per_frame if x265 else None,
    )
    stages["pictures (data)"] = time.perf_counter() - start
    return inspection


def encode_clip(
    video_path: str | None,
    model_key: str = DEFAULT_MODEL_KEY,
    rate: Rate = Rate("quality"),
    max_height: int | None = None,
    max_seconds: float | None = None,
    compare_x265: bool = True,
    workdir: str | None = None,
    progress: ProgressFn = _no_progress,
    slow_metrics: bool | None = None,
) -> EncodeOutcome:
    """Encode an uploaded clip, score it and (optionally) x265 at the same size; write the files.

    ``slow_metrics``: also score :data:`SLOW_METRICS`, DISTS and ColorVideoVDP (default :func:`slow_metrics_default`).

    ``workdir`` receives <name>_glvc.mp4, <name>_side_by_side.mp4 and <name>.glvc (a new temporary
    folder when None; the caller removes it). Raises :class:`UserError` for anything the user
    can fix. :func:`encode_clip_steps` does the same and shows a preview first.
    """
    *_, outcome = encode_clip_steps(video_path, model_key, rate, max_height, max_seconds, compare_x265, workdir,
                                    progress, slow_metrics)
    return outcome


@spaces.GPU(duration=120)
def encode_clip_steps(
    video_path: str | None,
    model_key: str = DEFAULT_MODEL_KEY,
    rate: Rate = Rate("quality"),
    max_height: int | None = None,
    max_seconds: float | None = None,
    compare_x265: bool = True,
    workdir: str | None = None,
    progress: ProgressFn = _no_progress,
    slow_metrics: bool | None = None,
) -> Iterator["EncodePreview | EncodeOutcome"]:
    """:func:`encode_clip` in two steps: yields an :class:`EncodePreview` (the decoded video and
    the .glvc file, about half-way through a default request) and then the :class:`EncodeOutcome`."""
    lim = limits()
    slow_metrics = slow_metrics_default() if slow_metrics is None else bool(slow_metrics)
    max_height = int(max_height or lim.default_height)
    max_seconds = float(max_seconds or lim.default_seconds)
    workdir = workdir or tempfile.mkdtemp(prefix="glvc-app-")
    stages: dict[str, float] = {}
    request_start = time.perf_counter()

    progress(0.0, desc="reading the clip")
    start = time.perf_counter()
    video = load_clip(video_path, max_height, max_seconds, lim)
    frames, fps = video.frames, video.fps
    stages["read + downscale"] = time.perf_counter() - start

    progress(0.03, desc="loading the model")
    start = time.perf_counter()
    model = get_model(model_key)
    stages["model load"] = time.perf_counter() - start

    target = rate.target_bytes(video.num_frames, video.fps)
    quality = None
    if target is None:
        quality = int(rate.quality)
        if not 0 <= quality <= model.max_quality:
            raise UserError(f"quality {quality} is outside this model's range 0 .. {model.max_quality}")

    result, glvc_seconds = _encode_glvc(model, frames, fps, quality, target, progress, stages)
    report = result.report
    name = os.path.splitext(os.path.basename(video_path))[0] or "clip"
    bitstream_path, decoded_mp4 = _write_glvc_files(workdir, name, fps, result, stages)
    follows = "the scores and x265 at the same size follow" if compare_x265 else "the scores follow"
    yield EncodePreview(
        f"Decoded by GLVC after {time.perf_counter() - request_start:.0f} s: {report.bytes:,} bytes, "
        f"{report.kbps:.1f} kbps, {report.bits_per_pixel:.4f} bpp, quality {report.quality}; {follows}",
        decoded_mp4, bitstream_path)

    progress(0.6, desc="scoring GLVC")
    scores = _score(frames, result.reconstruction, fps, slow_metrics, stages, "GLVC")
    x265 = _compare_x265(frames, fps, report.bytes, slow_metrics, progress, stages) if compare_x265 else None
    inspection = _inspection(model_key, model, video, result, target, scores, x265, stages)

    progress(0.92, desc="writing the side-by-side video")
    sbs_mp4 = _write_side_by_side(workdir, name, frames, fps, result, x265, stages)
    progress(1.0, desc="done")

    table = _scores_table(frames, report, scores, x265)
    timings = [[stage, f"{seconds:.2f}"] for stage, seconds in stages.items()]
    timings.append(["total", f"{sum(stages.values()):.2f}"])
    status = _status_line(video, report, target, scores, glvc_seconds, x265, max_seconds)
    details = _details(video_path, video, model_key, model, rate, target, result, scores, slow_metrics, x265, stages)
    yield EncodeOutcome(status, decoded_mp4, sbs_mp4, bitstream_path, table, timings, details, result.reconstruction, inspection)


# ---------------------------------------------------------------------------------------------
# pictures of an encode (drawn by glvc.pictures from the request's Inspection)


def latent_bits(ins: Inspection, index: int) -> np.ndarray:
    """Bits per latent position (h, w) of latent frame ``index`` of an encode (LatentCodec.bits_map,
    on the state the encoder coded it with)."""
    index = int(np.clip(index, 0, ins.num_latents - 1))
    frame = ins.latents.frames[index]
    return get_model(ins.model_key).codec.bits_map(frame.latent, frame.state, ins.latents.quality).numpy()


def bits_picture(ins: Inspection, index: int):
    """The "where the bits go" figure of latent frame ``index``."""
    from .pictures import bits_figure, latent_projection

    index = int(np.clip(index, 0, ins.num_latents - 1))
    projection = latent_projection([frame.latent for frame in ins.latents.frames])
    return bits_figure(ins, latent_bits(ins, index), index, projection)


def sweep_qualities(max_quality: int, points: int = 5) -> list[int]:
    """``points`` quality indices spread evenly over 0 .. ``max_quality``."""
    return sorted({int(round(q)) for q in np.linspace(0, max_quality, points)})


def sweep_estimate(ins: Inspection) -> tuple[float, str]:
    """(seconds, one line) that an RD sweep of this encode will take, from this encode's own times."""
    qualities = sweep_qualities(get_model(ins.model_key).max_quality)
    n, coded = len(qualities), len([q for q in qualities if q != ins.latents.quality])  # this encode's rate is reused
    per = ins.seconds_per_rate
    seconds = coded * per.get("GLVC", 0.0) + n * per.get("x265", 0.0)
    parts = f"{coded} GLVC rates x {per.get('GLVC', 0.0):.1f} s (latent coding + tokenizer decode, as in this encode)"
    parts += f" + {n} x265 rate searches x {per['x265']:.1f} s" if "x265" in per else " + x265 (not timed: the comparison was off)"
    return seconds, f"An RD sweep of this clip will take about **{seconds:.0f} s**: {parts}."


@dataclass
class RDSweep:
    points: list[dict[str, Any]]  # {"codec", "quality" | "crf", "bytes", "bpp", "psnr", "label"}
    seconds: float

    def table(self) -> list[list[str]]:
        return [[p["codec"], p["label"], f"{p['bytes']:,}", f"{p['bpp']:.4f}", f"{p['psnr']:.2f}"] for p in self.points]


@spaces.GPU(duration=300)
def rd_sweep(ins: Inspection, progress: ProgressFn = _no_progress) -> RDSweep:
    """GLVC at :func:`sweep_qualities` (the kept latents re-coded: no tokenizer encode) and x265 at
    each of those sizes, on the clip of ``ins``; PSNR-RGB per point."""
    from .baselines import match_bitrate
    from .metrics import psnr_rgb

    model = get_model(ins.model_key)
    start = time.perf_counter()
    pixels = ins.original.shape[0] * ins.original.shape[1] * ins.original.shape[2]
    qualities = sweep_qualities(model.max_quality)
    points = []
    for i, q in enumerate(qualities):
        progress(i / len(qualities), desc=f"GLVC at quality {q} ({i + 1}/{len(qualities)})")
        if q == ins.latents.quality:  # the request's own encode
            size, decoded = ins.glvc_bytes, ins.glvc
        else:
            result = model.encode_latents(ins.latents, ins.fps, q)
            size, decoded = result.report.bytes, result.reconstruction
        points.append({"codec": "GLVC", "quality": q, "bytes": size, "bpp": 8 * size / pixels,
                       "psnr": psnr_rgb(ins.original, decoded).value, "label": f"q{q}"})
        progress((i + 0.5) / len(qualities), desc=f"x265 at {size:,} bytes ({i + 1}/{len(qualities)})")
        x265, crf = match_bitrate(ins.original, ins.fps, "x265", target_bytes=size, extra_params=X265_SERVER_PARAMS)
        points.append({"codec": "x265", "crf": crf, "bytes": x265.bitstream_bytes, "bpp": x265.bpp,
                       "psnr": psnr_rgb(ins.original, x265.decoded).value, "label": f"crf {crf}"})
    progress(1.0, desc="done")
    return RDSweep(points, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# decoding


@dataclass
class DecodeOutcome:
    status: str  # one line
    decoded_mp4: str
    details: dict[str, Any]
    decoded: np.ndarray = field(repr=False)


@spaces.GPU(duration=120)
def decode_file(
    glvc_path: str | None,
    model_key: str = DEFAULT_MODEL_KEY,
    workdir: str | None = None,
    progress: ProgressFn = _no_progress,
) -> DecodeOutcome:
    """Decode an uploaded ``.glvc`` file into an mp4. Raises :class:`UserError` on a bad file."""
    lim = limits()
    workdir = workdir or tempfile.mkdtemp(prefix="glvc-app-")
    progress(0.0, desc="reading the bitstream")
    _check_upload(glvc_path, ".glvc file", lim.max_glvc_bytes)
    with open(glvc_path, "rb") as f:
        data = f.read()
    name = os.path.basename(glvc_path)
    try:
        header = bitstream.unpack_header(data)[0]
    except BitstreamError as err:
        raise UserError(f"{name} is not a valid .glvc file: {str(err).splitlines()[0]}") from err
    pixels = header.width * header.height * header.frames
    if pixels > lim.max_decode_pixels:
        raise UserError(
            f"{name} holds {header.frames} frames of {header.width}x{header.height} ({pixels / 1e6:.1f} M pixels); "
            f"this server decodes at most {lim.max_decode_pixels / 1e6:.0f} M pixels per request"
        )
    model = get_model(model_key)
    if header.fingerprint != model.fingerprint:
        raise UserError(
            f"{name} was made by another model (fingerprint {header.fingerprint.hex()[:12]}); "
            f"{MODEL_CHOICES[model_key].label} is {model.fingerprint.hex()[:12]}: pick the model it was made with"
        )

    def on_latent(done: int, total: int) -> None:
        progress(0.05 + 0.85 * done / max(total, 1), desc=f"decoding latent frame {done}/{total}")

    start = time.perf_counter()
    try:
        result = model.decode(data, progress=on_latent)
    except BitstreamError as err:
        raise UserError(f"{name} is corrupt: {str(err).splitlines()[0]}") from err
    seconds = time.perf_counter() - start
    progress(0.92, desc="writing the video")
    mp4 = os.path.join(workdir, f"{os.path.splitext(name)[0] or 'decoded'}_decoded.mp4")
    write_video(mp4, result.frames, result.fps, preset=DISPLAY_PRESET)
    report = result.report
    status = (
        f"Decoded {report.frames} frames {report.width}x{report.height} @ {report.fps:g} fps, quality {report.quality}: "
        f"{report.bytes:,} bytes, {report.kbps:.1f} kbps, {report.bits_per_pixel:.4f} bpp; decode {seconds:.1f} s"
    )
    details = {
        "file": name,
        "model": {"choice": model_key, "fingerprint": model.fingerprint.hex(), "device": device()},
        "glvc": report.as_dict(),
        "decoded_sha256": frames_digest(result.frames),
    }
    return DecodeOutcome(status, mp4, details, result.frames)
