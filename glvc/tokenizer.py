"""The continuous video tokenizer: a causal video VAE from diffusers (``AutoencoderKLWan``).

The tokenizer maps video to latents and back::

    pixels (1, 3, T, H, W) float32 in [-1, 1], T = 1 + 4k, H and W multiples of ``spatial_stride``
      -> latents (1, C, 1 + k, H / s, W / s), normalised per channel with the VAE's
         ``latents_mean`` / ``latents_std`` (about zero mean, unit variance)

Latent frame 0 covers pixel frame 0; latent frame t >= 1 covers pixel frames 4t-3 .. 4t.

Streams. ``AutoencoderKLWan.encode``/``decode`` keep their causal convolution cache on the
module, so one model could not serve two users at once, and they hold the whole clip in
memory. :class:`EncoderStream` and :class:`DecoderStream` drive the same encoder and decoder
blocks chunk by chunk (1 frame, then 4 frames at a time, exactly as diffusers does) with a
cache that belongs to the stream. Memory is then bounded by one chunk, whatever the clip's
length, and the outputs equal ``encode``/``decode`` on the whole clip (tested).

Engines. How the float32 convolutions run on the CPU (``Tokenizer(engine=...)``, :data:`ENGINES`):

* ``"reference"``: as diffusers runs them. PyTorch then sends a 3-D convolution whose input has
  few frames and small maps (``N*C*T*H <= 20480``, the causal chunks' usual case) to its generic
  im2col kernel (``slow_conv3d``), 1.4-10x slower than oneDNN's on those shapes (measured on the
  bundled tokenizer at 240p); that kernel took about half of the tokenizer's time.
* ``"onednn"``: every 3-D convolution of a CPU tensor goes to oneDNN (``mkldnn_convolution``),
  still float32. The pixels differ from ``"reference"`` by float rounding only (the bound measured
  on the bundled model is in README's speed section); on other devices it equals ``"reference"``.
* ``"openvino"``: the encoder's and decoder's causal steps converted to OpenVINO graphs and run by
  its CPU plugin in float32 (:mod:`glvc.tokenizer_openvino`; converted once per model and machine,
  kept on disk). Pixels again within float rounding of the others. Where OpenVINO cannot take a
  VAE, or off the CPU, it runs as ``"onednn"`` (with a logged warning for the first case).

The engine changes pixels, not the bitstream: the latent codec always receives float32 latents and
runs its own deterministic path, so a stream made with one engine decodes with any other, and the
encoder's reconstruction equals the decoder's output bit for bit when both use the same engine on
the same machine (and, for ``"openvino"``, the same thread count). The engine is not written into
the stream. The default (:func:`default_engine`) is ``"openvino"`` where the package is installed,
else ``"onednn"`` where PyTorch has oneDNN, overridable with the environment variable
``GLVC_TOKENIZER_ENGINE``. The oneDNN engine is applied per call through a thread-local
``TorchFunctionMode``: the model is not modified, so one VAE can serve tokenizers of every engine.

Padding to ``1 + 4k`` frames and to a multiple of the spatial stride is the pipeline's job
(it must also record it in the bitstream); the streams check their inputs and say so.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, patchify, unpatchify

TEMPORAL_STRIDE = 4
ENGINES = ("reference", "onednn", "openvino")
ENGINE_ENV = "GLVC_TOKENIZER_ENGINE"


def default_engine() -> str:
    """``$GLVC_TOKENIZER_ENGINE`` if set, else ``"openvino"`` where it is installed, else ``"onednn"`` where
    PyTorch has oneDNN, else ``"reference"``."""
    engine = os.environ.get(ENGINE_ENV, "").strip()
    if engine:
        if engine not in ENGINES:
            raise ValueError(f"{ENGINE_ENV}={engine!r}: choose one of {', '.join(ENGINES)}")
        return engine
    from .tokenizer_openvino import available

    if available():
        return "openvino"
    return "onednn" if torch.backends.mkldnn.is_available() else "reference"


TOKENIZER_FAMILIES = {
    "AutoencoderKLWan": "glvc.tokenizer:Tokenizer",  # causal video VAE, 4x temporal
    "TinyAutoencoder": "glvc.tokenizer_taef:FrameTokenizer",  # per-frame 2-D autoencoder (TAEF2)
}
"""A tokenizer folder's ``config.json`` ``_class_name`` -> the class that runs it."""


def load_tokenizer(name_or_path: str, subfolder: str | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, engine: str | None = None, **kwargs):
    """Load a tokenizer of any family from a local folder or a Hub id: its ``config.json`` names the
    family (:data:`TOKENIZER_FAMILIES`). Returns a :class:`Tokenizer` or a
    :class:`glvc.tokenizer_taef.FrameTokenizer` (the same interface)."""
    config = AutoencoderKLWan.load_config(name_or_path, subfolder=subfolder, **kwargs)
    cls = _tokenizer_class(config.get("_class_name", "AutoencoderKLWan"), repr(name_or_path))
    return cls.from_pretrained(name_or_path, subfolder=subfolder, device=device, dtype=dtype, engine=engine, **kwargs)


