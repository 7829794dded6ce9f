"""Full-reference video quality metrics for GLVC.

Frame convention (inputs of every public function): numpy ``uint8`` arrays of
shape ``(T, H, W, 3)``, RGB, values 0-255.  A single ``(H, W, 3)`` frame is
accepted and treated as ``T = 1``.  ``ref`` is the original, ``dist`` the
decoded/distorted clip; the order matters for VMAF.

Every metric returns a :class:`MetricValue`: the clip score (mean of the
per-frame scores; ColorVideoVDP pools over time itself and has no per-frame
scores), the per-frame scores, or - for a metric that cannot be computed
honestly here - ``value=None`` and ``unavailable_reason``.

Metrics
-------
* ``psnr_rgb``  - PSNR over R, G, B jointly (peak 255), per frame, averaged over
  frames.  A frame with MSE 0 is capped at :data:`PSNR_MAX_DB` (100 dB).
* ``psnr_y``    - PSNR of full-range BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B``
  (float, not rounded, peak 255), same averaging and cap.
* ``ms_ssim``   - MS-SSIM (``pytorch_msssim``, 5 scales, 11x11 Gaussian window,
  data_range 255) on RGB, mean over channels, then frames.  Five scales need
  both sides >= 161 px; smaller frames fall back to single-scale SSIM and the
  result's ``name`` says so.
* ``vmaf``      - VMAF v0.6.1 through ``vmaf-torch`` (a PyTorch port that agrees
  with libvmaf within ~0.06 points).  It sees the 8-bit limited-range BT.601
  luma plane that an rgb24 -> yuv420p conversion would give (what libvmaf gets
  from ffmpeg), with the motion feature taken across the whole clip; per-frame
  scores are clipped to [0, 100] like libvmaf and averaged.  Needs both sides
  >= 17 px.  At small resolutions use it for relative comparisons only.
* ``lpips``     - LPIPS v0.1 (``lpips`` package; linear heads ship with the
  package) with an AlexNet (default, the authors' recommended forward metric)
  or VGG16 trunk; inputs scaled to [-1, 1].
* ``dists``     - DISTS (``DISTS_pytorch``; alpha/beta ship with the package) on a
  VGG16 trunk; inputs scaled to [0, 1].
* ``cvvdp``     - ColorVideoVDP (``cvvdp`` package, module ``pycvvdp``): a
  perceptual video metric in JOD units (10 = no visible difference, higher is
  better) that models the display and the viewer's spatio-temporal and colour
  vision; needs the frame rate.  Display model :data:`CVVDP_DISPLAY`.  No
  downloads: its parameters ship with the package.

LPIPS and DISTS need torchvision's ImageNet backbone weights (VGG16 / AlexNet).  They are
read from ``$GLVC_VGG16_WEIGHTS`` / ``$GLVC_ALEXNET_WEIGHTS`` when set, else from the torch
hub cache (``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` and
``alexnet-owt-7be5be79.pth``); when neither exists they are downloaded there the way
torchvision does it (``torch.hub.download_url_to_file`` with the sha256 prefix in the file
name checked; a mismatching file is not kept) from torchvision's URLs or
``$GLVC_VGG16_URL`` / ``$GLVC_ALEXNET_URL``.  ``$GLVC_WEIGHTS_DOWNLOAD=0`` turns downloads
off.  Offline, the connection attempt gives up after :data:`WEIGHTS_CONNECT_TIMEOUT_S` and
the failure is remembered for :data:`WEIGHTS_RETRY_AFTER_S`, so requests answer at once.
The networks are built without weights and the backbone is loaded by hand.  When the weights
cannot be had the metric is reported unavailable - never computed from random weights.
Tests may inject a backbone explicitly (``backbone_state_dict=`` or ``model=``).

Networks are cached at module level per (metric, device, weights file): they
are stateless at inference, and loading VGG16 takes seconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "MetricValue",
    "MetricUnavailable",
    "PSNR_MAX_DB",
    "MS_SSIM_MIN_SIDE",
    "NET_MAX_PIXELS_PER_BATCH",
    "VMAF_MIN_SIDE",
    "ALL_METRICS",
    "psnr_rgb",
    "psnr_y",
    "ms_ssim",
    "vmaf",
    "lpips",
    "dists",
    "cvvdp",
    "CVVDP_DISPLAY",
    "compute_all",
    "format_results",
    "backbone_weights_path",
    "fetch_backbone",
    "weights_url",
    "clear_model_cache",
    "rgb_to_y_bt601_full",
    "rgb_to_y_bt601_limited",
]

PSNR_MAX_DB = 100.0
"""Per-frame PSNR cap (dB) used when a frame is reproduced exactly (MSE = 0)."""

MS_SSIM_MIN_SIDE = 161
"""pytorch_msssim with 5 scales and an 11 px window needs both sides > (11 - 1) * 2**4."""

VMAF_MIN_SIDE = 17
"""Smallest side vmaf-torch's 4-scale ADM/VIF accepts (measured: 16 px fails)."""

