"""The latent codec: one network codes every latent frame, with a recurrent temporal memory.

In the spirit of GLVC (Guo et al., 2025) and DCVC-RT / DCVC-FM: there is no separate
intra model. The first latent frame of a sequence (and each refresh) is coded with the
*initial* memory, a learned constant; later frames with the memory carried from the
frames decoded before them. Data flow for one latent frame ``z`` (B, C, h, w), the
tokenizer's normalised latent (h = H/8, w = W/8)::

    memory (B, Cm, h, w) --context_net--> context (B, N, h, w)
    y  = analysis([z, context])                       (B, M, h/2, w/2)
    hz = hyper_analysis(y)                            (B, K, h/4, w/4) -> EntropyBottleneck
    means, scales = entropy_parameters([hyper_synthesis(hz_hat), context_down(context)])
    s  = quantization_scale(q)   (M,) geometric interpolation between learned anchors
    y_hat = (round(y*s - means*s) + means*s) / s      coded by GaussianConditional(scales*s)
    z_hat, features = synthesis(y_hat, context)       (B, C, h, w), (B, N, h, w)
    memory' = memory_update([memory, features])

Per-stream state (the memory) is passed in and returned, never kept on the module, so
one loaded codec can serve many streams at once.

Entropy coding is deterministic only if the encoder and the decoder compute ``scales``
(and hence the CDF indexes) bit-identically. ``compress_frame``/``decompress_frame``
therefore run on the CPU in float32 with one intra-op thread (:func:`deterministic_cpu`),
and the encoder derives everything that conditions the entropy model from decoded data.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import math
import os
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import SCALES_LEVELS, SCALES_MAX, SCALES_MIN, CompressionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from safetensors.torch import load_file, save_file
from torch import nn

from ..bitstream import BitstreamError, _Reader, write_varint

WEIGHTS_NAME = "model.safetensors"

_deterministic_lock = threading.RLock()

# compressai's rANS decoder (``decode_with_indexes``) reads its input without any bounds check:
# it takes one 32-bit word per symbol when its state runs low, and in "bypass" mode (a value
# beyond the table) as many 4-bit groups as the stream claims. An honest string is never
# over-read, but a corrupt or crafted one makes it read past the end of the buffer: the output
# then depends on whatever lies there, and a long run of 0xFF bytes (about 15 bytes read per
# byte given) segfaults the process (tests/test_fuzz.py::TestRansOverread; CompressAI issue 300).
# So every string is first checked against the longest an honest encoder can write and then
# followed by zero bytes, well beyond the worst over-read measured by an exact model of the
# decoder under adversarial search (16 bytes per input byte + 4 per symbol + 8).
RANS_MAX_BYTES_PER_SYMBOL = 7  # 16 bits of symbol + 4 of bypass count + 32 of bypass value, rounded up
RANS_FLUSH_BYTES = 16
RANS_PAD_PER_BYTE = 32
RANS_PAD_PER_SYMBOL = 8
RANS_PAD_BYTES = 1024


def rans_input(string: bytes, symbols: int, what: str) -> bytes:
    """``string`` made safe for compressai's unchecked rANS decoder of ``symbols`` symbols.

    Raises :class:`BitstreamError` when it is longer than any honest encoding of that many
    symbols; otherwise returns it followed by enough zero bytes that the decoder never reads
    beyond them (memory: at most 32 bytes per input byte + 8 per symbol + 1 kB)."""
    limit = RANS_MAX_BYTES_PER_SYMBOL * symbols + RANS_FLUSH_BYTES
    if len(string) > limit:
        raise BitstreamError(f"{what} is {len(string)} bytes, more than {symbols} symbols can take ({limit})")
    return bytes(string) + bytes(RANS_PAD_PER_BYTE * len(string) + RANS_PAD_PER_SYMBOL * symbols + RANS_PAD_BYTES)


# ---------------------------------------------------------------------------- machine-independent numbers
# Anything that conditions the entropy coder must be the same bits on every machine. torch's
# ``exp`` and ``linspace`` are not: they take a vectorised path chosen by the CPU (measured:
# ``linspace`` with ``ATEN_CPU_CAPABILITY=default`` rounds 13 of compressai's 64 scale-table
# points differently from AVX2, whose kernel rounds once, as a fused multiply-add would).
# The numbers below use only correctly rounded arithmetic: Python's ``decimal`` (software, the
# same everywhere) and float64 operations that are exact, then one rounding to float32.
_EXACT = decimal.Context(prec=40)


@functools.lru_cache(maxsize=256)
def exact_exp_float32(values: tuple[float, ...]) -> tuple[float, ...]:
    """exp of each value, computed to 40 digits in software and rounded to float32 (as Python floats).

    The result does not depend on the CPU, the SIMD width or the math library."""
    return tuple(float(torch.tensor(float(_EXACT.exp(decimal.Decimal(v))), dtype=torch.float32)) for v in values)


def scale_table() -> torch.Tensor:
    """The GaussianConditional's scale table (64,) float32, the same bits on every machine.

    compressai's ``get_scale_table`` is ``exp(linspace(log 0.11, log 256, 64))`` in float32 torch
    ops. Here each point of the line is ``start + step * i`` (or ``end - step * (63 - i)`` for the
    upper half, as ATen does) from float32 ``start``, ``end`` and ``step``, computed exactly in
    float64 and rounded once; its exp comes from :func:`exact_exp_float32`. This equals what
    compressai gives on an AVX2 or AVX-512 CPU, bit for bit (tests/test_golden.py)."""
    f32 = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731  round to nearest float32
    start, end, n = f32(math.log(SCALES_MIN)), f32(math.log(SCALES_MAX)), SCALES_LEVELS
    step = f32(f32(end - start) / (n - 1))  # float32 subtraction and division, each rounded once
    points = [f32(start + step * i) if i < n // 2 else f32(end - step * (n - 1 - i)) for i in range(n)]
    return torch.tensor(exact_exp_float32(tuple(points)), dtype=torch.float32)


@contextlib.contextmanager
def deterministic_cpu():
    """Run the enclosed torch code with one intra-op thread, serialised across threads.

    Convolutions can sum in a different order with another thread count, and one flipped
    bit in a scale moves a CDF index and desynchronises rANS. One thread on both sides
    removes that source of difference. ``torch.set_num_threads`` is process-wide, so the
    sections hold a lock: no other section can restore the thread count mid-way.
    """
    with _deterministic_lock:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.1)), 0.1))


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def _upsample(cin: int, cout: int) -> nn.Sequential:
    """x2 spatial upsampling by sub-pixel convolution."""
    return nn.Sequential(_conv(cin, cout * 4), nn.PixelShuffle(2))


@dataclass
class CodecState:
    """Per-stream state: the recurrent memory (B, Cm, h, w), or ``None`` before the first frame / after a refresh."""

    memory: torch.Tensor | None = None
    frames_since_refresh: int = 0


class LatentCodec(CompressionModel, ConfigMixin):
    """Variable-rate latent video codec with a recurrent memory and a hyperprior.

    Args:
        latent_channels: channels of the tokenizer's latents (16 for Wan).
        channels: width N of the transforms and the context.
        y_channels: channels M of the quantised representation y.
        hyper_channels: channels K of the hyper-latent.
        memory_channels: channels Cm of the recurrent memory.
        num_anchors: learned quantisation-scale vectors; the quality index interpolates between them.
        quality_levels: number of quality indices exposed (0 .. quality_levels - 1).
        anchor_lambdas: rate-distortion trade-off of each anchor, used by training only.
    """

    config_name = "config.json"
    spatial_stride = 4  # two stride-2 stages: y at h/2, hyper-latent at h/4

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        channels: int = 96,
        y_channels: int = 96,
        hyper_channels: int = 64,
        memory_channels: int = 48,
        num_anchors: int = 4,
        quality_levels: int = 64,
        anchor_lambdas: tuple[float, ...] = (0.5, 2.0, 8.0, 32.0),
    ):
        super().__init__()
        if len(anchor_lambdas) != num_anchors:
            raise ValueError(f"{num_anchors} anchors but {len(anchor_lambdas)} anchor_lambdas")
        if quality_levels < 2 or num_anchors < 2:
            raise ValueError(f"need at least 2 anchors and 2 quality levels, got {num_anchors} and {quality_levels}")
        n, m, k, cm, c = channels, y_channels, hyper_channels, memory_channels, latent_channels

        self.initial_memory = nn.Parameter(torch.zeros(1, cm, 1, 1))
        self.context_net = nn.Sequential(_conv(cm, n), nn.LeakyReLU(0.1), ResidualBlock(n))
        self.analysis = nn.Sequential(
            _conv(c + n, n), ResidualBlock(n), _conv(n, n, stride=2), nn.LeakyReLU(0.1), ResidualBlock(n), _conv(n, m)
        )
        self.hyper_analysis = nn.Sequential(_conv(m, n), nn.LeakyReLU(0.1), _conv(n, k, stride=2))
        self.hyper_synthesis = nn.Sequential(_conv(k, n), nn.LeakyReLU(0.1), _upsample(n, n), nn.LeakyReLU(0.1))
        self.context_down = nn.Sequential(_conv(n, n, stride=2), nn.LeakyReLU(0.1))
        self.entropy_parameters = nn.Sequential(
            _conv(2 * n, 2 * n, 1), nn.LeakyReLU(0.1), _conv(2 * n, 2 * n, 1), nn.LeakyReLU(0.1), _conv(2 * n, 2 * m, 1)
        )
        self.synthesis_up = nn.Sequential(_conv(m, n), nn.LeakyReLU(0.1), _upsample(n, n))
        self.synthesis = nn.Sequential(_conv(2 * n, n), ResidualBlock(n), ResidualBlock(n))
        self.synthesis_out = _conv(n, c)
        self.memory_update = nn.Sequential(_conv(cm + n, n), nn.LeakyReLU(0.1), _conv(n, cm))

        # log quantisation scale per anchor and channel; higher scale = finer steps = more bits
        anchor_init = torch.linspace(math.log(0.5), math.log(4.0), num_anchors)
        self.log_quant_scale = nn.Parameter(anchor_init[:, None].repeat(1, m))

        self.entropy_bottleneck = EntropyBottleneck(k)
        self.gaussian_conditional = GaussianConditional(None)

    # ------------------------------------------------------------------ rate control
    @property
    def max_quality(self) -> int:
        return self.config.quality_levels - 1

    def anchor_position(self, quality: torch.Tensor | float) -> torch.Tensor:
        """Quality index in [0, max_quality] -> continuous anchor position in [0, num_anchors - 1]."""
        quality = torch.as_tensor(quality, dtype=torch.float32)
        return quality.clamp(0, self.max_quality) / self.max_quality * (self.config.num_anchors - 1)

    def _log_quantization_scale(self, quality: torch.Tensor | float) -> torch.Tensor:
        """(B,) or scalar quality -> (B, M) log scale, linear interpolation between anchors.

        Elementwise float32 products and sums only: each is rounded once by IEEE 754, so the
        result is the same bits on every CPU."""
        pos = self.anchor_position(quality).to(self.log_quant_scale.device).reshape(-1)
        low = pos.floor().clamp(max=self.config.num_anchors - 2).long()
        frac = (pos - low.float()).unsqueeze(1)
        return (1 - frac) * self.log_quant_scale[low] + frac * self.log_quant_scale[low + 1]

    def quantization_scale(self, quality: torch.Tensor | float) -> torch.Tensor:
        """(B,) or scalar quality -> (B, M, 1, 1) scale, geometric interpolation between anchors (training)."""
        return self._log_quantization_scale(quality).exp()[:, :, None, None]

    def coding_scale(self, quality: int) -> torch.Tensor:
        """The scale (1, M, 1, 1) float32 that entropy coding uses at an integer ``quality``: as
        :meth:`quantization_scale`, but its exp is :func:`exact_exp_float32`, the same bits on
        every machine (torch's vectorised ``exp`` depends on the CPU)."""
        with torch.no_grad():
            log_s = self._log_quantization_scale(int(quality)).detach().cpu().reshape(-1)
        return torch.tensor(exact_exp_float32(tuple(log_s.tolist())), dtype=torch.float32).view(1, -1, 1, 1)

    def rd_lambda(self, quality: torch.Tensor | float) -> torch.Tensor:
        """Training trade-off for a quality index, geometric interpolation between anchor lambdas."""
        pos = self.anchor_position(quality).reshape(-1)
        lambdas = torch.tensor(self.config.anchor_lambdas, dtype=torch.float32).log()
        low = pos.floor().clamp(max=self.config.num_anchors - 2).long()
        frac = pos - low.float()
        return ((1 - frac) * lambdas[low] + frac * lambdas[low + 1]).exp()

    # ------------------------------------------------------------------ shared pieces
    def initial_state(self) -> CodecState:
        return CodecState(memory=None)

    def _memory(self, state: CodecState, z: torch.Tensor) -> torch.Tensor:
        if state.memory is not None:
            return state.memory
        b, _, h, w = z.shape
        return self.initial_memory.expand(b, -1, h, w)

    def _check_latent(self, z: torch.Tensor) -> None:
        c = self.config.latent_channels
        if z.dim() != 4 or z.shape[1] != c:
            raise ValueError(f"latent frame must be (B, {c}, h, w), got {tuple(z.shape)}")
        h, w = z.shape[-2:]
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"latent size {w}x{h} must be a multiple of {self.spatial_stride}: pad the video")

    def _entropy_params(self, hz_hat: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.entropy_parameters(torch.cat([self.hyper_synthesis(hz_hat), self.context_down(context)], 1))
        means, scales = params.chunk(2, dim=1)
        return means, F.softplus(scales)

    def _reconstruct(self, y_hat: torch.Tensor, context: torch.Tensor, memory: torch.Tensor):
        features = self.synthesis(torch.cat([self.synthesis_up(y_hat), context], 1))
        z_hat = self.synthesis_out(features)
        new_memory = self.memory_update(torch.cat([memory, features], 1))
        return z_hat, new_memory

    # ------------------------------------------------------------------ training
    def forward(self, z: torch.Tensor, state: CodecState, quality: torch.Tensor) -> dict:
        """Training/evaluation step on one latent frame with noise-relaxed rates.

        z: (B, C, h, w) normalised latent; quality: (B,) float in [0, max_quality].
        Returns ``z_hat``, ``state`` and ``bits`` (B,) estimated from the likelihoods.
        """
        self._check_latent(z)
        memory = self._memory(state, z)
        context = self.context_net(memory)
        y = self.analysis(torch.cat([z, context], 1))
        hz = self.hyper_analysis(y)
        hz_noisy, hz_likelihood = self.entropy_bottleneck(hz)
        medians = self.entropy_bottleneck._get_medians().detach().view(1, -1, 1, 1)
        hz_hat = hz + ((hz - medians).round() + medians - hz).detach()  # straight-through rounding
        means, scales = self._entropy_params(hz_hat, context)
        s = self.quantization_scale(quality)
        y_s, means_s = y * s, means * s
        _, y_likelihood = self.gaussian_conditional(y_s, scales * s, means_s)
        y_hat_s = means_s + (y_s - means_s) + ((y_s - means_s).round() - (y_s - means_s)).detach()
        z_hat, new_memory = self._reconstruct(y_hat_s / s, context, memory)
        bits = -(torch.log2(y_likelihood).flatten(1).sum(1) + torch.log2(hz_likelihood).flatten(1).sum(1))
        return {"z_hat": z_hat, "state": CodecState(new_memory, state.frames_since_refresh + 1), "bits": bits}

    # ------------------------------------------------------------------ entropy coding
    @torch.inference_mode()
    def compress_frame(self, z: torch.Tensor, state: CodecState, quality: int) -> tuple[bytes, torch.Tensor, CodecState]:
        """Code one latent frame (1, C, h, w) -> (payload, z_hat (1, C, h, w), new state). CPU, float32."""
        self._check_latent(z)
        if z.shape[0] != 1:
            raise ValueError(f"compress_frame codes one stream at a time, got batch {z.shape[0]}")
        with deterministic_cpu():
            z = z.detach().to("cpu", torch.float32)
            memory = self._memory(state, z)
            context = self.context_net(memory)
            y = self.analysis(torch.cat([z, context], 1))
            hz = self.hyper_analysis(y)
            hz_string = self.entropy_bottleneck.compress(hz)[0]
            medians = self.entropy_bottleneck._get_medians().detach().view(1, -1, 1, 1)
            hz_hat = self.entropy_bottleneck.quantize(hz, "dequantize", medians)
            means, scales = self._entropy_params(hz_hat, context)
            s = self.coding_scale(quality)
            means_s = means * s
            indexes = self.gaussian_conditional.build_indexes(scales * s)
            y_string = self.gaussian_conditional.compress(y * s, indexes, means_s)[0]
            y_hat_s = self.gaussian_conditional.quantize(y * s, "dequantize", means_s)
            z_hat, new_memory = self._reconstruct(y_hat_s / s, context, memory)
        payload = write_varint(len(hz_string)) + hz_string + y_string
        return payload, z_hat, CodecState(new_memory, state.frames_since_refresh + 1)

    @torch.inference_mode()
    def decompress_frame(
        self, payload: bytes, state: CodecState, quality: int, latent_size: tuple[int, int]
    ) -> tuple[torch.Tensor, CodecState]:
        """Inverse of :meth:`compress_frame`: payload -> (z_hat (1, C, h, w), new state)."""
        h, w = latent_size
        if h % self.spatial_stride or w % self.spatial_stride:
            raise BitstreamError(f"latent size {w}x{h} is not a multiple of {self.spatial_stride}")
        reader = _Reader(payload, len(payload))
        hz_length = reader.varint("hyper-latent length")
        hz_string = reader.take(hz_length, "hyper-latent")
        y_string = payload[reader.pos :]
        if not y_string:
            raise BitstreamError("frame payload has no latent data after the hyper-latent")
        shape = (h // self.spatial_stride, w // self.spatial_stride)
        hz_string = rans_input(hz_string, self.config.hyper_channels * shape[0] * shape[1], "hyper-latent")
        y_string = rans_input(y_string, self.config.y_channels * (h // 2) * (w // 2), "latent data")
        with deterministic_cpu():
            hz_hat = self.entropy_bottleneck.decompress([hz_string], shape)
            memory = self._memory(state, hz_hat.new_empty(1, 1, h, w))
            context = self.context_net(memory)
            means, scales = self._entropy_params(hz_hat, context)
            s = self.coding_scale(quality)
            means_s = means * s
            indexes = self.gaussian_conditional.build_indexes(scales * s)
            y_hat_s = self.gaussian_conditional.decompress([y_string], indexes, means=means_s)
            z_hat, new_memory = self._reconstruct(y_hat_s / s, context, memory)
        return z_hat, CodecState(new_memory, state.frames_since_refresh + 1)

    # ------------------------------------------------------------------ persistence
    def prepare_entropy_coders(self) -> None:
        """Compute the rANS tables from the learned densities (after training, before saving).

        The tables are saved with the weights and used as stored when loaded: they are never
        recomputed at load, so they are the same bits on every machine that loads the file.
        The scale table is :func:`scale_table` (machine-independent); the CDFs come from
        compressai's float32 code on the machine that saves."""
        self.update(scale_table=scale_table(), force=True)

    @property
    def entropy_coders_ready(self) -> bool:
        """Whether the rANS tables exist (loaded or computed)."""
        gc = self.gaussian_conditional
        return bool(self.entropy_bottleneck._quantized_cdf.numel() and gc._quantized_cdf.numel() and gc.scale_table.numel())

    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` (with the rANS tables) into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        self.prepare_entropy_coders()
        self.save_config(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, name_or_path: str, subfolder: str | None = None, **hub_kwargs) -> "LatentCodec":
        """Load from a local folder or a Hub repository (``config.json`` + ``model.safetensors``)."""
        folder = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
        if os.path.isdir(folder):
            config_path = os.path.join(folder, cls.config_name)
            weights_path = os.path.join(folder, WEIGHTS_NAME)
        else:
            from huggingface_hub import hf_hub_download

            config_path = hf_hub_download(name_or_path, cls.config_name, subfolder=subfolder, **hub_kwargs)
            weights_path = hf_hub_download(name_or_path, WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
        config = cls.load_config(config_path)
        model = cls.from_config(config)
        model.load_state_dict(load_file(weights_path))
        if not model.entropy_coders_ready:  # a file saved without them (not by save_pretrained)
            model.prepare_entropy_coders()
        return model.eval()