def tokenizer_for(vae, device: str | torch.device = "cpu", engine: str | None = None):
    """The tokenizer that runs an autoencoder module of any family (training builds them from modules)."""
    return _tokenizer_class(type(vae).__name__, "this autoencoder")(vae, device=device, engine=engine)


def _tokenizer_class(kind: str, what: str):
    import importlib

    if kind not in TOKENIZER_FAMILIES:
        raise ValueError(f"tokenizer {what} is a {kind!r}; GLVC runs {', '.join(TOKENIZER_FAMILIES)}")
    module, name = TOKENIZER_FAMILIES[kind].split(":")
    return getattr(importlib.import_module(module), name)


class _OneDNNConv3d(torch.overrides.TorchFunctionMode):
    """Send ``F.conv3d`` on CPU float32 tensors to oneDNN whatever the shape; all else unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv3d:
            x, weight, bias, stride, padding, dilation, groups = _conv3d_arguments(*args, **kwargs)
            if x.device.type == "cpu" and x.dtype == torch.float32 and not isinstance(padding, str):
                return torch.ops.aten.mkldnn_convolution(
                    x, weight, bias, _triple(padding), _triple(stride), _triple(dilation), groups
                )
        return func(*args, **kwargs)


def _conv3d_arguments(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups


def _triple(value) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


class TokenizerBase:
    """What every tokenizer family shares: the engine choice, the per-channel latent normalisation,
    loading, sharing one model between engines, and the openvino engine's compiled graphs.

    A family sets ``model_class`` (its diffusers model), ``compiled_class`` (the name of its
    compiled graphs in :mod:`glvc.tokenizer_openvino`), ``fallback`` (what runs where OpenVINO
    cannot take the model), ``spatial_stride``/``temporal_stride``, and the streams."""

    model_class: type
    compiled_class: str
    fallback: str

    def __init__(self, vae, latent_channels: int, latents_mean, latents_std, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, engine: str | None = None):
        engine = engine or default_engine()
        if engine not in ENGINES:
            raise ValueError(f"tokenizer engine {engine!r}: choose one of {', '.join(ENGINES)}")
        vae = vae.to(device=device)
        if dtype != torch.float32:
            vae = vae.to(dtype=dtype)
        self.vae = vae.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.engine = engine
        c = latent_channels
        self.latent_channels = c
        mean = torch.tensor(latents_mean, dtype=torch.float32)
        std = torch.tensor(latents_std, dtype=torch.float32)
        if mean.numel() != c or std.numel() != c:
            raise ValueError(f"latents_mean/std have {mean.numel()}/{std.numel()} entries, the latent has {c} channels")
        self.latents_mean = mean.view(1, c, 1, 1, 1)
        self.latents_std = std.view(1, c, 1, 1, 1)
        self._compiled: dict = {}  # openvino engine: thread count -> compiled graphs, shared by with_engine

    @classmethod
    def from_pretrained(cls, name_or_path: str, subfolder: str | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, engine: str | None = None, **kwargs):
        """Load from a local folder or a Hub id, e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, subfolder ``vae``."""
        vae = cls.model_class.from_pretrained(name_or_path, subfolder=subfolder, torch_dtype=torch.float32,
                                              low_cpu_mem_usage=False, **kwargs)  # without accelerate: the same, minus its notice
        return cls(vae, device=device, dtype=dtype, engine=engine)

    def with_engine(self, engine: str):
        """The same model (shared, not copied) run with another engine."""
        other = type(self)(self.vae, device=self.device, dtype=self.dtype, engine=engine)
        other._compiled = self._compiled
        return other

    @property
    def compiled(self):
        """The openvino engine's compiled graphs (:mod:`glvc.tokenizer_openvino`) for this thread count,
        converted on first use; None for the other engines, off the CPU, below float32, and where
        OpenVINO cannot take the model (then ``fallback`` runs it, with a logged warning)."""
        if self.engine != "openvino" or self.device.type != "cpu" or self.dtype != torch.float32:
            return None
        from . import tokenizer_openvino

        return tokenizer_openvino.compiled_for(getattr(tokenizer_openvino, self.compiled_class), self.vae, self._compiled,
                                               fallback=self.fallback)

    # ------------------------------------------------------------------ normalisation
    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw.float() - self.latents_mean.to(raw.device)) / self.latents_std.to(raw.device)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.latents_std.to(z.device) + self.latents_mean.to(z.device)


class Tokenizer(TokenizerBase):
    """A causal video VAE used as a deterministic tokenizer (posterior mean, no sampling)."""

    model_class = AutoencoderKLWan
    compiled_class = "CompiledTokenizer"
    fallback = "oneDNN"
    temporal_stride = TEMPORAL_STRIDE

    def __init__(
        self,
        vae: AutoencoderKLWan,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        engine: str | None = None,
    ):
        if list(vae.config.temperal_downsample).count(True) != 2:
            raise ValueError(
                f"GLVC needs 4x temporal downsampling; this VAE has temperal_downsample={vae.config.temperal_downsample}"
            )
        super().__init__(vae, vae.config.z_dim, vae.config.latents_mean, vae.config.latents_std, device, dtype, engine)
        self.spatial_stride = int(vae.config.scale_factor_spatial)
        self.patch_size = vae.config.patch_size or 1
        self._encoder_convs = sum(isinstance(m, WanCausalConv3d) for m in self.vae.encoder.modules())
        self._decoder_convs = sum(isinstance(m, WanCausalConv3d) for m in self.vae.decoder.modules())

    def engine_context(self):
        """The context a forward pass runs in: the engine's function mode, or nothing."""
        if self.engine in ("onednn", "openvino") and self.device.type == "cpu":  # openvino: where it could not convert
            return _OneDNNConv3d()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ streaming
    def encoder_stream(self) -> "EncoderStream":
        return EncoderStream(self)

    def decoder_stream(self) -> "DecoderStream":
        return DecoderStream(self)

    # ------------------------------------------------------------------ whole clips
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1+4k, H, W) in [-1, 1] -> normalised latents (B, C, 1+k, H/s, W/s), float32."""
        self._check_pixels(pixels)
        stream = self.encoder_stream()
        chunks = [stream.push(pixels[:, :, :1])]
        for start in range(1, pixels.shape[2], self.temporal_stride):
            chunks.append(stream.push(pixels[:, :, start : start + self.temporal_stride]))
        return torch.cat(chunks, dim=2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, 1+k, h, w) -> pixels (B, 3, 1+4k, h*s, w*s) float32 in [-1, 1]."""
        stream = self.decoder_stream()
        return torch.cat([stream.push(latents[:, :, t : t + 1]) for t in range(latents.shape[2])], dim=2)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.dim() != 5 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels (B, 3, T, H, W), got {tuple(pixels.shape)}")
        t, h, w = pixels.shape[2:]
        if (t - 1) % self.temporal_stride:
            raise ValueError(f"{t} frames is not 1 + 4k: pad by repeating the last frame")
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"{w}x{h} is not a multiple of the spatial stride {self.spatial_stride}: pad first")