ALL_METRICS = ("psnr", "psnr_y", "ms_ssim", "vmaf", "lpips", "dists", "cvvdp")
"""Default metric keys of :func:`compute_all`.  Also accepted: ``lpips_alex``, ``lpips_vgg``."""

_FILE_ENV = {"vgg16": "GLVC_VGG16_WEIGHTS", "alexnet": "GLVC_ALEXNET_WEIGHTS"}
_URL_ENV = {"vgg16": "GLVC_VGG16_URL", "alexnet": "GLVC_ALEXNET_URL"}
_N_CONV = {"vgg16": 13, "alexnet": 5}


# ---------------------------------------------------------------------------
# result type


@dataclass(frozen=True)
class MetricValue:
    """One metric over one clip.

    ``value`` is the clip score (mean over frames) or ``None`` when the metric
    is unavailable, in which case ``unavailable_reason`` says why.
    ``per_frame`` holds the per-frame scores (length T) when computed.
    ``str()`` gives ``"0.1234"`` or ``"unavailable: <reason>"``.
    """

    name: str
    value: float | None
    unavailable_reason: str | None = None
    per_frame: tuple[float, ...] | None = None

    @property
    def available(self) -> bool:
        return self.value is not None

    def __str__(self) -> str:
        if self.value is None:
            return f"unavailable: {self.unavailable_reason}"
        return f"{self.value:.4f}"

    def __float__(self) -> float:
        if self.value is None:
            raise ValueError(f"{self.name} is unavailable: {self.unavailable_reason}")
        return float(self.value)


class MetricUnavailable(RuntimeError):
    """Raised internally when a metric cannot be computed honestly (e.g. no backbone weights)."""


def _value(name: str, per_frame: Sequence[float]) -> MetricValue:
    pf = tuple(float(v) for v in per_frame)
    return MetricValue(name=name, value=float(np.mean(pf)), per_frame=pf)


def _unavailable(name: str, reason: str) -> MetricValue:
    return MetricValue(name=name, value=None, unavailable_reason=reason)


# ---------------------------------------------------------------------------
# input handling


def _check_pair(ref: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise to (T, H, W, 3) uint8."""
    ref = np.asarray(ref)
    dist = np.asarray(dist)
    if ref.ndim == 3:
        ref = ref[None]
    if dist.ndim == 3:
        dist = dist[None]
    for label, a in (("ref", ref), ("dist", dist)):
        if a.dtype != np.uint8:
            raise TypeError(f"{label} must be uint8 RGB 0-255, got dtype {a.dtype}")
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"{label} must have shape (T, H, W, 3), got {a.shape}")
        if a.shape[0] < 1 or a.shape[1] < 1 or a.shape[2] < 1:
            raise ValueError(f"{label} is empty: shape {a.shape}")
    if ref.shape != dist.shape:
        raise ValueError(f"ref and dist shapes differ: {ref.shape} vs {dist.shape}")
    return ref, dist


def _chunks(n: int, batch_frames: int) -> Iterable[tuple[int, int]]:
    if batch_frames < 1:
        raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
    for s in range(0, n, batch_frames):
        yield s, min(n, s + batch_frames)


NET_MAX_PIXELS_PER_BATCH = 1_000_000
"""LPIPS/DISTS process at most this many pixels per forward pass (VGG16's first
layers hold 64 float32 channels per pixel, ~0.25 GB per activation per Mpx), so
``batch_frames`` is reduced for large frames; at least one frame per pass."""


def _net_batch(batch_frames: int, h: int, w: int) -> int:
    return max(1, min(batch_frames, NET_MAX_PIXELS_PER_BATCH // (h * w)))


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_nchw(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in 0-255 on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return t.permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------
# PSNR


def rgb_to_y_bt601_full(frames: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` as float32 0-255, shape (..., H, W)."""
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def rgb_to_y_bt601_limited(frames: np.ndarray) -> np.ndarray:
    """8-bit limited-range BT.601 luma (16-235), rounded, as float32, shape (..., H, W).

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` - the Y plane an
    rgb24 -> yuv420p (BT.601, "tv" range) conversion produces.
    """
    f = frames.astype(np.float32)
    y = 16.0 + (65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]) / 255.0
    return np.clip(np.round(y), 0, 255).astype(np.float32)


def _psnr_from_mse(mse: np.ndarray) -> np.ndarray:
    out = np.full(mse.shape, PSNR_MAX_DB, dtype=np.float64)
    nz = mse > 0
    out[nz] = np.minimum(PSNR_MAX_DB, 10.0 * np.log10(255.0**2 / mse[nz]))
    return out


def psnr_rgb(ref: np.ndarray, dist: np.ndarray, batch_frames: int = 8) -> MetricValue:
    """PSNR (dB) over R, G, B jointly, peak 255: mean over frames of per-frame PSNR (cap 100 dB)."""
    ref, dist = _check_pair(ref, dist)
    per = []
    for s, e in _chunks(ref.shape[0], batch_frames):
        d = ref[s:e].astype(np.float64) - dist[s:e].astype(np.float64)
        per.append(_psnr_from_mse((d * d).mean(axis=(1, 2, 3))))
    return _value("PSNR-RGB", np.concatenate(per))


