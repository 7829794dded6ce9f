"""A per-frame tokenizer: a tiny 2-D autoencoder of the TAESD family (TAEF2, distilled from FLUX.2's VAE).

The architecture follows the public description of Ollin Boer Bohan's tiny autoencoders
(github.com/madebyollin/taesd, MIT licence): plain 3x3 convolutions with ReLU, residual blocks of
three convolutions, three stride-2 stages down and three nearest-neighbour x2 stages up, a soft
clamp ``3 tanh(x / 3)`` at the decoder's input, and, for the FLUX.2 variant, a group-normalised
branch in the blocks next to the latent (its statistics span the whole picture). The weights are
the published TAEF2 ones converted to safetensors (``scripts/convert_taef2.py``); the licence and
credit are in ``glvc/pretrained/taef2/README.md`` and ``docs/data.md``.

Each video frame is coded on its own::

    pixels (B, 3, T, H, W) float32 in [-1, 1], H and W multiples of 8, any T
      -> latents (B, C, T, H / 8, W / 8), normalised per channel with ``latents_mean`` /
         ``latents_std`` from the config (measured on the training clips: about zero mean, unit variance)

so the temporal stride is 1: latent frame t covers pixel frame t, and the temporal redundancy is
left to the latent codec's recurrent memory. :class:`FrameTokenizer` has the interface of
:class:`glvc.tokenizer.Tokenizer` (streams, ``encode``/``decode``, ``with_engine``), with streams
that keep no state. Engines (the names of :data:`glvc.tokenizer.ENGINES`): ``"reference"`` and
``"onednn"`` run the modules in PyTorch, float32 (PyTorch picks the 2-D convolutions' kernels
itself); ``"openvino"`` runs the encoder and decoder as OpenVINO graphs
(:class:`glvc.tokenizer_openvino.CompiledFrameTokenizer`: converted once per model and machine into
the same bounded cache as the causal tokenizer's, compiled per process), falling back to PyTorch
with a logged warning where OpenVINO cannot take the model. The engine changes pixels within float
rounding, never the bitstream; the encoder's reconstruction equals the decoder's output bit for bit
when both run the same engine (openvino: with the same thread count).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .tokenizer import TokenizerBase

TEMPORAL_STRIDE = 1


def _conv3x3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class ResidualBlock(nn.Module):
    """``relu(convs(x') + x')`` with ``x' = x + norm_branch(x)`` where the branch is on.

    ``convs``: 3x3 conv, ReLU, 3x3 conv, ReLU, 3x3 conv. ``norm_branch`` (FLUX.2 variant): 1x1 conv to
    ``expand`` x channels, GroupNorm(``groups``), ReLU, 1x1 conv back; its statistics span the picture.
    """

    def __init__(self, channels: int, norm_groups: int = 0, norm_expand: int = 4):
        super().__init__()
        self.convs = nn.Sequential(
            _conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels)
        )
        self.norm_branch = None
        if norm_groups:
            wide = channels * norm_expand
            self.norm_branch = nn.Sequential(
                nn.Conv2d(channels, wide, 1, bias=False), nn.GroupNorm(norm_groups, wide), nn.ReLU(),
                nn.Conv2d(wide, channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_branch is not None:
            x = x + self.norm_branch(x)
        return torch.relu(self.convs(x) + x)


class SoftClamp(nn.Module):
    """``limit * tanh(x / limit)``: keeps decoder inputs within +-limit, near identity for small values."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / self.limit) * self.limit


class TinyAutoencoder(ModelMixin, ConfigMixin):
    """The 2-D autoencoder. ``encoder``: RGB (B, 3, H, W) in [0, 1] -> raw latents (B, C, H/8, W/8);
    ``decoder``: raw latents -> RGB in about [0, 1] (not clamped).

    Config: ``latent_channels`` C, ``channels`` (width of every block), ``encoder_blocks`` (blocks at
    full size, then after each of the three downsamplings), ``decoder_blocks`` (blocks at 1/8, then
    after each of the three upsamplings), ``norm_groups`` (0: no norm branch; else its GroupNorm groups,
    in the ``norm_blocks`` blocks nearest the latent on each side), ``norm_expand``, ``clamp``
    (the decoder's soft clamp), and ``latents_mean``/``latents_std`` (per channel, for normalisation).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        channels: int = 64,
        encoder_blocks: tuple = (1, 3, 3, 3),
        decoder_blocks: tuple = (3, 3, 3, 1),
        norm_groups: int = 4,
        norm_expand: int = 4,
        norm_blocks: int = 3,
        clamp: float = 3.0,
        latents_mean: tuple | None = None,
        latents_std: tuple | None = None,
    ):
        super().__init__()
        c = channels
        if len(encoder_blocks) != 4 or len(decoder_blocks) != 4:
            raise ValueError(f"encoder_blocks and decoder_blocks need 4 entries (8x8: three stages), got "
                             f"{list(encoder_blocks)} and {list(decoder_blocks)}")

        def blocks(count: int, norm: bool) -> list[nn.Module]:
            return [ResidualBlock(c, norm_groups if norm and i < norm_blocks else 0, norm_expand) for i in range(count)]

        layers: list[nn.Module] = [_conv3x3(3, c), *blocks(encoder_blocks[0], False)]
        for stage, count in enumerate(encoder_blocks[1:], start=1):
            layers += [_conv3x3(c, c, stride=2, bias=False), *blocks(count, stage == 3)]
        layers.append(_conv3x3(c, latent_channels))
        self.encoder = nn.Sequential(*layers)

        layers = [SoftClamp(clamp), _conv3x3(latent_channels, c), nn.ReLU(), *blocks(decoder_blocks[0], True)]
        for count in decoder_blocks[1:]:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(c, c, bias=False), *blocks(count, False)]
        layers.append(_conv3x3(c, 3))
        self.decoder = nn.Sequential(*layers)


class FrameTokenizer(TokenizerBase):
    """A per-frame autoencoder used as the tokenizer (interface of :class:`glvc.tokenizer.Tokenizer`).

    Speed of the engines on the shipped TAEF2, one 560x240 clip of 9 frames, 2 threads, the engines in
    alternation, fastest of 3 (``python scripts/tokenizer_engine_speed.py``, on 2 cores shared with a
    training job, load average 6-8): openvino encoded 2.1x and decoded 2.5x faster than onednn
    (4.0 s against 8.5 s, 3.6 s against 8.7 s; the per-repeat ratios 1.9-2.1 and 1.7-2.5); three
    earlier runs under the same load gave 1.3-2.8x and 1.4-2.2x. Pixels within 1.3e-6 of onednn's
    (on the [-1, 1] scale). First use: conversion and compile 9-16 s, later processes 0.2-0.3 s
    (compiled graphs loaded from the cache).
    """

    model_class = TinyAutoencoder
    compiled_class = "CompiledFrameTokenizer"
    fallback = "PyTorch"
    spatial_stride = 8
    temporal_stride = TEMPORAL_STRIDE

    def __init__(self, vae: TinyAutoencoder, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 engine: str | None = None):
        c = vae.config.latent_channels
        mean = vae.config.latents_mean if vae.config.latents_mean is not None else [0.0] * c
        std = vae.config.latents_std if vae.config.latents_std is not None else [1.0] * c
        super().__init__(vae, c, mean, std, device, dtype, engine)

    def engine_context(self):
        """The context the PyTorch path runs in: nothing (its 2-D convolutions take PyTorch's own route)."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ frames
    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised latents (B, C, T, H/8, W/8) float32."""
        if pixels.dim() != 5 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels (B, 3, T, H, W), got {tuple(pixels.shape)}")
        b, _, t, h, w = pixels.shape
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"{w}x{h} is not a multiple of the spatial stride {self.spatial_stride}: pad first")
        if b * t == 0 or h == 0 or w == 0:
            raise ValueError(f"empty pixels {tuple(pixels.shape)}")
        x = pixels.to(self.device, self.dtype).transpose(1, 2).reshape(b * t, 3, h, w)  # frames as a batch
        x = x.add(1.0).mul(0.5)  # (B*T, 3, H, W) in [0, 1]
        compiled = self.compiled
        if compiled is not None:
            raw = compiled.encode(x)
        else:
            with self.engine_context():
                raw = self.vae.encoder(x).float()
        raw = raw.reshape(b, t, self.latent_channels, h // self.spatial_stride, w // self.spatial_stride).transpose(1, 2)
        return self.normalize(raw)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, T, h, w) -> pixels (B, 3, T, 8h, 8w) float32 in [-1, 1]."""
        c = self.latent_channels
        if latents.dim() != 5 or latents.shape[1] != c:
            raise ValueError(f"decoder input must be (B, {c}, T, h, w), got {tuple(latents.shape)}")
        b, _, t, h, w = latents.shape
        z = self.denormalize(latents.to(self.device)).to(self.dtype).transpose(1, 2).reshape(b * t, c, h, w)
        compiled = self.compiled
        if compiled is not None:
            rgb = compiled.decode(z)
        else:
            with self.engine_context():
                rgb = self.vae.decoder(z).float()
        out = rgb.mul(2.0).sub(1.0).clamp(-1.0, 1.0)  # (B*T, 3, 8h, 8w)
        return out.reshape(b, t, 3, h * self.spatial_stride, w * self.spatial_stride).transpose(1, 2)

    # ------------------------------------------------------------------ streams (no state: frames are independent)
    def encoder_stream(self) -> "FrameStream":
        return FrameStream(self.encode)

    def decoder_stream(self) -> "FrameStream":
        return FrameStream(self.decode)


class FrameStream:
    """The stream interface of the causal tokenizer for a per-frame one: ``push`` codes one frame,
    (B, 3, 1, H, W) -> (B, C, 1, h, w) or back, with no state between calls."""

    def __init__(self, step):
        self.step = step

    def push(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != 1:
            raise ValueError(f"a per-frame tokenizer stream takes one frame per push, got {tuple(x.shape)}")
        return self.step(x)