class EncoderStream:
    """Encodes one clip chunk by chunk: first a single frame, then 4 frames per call.

    ``push`` takes (B, 3, n, H, W) in [-1, 1] (n = 1 on the first call, 4 afterwards) and
    returns the normalised posterior mean (B, C, 1, H/s, W/s) of the latent frame it completes.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.cache: list = [None] * tokenizer._encoder_convs  # numpy arrays with the openvino engine
        self.frames_seen = 0
        self.chunks = 0

    @torch.inference_mode()
    def push(self, pixels: torch.Tensor) -> torch.Tensor:
        expected = 1 if self.frames_seen == 0 else self.tok.temporal_stride
        if pixels.dim() != 5 or pixels.shape[1] != 3 or pixels.shape[2] != expected:
            raise ValueError(f"encoder chunk must be (B, 3, {expected}, H, W), got {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h % self.tok.spatial_stride or w % self.tok.spatial_stride:
            raise ValueError(f"{w}x{h} is not a multiple of the spatial stride {self.tok.spatial_stride}")
        vae = self.tok.vae
        x = pixels.to(device=self.tok.device, dtype=self.tok.dtype)
        if self.tok.patch_size > 1:
            x = patchify(x, patch_size=self.tok.patch_size)
        compiled = self.tok.compiled
        if compiled is not None:
            mean, self.cache = compiled.step("encoder", self.chunks, x, self.cache)
        else:
            with self.tok.engine_context():
                out = vae.encoder(x, feat_cache=self.cache, feat_idx=[0])
                mean = vae.quant_conv(out)[:, : self.tok.latent_channels]  # moments: mean then log-variance
        self.frames_seen += pixels.shape[2]
        self.chunks += 1
        return self.tok.normalize(mean)


class DecoderStream:
    """Decodes one clip latent frame by latent frame.

    ``push`` takes normalised latents (B, C, 1, h, w) and returns pixels (B, 3, n, h*s, w*s)
    float32 in [-1, 1], with n = 1 for the first latent frame and 4 afterwards.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.cache: list = [None] * tokenizer._decoder_convs
        self.latents_seen = 0

    @torch.inference_mode()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        c = self.tok.latent_channels
        if latents.dim() != 5 or latents.shape[1] != c or latents.shape[2] != 1:
            raise ValueError(f"decoder input must be (B, {c}, 1, h, w), got {tuple(latents.shape)}")
        vae = self.tok.vae
        z = self.tok.denormalize(latents.to(self.tok.device)).to(self.tok.dtype)
        compiled = self.tok.compiled
        if compiled is not None:
            out, self.cache = compiled.step("decoder", self.latents_seen, z, self.cache)
        else:
            with self.tok.engine_context():
                x = vae.post_quant_conv(z)
                out = vae.decoder(x, feat_cache=self.cache, feat_idx=[0], first_chunk=self.latents_seen == 0)
        self.latents_seen += 1
        if self.tok.patch_size > 1:
            out = unpatchify(out, patch_size=self.tok.patch_size)
        return out.float().clamp(-1.0, 1.0)