def psnr_y(ref: np.ndarray, dist: np.ndarray, batch_frames: int = 8) -> MetricValue:
    """PSNR (dB) of full-range BT.601 luma (float, peak 255), mean of per-frame PSNR (cap 100 dB)."""
    ref, dist = _check_pair(ref, dist)
    per = []
    for s, e in _chunks(ref.shape[0], batch_frames):
        d = rgb_to_y_bt601_full(ref[s:e]).astype(np.float64) - rgb_to_y_bt601_full(dist[s:e])
        per.append(_psnr_from_mse((d * d).mean(axis=(1, 2))))
    return _value("PSNR-Y", np.concatenate(per))


# ---------------------------------------------------------------------------
# MS-SSIM / SSIM


def ms_ssim(
    ref: np.ndarray,
    dist: np.ndarray,
    device: str | torch.device | None = None,
    batch_frames: int = 8,
) -> MetricValue:
    """MS-SSIM on RGB 0-255 (data_range 255), mean over channels and frames.

    Falls back to single-scale SSIM when a side is < 161 px (result name
    ``"SSIM (frame too small for MS-SSIM: HxW < 161 px)"``); below 11 px the
    Gaussian window shrinks to the largest odd size that fits (named too).
    """
    import pytorch_msssim

    ref, dist = _check_pair(ref, dist)
    dev = _resolve_device(device)
    h, w = ref.shape[1:3]
    side = min(h, w)
    if side >= MS_SSIM_MIN_SIDE:
        name = "MS-SSIM"

        def fn(x, y):
            return pytorch_msssim.ms_ssim(x, y, data_range=255.0, size_average=False)

    else:
        win = 11 if side >= 11 else (side if side % 2 == 1 else side - 1)
        name = f"SSIM (frame too small for MS-SSIM: {h}x{w}, needs >= {MS_SSIM_MIN_SIDE} px per side)"
        if win != 11:
            name = name[:-1] + f"; {win}x{win} window)"

        def fn(x, y, win=win):
            return pytorch_msssim.ssim(x, y, data_range=255.0, size_average=False, win_size=win)

    per = []
    with torch.inference_mode():
        for s, e in _chunks(ref.shape[0], batch_frames):
            v = fn(_to_nchw(ref[s:e], dev), _to_nchw(dist[s:e], dev))
            per.extend(v.double().cpu().reshape(-1).tolist())
    return _value(name, per)


# ---------------------------------------------------------------------------
# network cache

_CACHE: dict[tuple, torch.nn.Module] = {}
_CACHE_LOCK = threading.Lock()
_HASH_OK: dict[tuple[str, float, int], bool] = {}


def clear_model_cache() -> None:
    """Drop all cached networks (VMAF, LPIPS, DISTS, ColorVideoVDP), weight-file checks and
    remembered download failures."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _HASH_OK.clear()
    with _FETCH_LOCK:
        _FETCHES.clear()


def _cached(key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with _CACHE_LOCK:
        m = _CACHE.get(key)
        if m is None:
            m = build()
            _CACHE[key] = m
        return m


# ---------------------------------------------------------------------------
# VMAF


def _vmaf_model(device: torch.device) -> torch.nn.Module:
    def build():
        import vmaf_torch

        return vmaf_torch.VMAF(temporal_pooling=False, enable_motion=True, clip_score=True).to(device).eval()

    return _cached(("vmaf", str(device)), build)


def vmaf(
    ref: np.ndarray,
    dist: np.ndarray,
    device: str | torch.device | None = None,
    batch_frames: int = 8,
) -> MetricValue:
    """VMAF v0.6.1 (vmaf-torch), per-frame scores clipped to [0, 100] and averaged.

    Input to the model: 8-bit limited-range BT.601 Y planes, (N, 1, H, W)
    float 0-255.  Frames are processed in chunks of ``batch_frames`` with one
    frame of context on each side, so the motion2 feature (min of the SAD to
    the previous and next reference frame; 0 for the first frame) is the same
    as for the whole clip at once.  Unavailable when a side is < 17 px.
    """
    ref, dist = _check_pair(ref, dist)
    t, h, w = ref.shape[:3]
    if min(h, w) < VMAF_MIN_SIDE:
        return _unavailable("VMAF", f"frame {h}x{w} too small for VMAF (needs >= {VMAF_MIN_SIDE} px per side)")
    dev = _resolve_device(device)
    model = _vmaf_model(dev)
    per: list[float] = []
    with torch.inference_mode():
        for s, e in _chunks(t, batch_frames):
            lo, hi = max(0, s - 1), min(t, e + 1)
            yr = torch.from_numpy(rgb_to_y_bt601_limited(ref[lo:hi])).to(dev)[:, None]
            yd = torch.from_numpy(rgb_to_y_bt601_limited(dist[lo:hi])).to(dev)[:, None]
            scores = model(yr, yd).double().cpu().reshape(-1)
            per.extend(scores[s - lo : e - lo].tolist())
    return _value("VMAF", per)


# ---------------------------------------------------------------------------
# ColorVideoVDP

CVVDP_DISPLAY = "standard_fhd"
"""ColorVideoVDP display model: cvvdp's ``standard_fhd``, a 24-inch 1920x1080 monitor with a peak
luminance of 200 cd/m^2 and 1000:1 contrast, in office light (250 lux), seen from 0.6 m.  Frames
are shown pixel for pixel (a 426x240 clip covers a small part of that screen), not scaled up."""

CVVDP_MIN_SIDE = 2
"""Smallest side ColorVideoVDP 0.5.7 accepts (measured: a 1x1 frame fails inside the package)."""


def _cvvdp_model(display: str, device: torch.device):
    """``(pycvvdp.cvvdp, lock)``, cached per display and device.  ``predict`` keeps per-call state
    on the object (temporal filters for the frame rate, the pyramid for the frame size), so calls
    on one object are serialised by the lock."""

    def build():
        import pycvvdp

        return pycvvdp.cvvdp(display_name=display, device=device, quiet=True), threading.Lock()

    return _cached(("cvvdp", display, str(device)), build)


def cvvdp(
    ref: np.ndarray,
    dist: np.ndarray,
    fps: float,
    device: str | torch.device | None = None,
    display: str = CVVDP_DISPLAY,
) -> MetricValue:
    """ColorVideoVDP 0.5.7 in JOD (10 = no visible difference; higher is better).

    ``fps``: the clip's frame rate (frames per second, > 0), which sets the temporal filters.
    ``ref``/``dist`` go to ``pycvvdp.cvvdp(display_name=display).predict(dist, ref,
    dim_order="FHWC", frames_per_second=fps)`` as uint8 tensors, i.e. sRGB-encoded pixels on the
    display model (:data:`CVVDP_DISPLAY`).  One clip score, pooled over time by the metric: no
    per-frame scores.  Unavailable when a side is < :data:`CVVDP_MIN_SIDE` px.  Cost on a CPU:
    about 1.8 CPU-seconds per 426x240 frame (docs/metrics.md).
    """
    ref, dist = _check_pair(ref, dist)
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        raise TypeError(f"fps must be a number of frames per second, got {fps!r}") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    t, h, w = ref.shape[:3]
    name = "ColorVideoVDP"
    if min(h, w) < CVVDP_MIN_SIDE:
        return _unavailable(name, f"frame {h}x{w} too small for ColorVideoVDP (needs >= {CVVDP_MIN_SIDE} px per side)")
    dev = _resolve_device(device)
    model, lock = _cvvdp_model(display, dev)
    with lock, torch.no_grad():
        jod, _ = model.predict(torch.from_numpy(np.ascontiguousarray(dist)), torch.from_numpy(np.ascontiguousarray(ref)),
                               dim_order="FHWC", frames_per_second=rate)
    value = float(jod)
    if not math.isfinite(value):
        return _unavailable(name, f"ColorVideoVDP returned {value} for {t} frames {w}x{h}")
    return MetricValue(name=name, value=value)


# ---------------------------------------------------------------------------
# backbone weights


def weights_url(arch: str) -> str:
    """Where the ImageNet weights of ``arch`` ('vgg16' | 'alexnet') are downloaded from.

    ``$GLVC_VGG16_URL`` / ``$GLVC_ALEXNET_URL`` when set (e.g. a mirror), else torchvision's
    ``VGG16_Weights.IMAGENET1K_V1`` / ``AlexNet_Weights.IMAGENET1K_V1`` URL.  The file name
    follows torch hub's convention ``name-<sha256 prefix>.pth``; the download is checked
    against that prefix and cached under that name.
    """
    url = os.environ.get(_URL_ENV[arch])
    if url:
        return url
    import torchvision.models as tvm

    return {"vgg16": tvm.VGG16_Weights, "alexnet": tvm.AlexNet_Weights}[arch].IMAGENET1K_V1.url


def _hub_file_name(arch: str) -> str:
    return os.path.basename(urllib.parse.urlparse(weights_url(arch)).path)


def _hub_path(arch: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", _hub_file_name(arch))


def backbone_weights_path(arch: str) -> tuple[str | None, str]:
    """Where the ImageNet weights of ``arch`` ('vgg16' | 'alexnet') would be read from.

    Returns ``(path or None, explanation)``; ``None`` when no file exists (nothing is
    downloaded here, see :func:`fetch_backbone`).
    """
    env = _FILE_ENV[arch]
    p = os.environ.get(env)
    if p:
        if os.path.isfile(p):
            return p, f"${env}={p}"
        return None, f"${env} points to {p!r}, which is not a file"
    hub = _hub_path(arch)
    if os.path.isfile(hub):
        return hub, hub
    return None, f"ImageNet {arch} weights not found: no {hub} and ${env} unset"


def _hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix in a torch hub file name (``vgg16-397923af.pth`` -> ``397923af``)."""
    m = torch.hub.HASH_REGEX.search(file_name)
    return m.group(1) if m and m.group(1) else None


def _check_canonical_hash(path: str, arch: str) -> None:
    """A file named like the download (``name-<sha256 prefix>.pth``) must match that prefix."""
    fname = _hub_file_name(arch)
    expected = _hash_prefix(fname)
    if os.path.basename(path) != fname or expected is None:
        return
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if _HASH_OK.get(key):
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if not h.hexdigest().startswith(expected):
        raise MetricUnavailable(
            f"{path} has sha256 {h.hexdigest()[:16]}..., expected prefix {expected}: not the ImageNet {arch} weights"
        )
    _HASH_OK[key] = True


WEIGHTS_CONNECT_TIMEOUT_S = 3.0
"""Seconds to wait for a connection to the weights server (name lookup included) before
LPIPS/DISTS answer "unavailable"."""

WEIGHTS_RETRY_AFTER_S = 600.0
"""After a failed download, requests answer "unavailable" at once for this many seconds
(per process) instead of trying again."""

WEIGHTS_DOWNLOAD_WAIT_S = 600.0
"""Longest a request waits for a running download (VGG16: 528 MB, AlexNet: 233 MB); after
that it answers "unavailable" and the download carries on in the background."""

WEIGHTS_STALL_S = 10.0
"""A download that receives no data for this many seconds (e.g. a proxy that accepts the
connection and never answers) counts as failed for the waiting requests."""


class _Fetch:
    """One download of a backbone file into the torch hub cache, in a daemon thread.

    The thread first opens a TCP connection with :data:`WEIGHTS_CONNECT_TIMEOUT_S` (so an
    offline machine fails fast), then calls ``torch.hub.download_url_to_file`` with the sha256
    prefix from the file name (torch hub's ``check_hash``): a file that does not match is
    removed, never cached.  ``connected`` is set once connected or finished, ``done`` when
    finished.  ``torch.hub`` reads without a timeout, so waiting requests watch its
    ``<dst>.<id>.partial`` file grow instead (:meth:`wait`).
    """

    def __init__(self, url: str, dst: str):
        self.url, self.dst = url, dst
        self.started = time.monotonic()
        self.connected = threading.Event()
        self.done = threading.Event()
        self.error: str | None = None
        self.finished: float | None = None
        self.stalled: tuple[str, float] | None = None
        threading.Thread(target=self._run, name=f"glvc-fetch-{os.path.basename(dst)}", daemon=True).start()

    def _run(self) -> None:
        try:
            parts = urllib.parse.urlparse(self.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            socket.create_connection((parts.hostname, port), timeout=WEIGHTS_CONNECT_TIMEOUT_S).close()
            self.connected.set()
            os.makedirs(os.path.dirname(self.dst), exist_ok=True)
            torch.hub.download_url_to_file(self.url, self.dst, hash_prefix=_hash_prefix(os.path.basename(self.dst)), progress=False)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the metric's reason
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished = time.monotonic()
            self.done.set()
            self.connected.set()

    def _received(self) -> int:
        folder, name = os.path.split(self.dst)
        try:
            return sum(e.stat().st_size for e in os.scandir(folder) if e.name.startswith(name + ".") and e.name.endswith(".partial"))
        except OSError:
            return 0

    def wait(self) -> None:
        """Block until connected, then until done, stalled or :data:`WEIGHTS_DOWNLOAD_WAIT_S` is up."""
        self.connected.wait(max(0.0, self.started + WEIGHTS_CONNECT_TIMEOUT_S + 1.0 - time.monotonic()))
        if not self.connected.is_set():
            return
        size, changed = -1, time.monotonic()
        while self.stalled is None and not self.done.wait(min(1.0, WEIGHTS_STALL_S / 4)):
            now = time.monotonic()
            if now - self.started >= WEIGHTS_DOWNLOAD_WAIT_S:
                return
            received = self._received()
            if received != size:
                size, changed = received, now
            elif now - changed >= WEIGHTS_STALL_S:
                self.stalled = (f"no data for {WEIGHTS_STALL_S:g} s after {received:,} bytes", now)

    def failure(self, now: float) -> tuple[str, float] | None:
        """``(reason, when)`` if this attempt has failed by ``now`` (or cannot connect in time)."""
        if self.done.is_set():
            return (self.error, self.finished) if self.error else None
        if self.stalled is not None:
            return self.stalled
        deadline = self.started + WEIGHTS_CONNECT_TIMEOUT_S + 1.0
        if not self.connected.is_set() and now >= deadline:
            return f"no connection within {WEIGHTS_CONNECT_TIMEOUT_S:g} s", deadline
        return None


_FETCHES: dict[str, _Fetch] = {}  # url -> latest attempt
_FETCH_LOCK = threading.Lock()


def fetch_backbone(arch: str) -> str:
    """Download ``arch``'s ImageNet weights into the torch hub cache (:func:`weights_url`) and
    return the file's path; raises :class:`MetricUnavailable` with the reason when that fails.

    Off when ``$GLVC_WEIGHTS_DOWNLOAD=0``.  One attempt at a time per URL; a failure is
    remembered for :data:`WEIGHTS_RETRY_AFTER_S` seconds, during which this answers at once.
    """
    url = weights_url(arch)
    if os.environ.get("GLVC_WEIGHTS_DOWNLOAD", "1").strip().lower() in ("0", "no", "false", "off"):
        raise MetricUnavailable(f"downloads are off ($GLVC_WEIGHTS_DOWNLOAD={os.environ['GLVC_WEIGHTS_DOWNLOAD']})")
    dst = _hub_path(arch)
    with _FETCH_LOCK:
        now = time.monotonic()
        f = _FETCHES.get(url)
        failed = f.failure(now) if f is not None else None
        if failed is not None and now - failed[1] < WEIGHTS_RETRY_AFTER_S:
            raise MetricUnavailable(
                f"download from {url} failed {now - failed[1]:.0f} s ago ({failed[0]}); "
                f"no new try for {WEIGHTS_RETRY_AFTER_S - (now - failed[1]):.0f} s"
            )
        if f is None or failed is not None or (f.done.is_set() and not os.path.isfile(dst)):
            f = _FETCHES[url] = _Fetch(url, dst)
    f.wait()
    failed = f.failure(time.monotonic())
    if failed is not None:
        raise MetricUnavailable(f"download from {url} failed ({failed[0]})")
    if not f.done.is_set():
        raise MetricUnavailable(f"still downloading {url} (started {time.monotonic() - f.started:.0f} s ago)")
    if not os.path.isfile(dst):
        raise MetricUnavailable(f"downloaded {url}, but {dst} is missing")
    return dst


def _weights_file(arch: str) -> str:
    """The weights file of ``arch``: given, cached, or downloaded now; else MetricUnavailable."""
    path, why = backbone_weights_path(arch)
    if path is not None:
        return path
    if os.environ.get(_FILE_ENV[arch]):  # a file was named: no download in its place
        raise MetricUnavailable(why)
    try:
        return fetch_backbone(arch)
    except MetricUnavailable as exc:
        raise MetricUnavailable(f"{why}; {exc}") from None


def _load_backbone_file(arch: str, path: str) -> dict:
    _check_canonical_hash(path, arch)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / not a state dict
        raise MetricUnavailable(f"cannot read {arch} weights {path}: {exc}") from exc
    if not isinstance(sd, Mapping):
        raise MetricUnavailable(f"{path} holds a {type(sd).__name__}, not a state dict")
    return dict(sd)


def _load_conv_backbone(containers: Sequence[torch.nn.Module], state_dict: Mapping, arch: str) -> None:
    """Copy torchvision ``features.<i>.{weight,bias}`` into the conv layers of ``containers``.

    lpips' ``slice*`` and DISTS' ``stage*`` Sequentials keep torchvision's
    feature indices as child names, so child ``"<i>"`` <- ``features.<i>``.
    Raises MetricUnavailable if keys are missing or shapes differ.
    """
    n = 0
    for cont in containers:
        for name, child in cont.named_children():
            if not isinstance(child, torch.nn.Conv2d):
                continue
            for pname in ("weight", "bias"):
                src = None
                for k in (f"features.{name}.{pname}", f"{name}.{pname}"):
                    if k in state_dict:
                        src = state_dict[k]
                        break
                if src is None:
                    raise MetricUnavailable(f"{arch} weights lack features.{name}.{pname}")
                dst = getattr(child, pname)
                if tuple(src.shape) != tuple(dst.shape):
                    raise MetricUnavailable(
                        f"{arch} weights features.{name}.{pname} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}"
                    )
                with torch.no_grad():
                    dst.copy_(src.to(dst.dtype))
            n += 1
    if n != _N_CONV[arch]:
        raise RuntimeError(f"loaded {n} conv layers into the {arch} trunk, expected {_N_CONV[arch]}")


# ---------------------------------------------------------------------------
# LPIPS

_LPIPS_ARCH = {"alex": "alexnet", "vgg": "vgg16"}


def _build_lpips(net: str, state_dict: Mapping, device: torch.device) -> torch.nn.Module:
    import lpips as lpips_pkg

    with warnings.catch_warnings():
        # torchvision's deprecation warning for pretrained=False (which lpips passes when pnet_rand=True)
        warnings.simplefilter("ignore", UserWarning)
        m = lpips_pkg.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    _load_conv_backbone(list(m.net.children()), state_dict, _LPIPS_ARCH[net])
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(device).eval()


def _trunk_metric_model(
    model: torch.nn.Module | None,
    backbone_state_dict: Mapping | None,
    arch: str,
    key: tuple,
    device: torch.device,
    build: Callable[[Mapping], torch.nn.Module],
) -> torch.nn.Module:
    """The network of a metric built on an ImageNet trunk (LPIPS, DISTS): ``model`` as given; else
    ``build(backbone_state_dict)`` (uncached, for tests); else built from the trunk's weights file
    (:func:`backbone_weights_path`, else downloaded by :func:`fetch_backbone`) and cached per
    file and device.  Raises :class:`MetricUnavailable` when there is no weights file."""
    if model is not None:
        return model.to(device).eval()
    if backbone_state_dict is not None:
        return build(backbone_state_dict)
    path = _weights_file(arch)
    st = os.stat(path)
    return _cached((*key, str(device), path, st.st_mtime, st.st_size), lambda: build(_load_backbone_file(arch, path)))


def _score_frames(
    model: torch.nn.Module,
    ref: np.ndarray,
    dist: np.ndarray,
    device: torch.device,
    batch_frames: int,
    scale: Callable[[torch.Tensor], torch.Tensor],
) -> list[float]:
    """``model(scale(ref), scale(dist))`` per frame, in batches of frames that bound the memory."""
    per: list[float] = []
    with torch.inference_mode():
        for s, e in _chunks(ref.shape[0], _net_batch(batch_frames, *ref.shape[1:3])):
            x, y = scale(_to_nchw(ref[s:e], device)), scale(_to_nchw(dist[s:e], device))
            per.extend(model(x, y).double().cpu().reshape(-1).tolist())
    return per


def lpips(
    ref: np.ndarray,
    dist: np.ndarray,
    net: str = "alex",
    device: str | torch.device | None = None,
    batch_frames: int = 8,
    backbone_state_dict: Mapping | None = None,
    model: torch.nn.Module | None = None,
) -> MetricValue:
    """LPIPS v0.1 (lower is better), per frame on RGB scaled to [-1, 1], mean over frames.

    ``net``: ``"alex"`` (default) or ``"vgg"``.  The trunk's ImageNet weights
    come from :func:`backbone_weights_path`; absent -> unavailable.  For tests:
    ``backbone_state_dict`` (torchvision ``features.*`` keys) builds an
    uncached model with that trunk; ``model`` uses a ready ``lpips.LPIPS``.
    """
    if net not in _LPIPS_ARCH:
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    name = f"LPIPS-{'Alex' if net == 'alex' else 'VGG'}"
    ref, dist = _check_pair(ref, dist)
    dev = _resolve_device(device)
    try:
        model = _trunk_metric_model(model, backbone_state_dict, _LPIPS_ARCH[net], ("lpips", net), dev,
                                    lambda state_dict: _build_lpips(net, state_dict, dev))
    except MetricUnavailable as exc:
        return _unavailable(name, str(exc))
    return _value(name, _score_frames(model, ref, dist, dev, batch_frames, lambda x: x / 127.5 - 1.0))


# ---------------------------------------------------------------------------
# DISTS


def _dists_alpha_beta() -> tuple[torch.Tensor, torch.Tensor]:
    import DISTS_pytorch

    candidates = [
        os.path.join(os.path.dirname(DISTS_pytorch.__file__), "weights.pt"),
        os.path.join(sys.prefix, "weights.pt"),  # where DISTS_pytorch itself looks
    ]
    for p in candidates:
        if os.path.isfile(p):
            w = torch.load(p, map_location="cpu", weights_only=True)
            return w["alpha"], w["beta"]
    raise MetricUnavailable(f"DISTS alpha/beta weights.pt not found in {candidates}")


def _vgg16_features() -> torch.nn.Sequential:
    """torchvision VGG16 ``features`` with random init (no download, no classifier)."""
    import torchvision

    try:
        from torchvision.models.vgg import cfgs, make_layers

        return make_layers(cfgs["D"], batch_norm=False)
    except ImportError:  # pragma: no cover - older/newer torchvision layout
        return torchvision.models.vgg16(weights=None).features


def _dists_class():
    from DISTS_pytorch import DISTS
    from DISTS_pytorch.DISTS_pt import L2pooling

    class LocalDISTS(DISTS):
        """DISTS_pytorch.DISTS with the same layers and forward, built without a download.

        The package's ``__init__`` calls ``torchvision.models.vgg16(pretrained=True)``
        (a download) and reads alpha/beta from ``sys.prefix``; this one takes the
        VGG trunk and alpha/beta as arguments.  ``forward`` is inherited unchanged.
        """

        def __init__(self, vgg_state_dict: Mapping, alpha: torch.Tensor, beta: torch.Tensor):
            torch.nn.Module.__init__(self)
            feats = _vgg16_features()
            self.stage1 = torch.nn.Sequential()
            self.stage2 = torch.nn.Sequential()
            self.stage3 = torch.nn.Sequential()
            self.stage4 = torch.nn.Sequential()
            self.stage5 = torch.nn.Sequential()
            for x in range(0, 4):
                self.stage1.add_module(str(x), feats[x])
            self.stage2.add_module(str(4), L2pooling(channels=64))
            for x in range(5, 9):
                self.stage2.add_module(str(x), feats[x])
            self.stage3.add_module(str(9), L2pooling(channels=128))
            for x in range(10, 16):
                self.stage3.add_module(str(x), feats[x])
            self.stage4.add_module(str(16), L2pooling(channels=256))
            for x in range(17, 23):
                self.stage4.add_module(str(x), feats[x])
            self.stage5.add_module(str(23), L2pooling(channels=512))
            for x in range(24, 30):
                self.stage5.add_module(str(x), feats[x])
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
            self.chns = [3, 64, 128, 256, 512, 512]
            if tuple(alpha.shape) != (1, sum(self.chns), 1, 1) or tuple(beta.shape) != tuple(alpha.shape):
                raise MetricUnavailable(
                    f"DISTS alpha/beta shapes {tuple(alpha.shape)}/{tuple(beta.shape)}, expected (1, {sum(self.chns)}, 1, 1)"
                )
            self.register_parameter("alpha", torch.nn.Parameter(alpha.clone().float()))
            self.register_parameter("beta", torch.nn.Parameter(beta.clone().float()))
            _load_conv_backbone([self.stage1, self.stage2, self.stage3, self.stage4, self.stage5], vgg_state_dict, "vgg16")
            for p in self.parameters():
                p.requires_grad_(False)

    return LocalDISTS


def _build_dists(state_dict: Mapping, device: torch.device) -> torch.nn.Module:
    alpha, beta = _dists_alpha_beta()
    return _dists_class()(state_dict, alpha, beta).to(device).eval()


def dists(
    ref: np.ndarray,
    dist: np.ndarray,
    device: str | torch.device | None = None,
    batch_frames: int = 8,
    backbone_state_dict: Mapping | None = None,
    model: torch.nn.Module | None = None,
) -> MetricValue:
    """DISTS (lower is better), per frame on RGB scaled to [0, 1], mean over frames.

    The VGG16 trunk's ImageNet weights come from :func:`backbone_weights_path`;
    absent -> unavailable.  Tests may pass ``backbone_state_dict``
    (torchvision ``features.*`` keys) or a ready ``model`` (a DISTS module).
    """
    name = "DISTS"
    ref, dist = _check_pair(ref, dist)
    dev = _resolve_device(device)
    try:
        model = _trunk_metric_model(model, backbone_state_dict, "vgg16", ("dists",), dev,
                                    lambda state_dict: _build_dists(state_dict, dev))
    except MetricUnavailable as exc:
        return _unavailable(name, str(exc))
    return _value(name, _score_frames(model, ref, dist, dev, batch_frames, lambda x: x / 255.0))


# ---------------------------------------------------------------------------
# all together


def compute_all(
    ref: np.ndarray,
    dist: np.ndarray,
    metrics: Sequence[str] = ALL_METRICS,
    device: str | torch.device | None = None,
    batch_frames: int = 8,
    fps: float | None = None,
) -> dict[str, MetricValue]:
    """Compute several metrics; returns ``{key: MetricValue}`` in the order asked.

    Keys: ``psnr`` (RGB), ``psnr_y``, ``ms_ssim`` (SSIM fallback on small
    frames), ``vmaf``, ``lpips`` (= ``lpips_alex``), ``lpips_vgg``, ``dists``,
    ``cvvdp`` (needs ``fps``, the clip's frame rate; without it a clip of more
    than one frame gets ``cvvdp`` unavailable).
    Each metric walks the clip in chunks of ``batch_frames`` frames (fewer for
    LPIPS/DISTS on large frames, see :data:`NET_MAX_PIXELS_PER_BATCH`; ColorVideoVDP
    one frame at a time on a CPU), so memory is bounded by the chunk, on ``device``
    (default: CUDA if available, else CPU).  Metrics that cannot be computed come back
    with ``value=None`` and a reason instead of raising.
    """
    ref, dist = _check_pair(ref, dist)
    dev = _resolve_device(device)

    def video_metric() -> MetricValue:
        if fps is None and ref.shape[0] > 1:
            return _unavailable("ColorVideoVDP", "the clip's frame rate was not given (compute_all(..., fps=))")
        return cvvdp(ref, dist, fps if fps is not None else 1.0, device=dev)

    table: dict[str, Callable[[], MetricValue]] = {
        "psnr": lambda: psnr_rgb(ref, dist, batch_frames=batch_frames),
        "psnr_rgb": lambda: psnr_rgb(ref, dist, batch_frames=batch_frames),
        "psnr_y": lambda: psnr_y(ref, dist, batch_frames=batch_frames),
        "ms_ssim": lambda: ms_ssim(ref, dist, device=dev, batch_frames=batch_frames),
        "vmaf": lambda: vmaf(ref, dist, device=dev, batch_frames=batch_frames),
        "lpips": lambda: lpips(ref, dist, net="alex", device=dev, batch_frames=batch_frames),
        "lpips_alex": lambda: lpips(ref, dist, net="alex", device=dev, batch_frames=batch_frames),
        "lpips_vgg": lambda: lpips(ref, dist, net="vgg", device=dev, batch_frames=batch_frames),
        "dists": lambda: dists(ref, dist, device=dev, batch_frames=batch_frames),
        "cvvdp": video_metric,
    }
    unknown = [m for m in metrics if m not in table]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(table)}")
    return {m: table[m]() for m in metrics}


def format_results(results: Mapping[str, MetricValue]) -> str:
    """One line per metric, ``"<name>  <value or unavailable: reason>"`` (ColorVideoVDP with its
    unit and display model: ``"9.1234 JOD (standard_fhd display)"``)."""
    width = max((len(v.name) for v in results.values()), default=0)

    def text(v: MetricValue) -> str:
        if v.name == "ColorVideoVDP" and v.available:
            return f"{v} JOD ({CVVDP_DISPLAY} display)"
        return str(v)

    return "\n".join(f"{v.name:<{width}}  {text(v)}" for v in results.values())
