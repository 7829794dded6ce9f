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
    (with ``hyper_gain``: hz is coded as hz*g with g = hyper_gain(q) (K,), and
     hyper_synthesis sees hz_hat/g, so the side information also shrinks at low rates;
     with ``hyper_prior="gaussian"``: round(hz*g) is coded by a zero-mean GaussianConditional
     whose scale sigma(q) (K,) is learned per anchor, instead of one EntropyBottleneck density
     shared by every quality, so at low rates the hyper-latent can cost next to nothing)
    z_hat, features = synthesis(y_hat, context)       (B, C, h, w), (B, N, h, w)
    memory' = memory_update([memory, features])

Per-stream state (the memory) is passed in and returned, never kept on the module, so
one loaded codec can serve many streams at once.

Entropy coding is deterministic only if the encoder and the decoder compute ``means`` and
the CDF indexes bit-identically, on every machine. ``compress_frame``/``decompress_frame``
therefore run everything the decoder computes (context, hyperprior synthesis, entropy
parameters, synthesis, memory update) in exact arithmetic (:class:`ExactRunner`): weights and
activations on fixed binary grids, carried in float64 where every product and sum is exact, so
no SIMD width, kernel library, summation order or thread count can change a bit (so it runs
with the caller's intra-op threads: two threads code a 240p clip 1.65x faster than one, with the
same bits). ``softplus``
is never evaluated: the CDF index compares the pre-activation with integer thresholds
(:func:`index_thresholds`). The encoder derives everything from decoded data. Training
(:meth:`LatentCodec.forward`) stays in float32; the exact path differs from it by the grids'
rounding only (measured: docs/bitstream.md).
"""

from __future__ import annotations

import decimal
import functools
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

with warnings.catch_warnings():
    # compressai imports torch_geometric, whose import calls torch.jit.script: torch 2.14 warns that it
    # is deprecated (a FutureWarning, twice), a notice about those packages' code, not the user's
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.models.base import SCALES_LEVELS, SCALES_MAX, SCALES_MIN, CompressionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from safetensors.torch import load_file, save_file
from torch import nn

from ..bitstream import BitstreamError, _Reader, write_varint

WEIGHTS_NAME = "model.safetensors"


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


# ---------------------------------------------------------------------------- exact arithmetic
# Weights are rounded to multiples of 2**-WEIGHT_BITS, activations to multiples of 2**-ACT_BITS
# (and clamped to +-ACT_LIMIT); both are held in float64. A product is then a multiple of
# 2**-(WEIGHT_BITS + ACT_BITS) and every partial sum of a convolution is such a multiple smaller
# than 2**(53 - WEIGHT_BITS - ACT_BITS) (checked per layer: ACT_LIMIT * max L1 norm of a filter +
# max |bias|), so float64 holds every intermediate result exactly: any order of summation, with
# or without FMA, gives the same bits. Nonlinearities are one correctly rounded float64 operation
# (leaky ReLU: one product) followed by the rounding to the grid.
WEIGHT_BITS = 20
ACT_BITS = 16
ACT_LIMIT = 2.0**10
_EXACT_SUM_LIMIT = 2.0 ** (53 - WEIGHT_BITS - ACT_BITS)


def to_grid(x: torch.Tensor, bits: int = ACT_BITS, limit: float | None = ACT_LIMIT) -> torch.Tensor:
    """``x`` rounded to the nearest multiple of 2**-bits (ties to even), float64; clamped to +-limit."""
    x = torch.round(x.to(torch.float64) * 2.0**bits) / 2.0**bits
    return x.clamp_(-limit, limit) if limit is not None else x


def _to_grid_(x: torch.Tensor) -> torch.Tensor:
    """:func:`to_grid` of a float64 tensor that the caller owns, in place: the same values (scaling by
    2**16 and 2**-16 is exact, so rounding and clamping the scaled values is the same), one pass less
    and no new tensors."""
    scale = 2.0**ACT_BITS
    return x.mul_(scale).round_().clamp_(-ACT_LIMIT * scale, ACT_LIMIT * scale).mul_(1.0 / scale)


class ExactRunner:
    """Runs the codec's convolutional blocks in exact grid arithmetic (see above).

    Inside a run the activations are channels-last rows, (h, w, C) float64 (batch 1, which the exact
    path always has): a convolution is a sum of kh * kw matrix products, one per kernel tap, each of
    a strided view of the zero-padded input, (h' * w', C_in), with that tap's (C_in, C_out) weights.
    ``F.conv2d`` in float64 (what this ran before) first copies the input nine times over (im2col:
    53 MB for a 192-channel layer at 360p, beyond the caches) and runs one product. Measured on 12
    latent frames of 80x48 (``python scripts/exact_conv_cost.py --max-height 360 --threads 1``, 2
    loaded cores): 0.81 of the CPU time to encode, 0.77 to decode, 0.48-0.56 on the two widest layers;
    on 2 threads (``OMP_WAIT_POLICY=PASSIVE``, ``--threads 2``) 0.99 and 0.84. The sums run in
    another order, which exact arithmetic allows: the same bits (tests/test_golden.py,
    tests/test_codec.py::TestExactRunner).

    Holds the grid-rounded float64 weights, tap by tap, made on first use and remade when a weight
    changes (``Tensor._version``). ``run`` accepts nn.Sequential of Conv2d, LeakyReLU, PixelShuffle
    and :class:`ResidualBlock` and a (1, C, h, w) input on the activation grid, and returns
    (1, C', h', w') on the grid."""

    def __init__(self) -> None:
        self._weights: dict[int, tuple[tuple[int, int], torch.Tensor, torch.Tensor]] = {}

    def _conv_weights(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        """(kh, kw, C_in, C_out) grid-rounded taps and the (C_out,) bias, float64."""
        key = (conv.weight._version, conv.bias._version)
        cached = self._weights.get(id(conv))
        if cached is None or cached[0] != key:
            weight = to_grid(conv.weight.detach().cpu(), WEIGHT_BITS, None)
            bias = to_grid(conv.bias.detach().cpu(), WEIGHT_BITS + ACT_BITS, None)
            worst = ACT_LIMIT * weight.abs().flatten(1).sum(1).max().item() + bias.abs().max().item()
            if worst >= _EXACT_SUM_LIMIT:
                raise ValueError(f"a {tuple(weight.shape)} convolution can sum to {worst:.0f}, beyond the "
                                 f"{_EXACT_SUM_LIMIT:.0f} that exact arithmetic allows: lower WEIGHT_BITS or ACT_LIMIT")
            cached = (key, weight.permute(2, 3, 1, 0).contiguous(), bias)
            self._weights[id(conv)] = cached
        return cached[1], cached[2]

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"the exact path runs one frame (1, C, h, w), got {tuple(x.shape)}")
        rows = self._run(module, x[0].to(torch.float64).permute(1, 2, 0).contiguous())
        return rows.permute(2, 0, 1).unsqueeze(0).contiguous()

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module`` on channels-last rows (h, w, C) -> (h', w', C')."""
        if isinstance(module, nn.Sequential):
            for child in module:
                x = self._run(child, x)
            return x
        if isinstance(module, nn.Conv2d):
            return _to_grid_(self._conv(module, x))
        if isinstance(module, nn.LeakyReLU):
            return _to_grid_(F.leaky_relu(x, module.negative_slope))
        if isinstance(module, nn.PixelShuffle):  # channel c * r * r + i * r + j -> position (r * y + i, r * x + j)
            r = module.upscale_factor
            h, w, c = x.shape
            return x.view(h, w, c // (r * r), r, r).permute(0, 3, 1, 4, 2).reshape(h * r, w * r, c // (r * r))
        if isinstance(module, ResidualBlock):
            inner = self._run(module.conv1, _to_grid_(F.leaky_relu(x, 0.1)))
            return _to_grid_(x + self._run(module.conv2, _to_grid_(F.leaky_relu(inner, 0.1))))
        raise TypeError(f"no exact form for {type(module).__name__}")

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """A zero-padded convolution of rows (h, w, C_in) -> (h', w', C_out), tap by tap (exact sums)."""
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"no exact form for {conv}: groups 1, dilation 1 and numeric zero padding only")
        taps, bias = self._conv_weights(conv)
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        h, w, c = x.shape
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        padded = F.pad(x, (0, 0, pw, pw, ph, ph)) if ph or pw else x
        out = bias.expand(ho * wo, -1).clone()
        for i in range(kh):
            for j in range(kw):
                window = padded[i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                out.addmm_(window.reshape(ho * wo, c), taps[i, j])
        return out.view(ho, wo, -1)


def index_thresholds(table: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(M, L-1) int64 thresholds K such that the CDF index of a scale pre-activation ``p = k * 2**-ACT_BITS``
    in channel c is ``#{i : k > K[c, i]}``, i.e. the number of table entries below softplus(p) * scale[c].

    softplus(p) * s > t  <=>  p > log(expm1(x)) with x = t / s (rounded to float64), and
    k > T * 2**ACT_BITS  <=>  k > floor(T * 2**ACT_BITS). The floor is taken from float64 ``math`` when the
    value is more than 1e-6 + 1e-11 |value| from an integer (libm is far more accurate than that),
    else from 40-digit ``decimal``; so it is the exact floor, the same on every machine."""
    rows = []
    for s in scale.reshape(-1).tolist():
        row = []
        for t in table[:-1].tolist():
            x = t / s
            value = (x + math.log(-math.expm1(-x))) * 2.0**ACT_BITS  # log(expm1(x)), without overflow
            nearest = round(value)
            if abs(value - nearest) > 1e-6 + 1e-11 * abs(value):
                row.append(math.floor(value))
            else:
                d = decimal.Decimal(x)
                exact = _EXACT.multiply(_EXACT.add(d, _EXACT.ln(_EXACT.subtract(1, _EXACT.exp(-d)))), 2**ACT_BITS)
                row.append(int(exact.to_integral_value(rounding=decimal.ROUND_FLOOR)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.1)), 0.1))


def stored_modules(state: dict) -> set[str]:
    """The top-level module names that a state dict holds weights or buffers of."""
    return {name.split(".")[0] for name in state}


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
        hyper_gain: learn a per-anchor gain on the hyper-latent too (a gain unit as in Cui et al.,
            "Asymmetric Gained Deep Image Compression", CVPR 2021). Without it the hyper-latent
            costs the same at every quality index and sets a floor under the lowest rate.
        hyper_prior: the hyper-latent's entropy model. ``"factorized"``: compressai's
            EntropyBottleneck, one learned density per channel for every quality (Ballé et al.
            2018). ``"gaussian"`` (needs ``hyper_gain``): a zero-mean Gaussian per channel whose
            scale is learned per anchor and interpolated like the quantisation scales, so the
            density narrows with the gain: one shared density cannot be both the sharp one that
            low rates need and the wide one of high rates.
    """

    config_name = "config.json"
    # options added after the first models were saved, at the value that leaves the model as it was:
    # left out of the model fingerprint (glvc.pipeline.GLVC.fingerprint), so those models keep theirs
    fingerprint_neutral_options = {"hyper_gain": False, "hyper_prior": "factorized"}
    hyper_priors = ("factorized", "gaussian")
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
        hyper_gain: bool = False,
        hyper_prior: str = "factorized",
    ):
        super().__init__()
        if len(anchor_lambdas) != num_anchors:
            raise ValueError(f"{num_anchors} anchors but {len(anchor_lambdas)} anchor_lambdas")
        if quality_levels < 2 or num_anchors < 2:
            raise ValueError(f"need at least 2 anchors and 2 quality levels, got {num_anchors} and {quality_levels}")
        if hyper_prior not in self.hyper_priors:
            raise ValueError(f"hyper_prior must be one of {self.hyper_priors}, got {hyper_prior!r}")
        if hyper_prior == "gaussian" and not hyper_gain:
            raise ValueError('hyper_prior "gaussian" needs hyper_gain: without a gain the scale alone cannot narrow the symbols')
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
        # log gain per anchor and hyper-latent channel; 0 = the hyper-latent coded as it is
        self.log_hyper_gain = nn.Parameter(torch.zeros(num_anchors, k)) if hyper_gain else None

        if hyper_prior == "gaussian":
            # log scale of the gained hyper-latent per anchor and channel; 0 = unit scale
            self.log_hyper_scale = nn.Parameter(torch.zeros(num_anchors, k))
            self.hyper_conditional = GaussianConditional(None)
            self.entropy_bottleneck = None
        else:
            self.log_hyper_scale = None
            self.hyper_conditional = None
            self.entropy_bottleneck = EntropyBottleneck(k)
        self.gaussian_conditional = GaussianConditional(None)
        self._exact = ExactRunner()  # grid-rounded weights for entropy coding (model-derived, not per-stream)
        self._thresholds: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ rate control
    @property
    def max_quality(self) -> int:
        return self.config.quality_levels - 1

    def anchor_position(self, quality: torch.Tensor | float) -> torch.Tensor:
        """Quality index in [0, max_quality] -> continuous anchor position in [0, num_anchors - 1]."""
        quality = torch.as_tensor(quality, dtype=torch.float32)
        return quality.clamp(0, self.max_quality) / self.max_quality * (self.config.num_anchors - 1)

    def _log_interpolate(self, log_table: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
        """(B,) or scalar quality -> (B, D): linear interpolation between the rows of ``log_table`` (A, D).

        Elementwise float32 products and sums only: each is rounded once by IEEE 754, so the
        result is the same bits on every CPU."""
        pos = self.anchor_position(quality).to(log_table.device).reshape(-1)
        low = pos.floor().clamp(max=self.config.num_anchors - 2).long()
        frac = (pos - low.float()).unsqueeze(1)
        return (1 - frac) * log_table[low] + frac * log_table[low + 1]

    def _exact_exp(self, log_table: torch.Tensor, quality: int) -> torch.Tensor:
        """exp of the interpolated ``log_table`` row at an integer ``quality``, (1, D, 1, 1) float32,
        through :func:`exact_exp_float32`: the same bits on every machine (torch's vectorised ``exp``
        depends on the CPU)."""
        with torch.no_grad():
            log_s = self._log_interpolate(log_table, int(quality)).detach().cpu().reshape(-1)
        return torch.tensor(exact_exp_float32(tuple(log_s.tolist())), dtype=torch.float32).view(1, -1, 1, 1)

    def quantization_scale(self, quality: torch.Tensor | float) -> torch.Tensor:
        """(B,) or scalar quality -> (B, M, 1, 1) scale, geometric interpolation between anchors (training)."""
        return self._log_interpolate(self.log_quant_scale, quality).exp()[:, :, None, None]

    def coding_scale(self, quality: int) -> torch.Tensor:
        """The scale (1, M, 1, 1) float32 that entropy coding uses at an integer ``quality``: as
        :meth:`quantization_scale`, the same bits on every machine."""
        return self._exact_exp(self.log_quant_scale, quality)

    def hyper_gain(self, quality: torch.Tensor | float) -> torch.Tensor | None:
        """(B,) or scalar quality -> (B, K, 1, 1) gain on the hyper-latent (training), or None without ``hyper_gain``."""
        if self.log_hyper_gain is None:
            return None
        return self._log_interpolate(self.log_hyper_gain, quality).exp()[:, :, None, None]

    def coding_hyper_gain(self, quality: int) -> torch.Tensor | None:
        """The hyper-latent gain (1, K, 1, 1) float32 that entropy coding uses, the same bits on every machine."""
        return None if self.log_hyper_gain is None else self._exact_exp(self.log_hyper_gain, quality)

    def hyper_scale(self, quality: torch.Tensor | float) -> torch.Tensor:
        """(B,) or scalar quality -> (B, K, 1, 1) scale of the gained hyper-latent's Gaussian (training)."""
        return self._log_interpolate(self.log_hyper_scale, quality).exp()[:, :, None, None]

    def _hyper_indexes(self, quality: int, shape: tuple[int, int]) -> torch.Tensor:
        """CDF indexes (1, K, h, w) int32 of the hyper-latent's Gaussian at an integer ``quality``.

        As compressai's ``build_indexes``: the number of table entries (but the last) below the
        scale; the scale comes from :meth:`_exact_exp` and is compared in float32, so the same
        indexes on every machine."""
        sigma = self._exact_exp(self.log_hyper_scale, quality).reshape(-1)
        table = self.hyper_conditional.scale_table[:-1].to(torch.float32)
        index = torch.searchsorted(table, sigma, side="left").int()
        return index.view(1, -1, 1, 1).expand(1, -1, *shape).contiguous()

    @property
    def entropy_coders(self) -> list[nn.Module]:
        """The compressai entropy models this codec codes with (hyper-latent first)."""
        return [m for m in (self.entropy_bottleneck, self.hyper_conditional, self.gaussian_conditional) if m is not None]

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

    def _entropy_params(
        self, hz_hat: torch.Tensor, context: torch.Tensor, gain: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the hyper-latent as coded (gained) and the context -> means, scales of y."""
        hz_hat = hz_hat if gain is None else hz_hat / gain
        params = self.entropy_parameters(torch.cat([self.hyper_synthesis(hz_hat), self.context_down(context)], 1))
        means, scales = params.chunk(2, dim=1)
        return means, F.softplus(scales)

    def _reconstruct(self, y_hat: torch.Tensor, context: torch.Tensor, memory: torch.Tensor):
        features = self.synthesis(torch.cat([self.synthesis_up(y_hat), context], 1))
        z_hat = self.synthesis_out(features)
        new_memory = self.memory_update(torch.cat([memory, features], 1))
        return z_hat, new_memory

    # ------------------------------------------------------------------ exact path (entropy coding)
    def _exact_memory(self, state: CodecState, h: int, w: int) -> torch.Tensor:
        """(1, Cm, h, w) float64 on the activation grid."""
        if state.memory is not None:
            return state.memory
        return to_grid(self.initial_memory.detach().cpu()).expand(1, -1, h, w)

    def _exact_entropy_params(self, hz_hat: torch.Tensor, context: torch.Tensor, quality: int):
        """Exact means (1, M, h/2, w/2) float64 and CDF indexes (int32) at ``quality``, from the
        hyper-latent as coded and the context (both on the grid); also the coding scale (1, M, 1, 1) float64."""
        run = self._exact.run
        gain = self.coding_hyper_gain(quality)
        if gain is not None:
            hz_hat = to_grid(hz_hat / gain.to(torch.float64))  # one correctly rounded division, then the grid
        params = run(self.entropy_parameters, torch.cat([run(self.hyper_synthesis, hz_hat), run(self.context_down, context)], 1))
        means, pre_scales = params.chunk(2, dim=1)
        s = self.coding_scale(quality).to(torch.float64)
        key = (self.gaussian_conditional.scale_table.numpy().tobytes(), s.numpy().tobytes())
        thresholds = self._thresholds.get(key)
        if thresholds is None:
            thresholds = self._thresholds[key] = index_thresholds(self.gaussian_conditional.scale_table, s)
            if len(self._thresholds) > 64:
                self._thresholds.pop(next(iter(self._thresholds)))
        k = (pre_scales * 2.0**ACT_BITS).to(torch.int64)  # exact: pre_scales is on the grid
        m = k.shape[1]
        indexes = torch.searchsorted(thresholds, k[0].reshape(m, -1), side="left").reshape(k.shape).int()
        return means * s, indexes, s  # means * s is exact: 26 + 24 significant bits

    def _exact_reconstruct(self, y_hat_s: torch.Tensor, s: torch.Tensor, context: torch.Tensor, memory: torch.Tensor):
        """(z_hat (1, C, h, w) float32, new memory float64 on the grid) from y_hat * s (exact values)."""
        run = self._exact.run
        y_hat = to_grid(y_hat_s / s)  # one correctly rounded division, then the grid
        features = run(self.synthesis, torch.cat([run(self.synthesis_up, y_hat), context], 1))
        z_hat = run(self.synthesis_out, features)
        new_memory = run(self.memory_update, torch.cat([memory, features], 1))
        return z_hat.to(torch.float32), new_memory  # grid values below 2**10 fit float32 exactly

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
        gain = self.hyper_gain(quality)
        hz = self.hyper_analysis(y)
        hz = hz if gain is None else hz * gain
        if self.entropy_bottleneck is not None:
            _, hz_likelihood = self.entropy_bottleneck(hz)
            medians = self.entropy_bottleneck._get_medians().detach().view(1, -1, 1, 1)
        else:
            _, hz_likelihood = self.hyper_conditional(hz, self.hyper_scale(quality))
            medians = 0.0
        hz_hat = hz + ((hz - medians).round() + medians - hz).detach()  # straight-through rounding
        means, scales = self._entropy_params(hz_hat, context, gain)
        s = self.quantization_scale(quality)
        y_s, means_s = y * s, means * s
        _, y_likelihood = self.gaussian_conditional(y_s, scales * s, means_s)
        y_hat_s = means_s + (y_s - means_s) + ((y_s - means_s).round() - (y_s - means_s)).detach()
        z_hat, new_memory = self._reconstruct(y_hat_s / s, context, memory)
        bits = -(torch.log2(y_likelihood).flatten(1).sum(1) + torch.log2(hz_likelihood).flatten(1).sum(1))
        return {"z_hat": z_hat, "state": CodecState(new_memory, state.frames_since_refresh + 1), "bits": bits,
                "likelihoods": {"y": y_likelihood, "hz": hz_likelihood}}  # (B, M, h/2, w/2), (B, K, h/4, w/4)

    def bits_map(self, z: torch.Tensor, state: CodecState, quality: int) -> torch.Tensor:
        """Bits spent at each latent position of one frame (h, w) float32, from the entropy model's
        likelihoods on the encoder's own state: :func:`glvc.codec.analysis.bits_map`."""
        from .analysis import bits_map

        return bits_map(self, z, state, quality)

    # ------------------------------------------------------------------ entropy coding
    @torch.inference_mode()
    def compress_frame(self, z: torch.Tensor, state: CodecState, quality: int) -> tuple[bytes, torch.Tensor, CodecState]:
        """Code one latent frame (1, C, h, w) -> (payload, z_hat (1, C, h, w), new state). CPU, float32."""
        self._check_latent(z)
        if z.shape[0] != 1:
            raise ValueError(f"compress_frame codes one stream at a time, got batch {z.shape[0]}")
        z = z.detach().to("cpu", torch.float32)
        h, w = z.shape[-2:]
        memory = self._exact_memory(state, h, w)
        context = self._exact.run(self.context_net, memory)
        y = self.analysis(torch.cat([z, context.float()], 1))  # the encoder's own analysis: float32
        hz = self.hyper_analysis(y)
        gain = self.coding_hyper_gain(quality)
        hz = hz if gain is None else hz * gain  # the encoder's own: the decoder gets hz_hat from the stream
        if self.entropy_bottleneck is not None:
            hz_string = self.entropy_bottleneck.compress(hz)[0]
            medians = self.entropy_bottleneck._get_medians().detach().view(1, -1, 1, 1)
            hz_hat = to_grid(self.entropy_bottleneck.quantize(hz, "dequantize", medians))
        else:
            hz_string = self.hyper_conditional.compress(hz, self._hyper_indexes(quality, hz.shape[-2:]))[0]
            hz_hat = to_grid(torch.round(hz))  # the symbols, as the decoder has them
        means_s, indexes, s = self._exact_entropy_params(hz_hat, context, quality)
        y_s = y.to(torch.float64) * s
        y_string = self.gaussian_conditional.compress(y_s, indexes, means_s)[0]
        y_hat_s = torch.round(y_s - means_s) + means_s  # the symbols + means, exactly as the decoder has them
        z_hat, new_memory = self._exact_reconstruct(y_hat_s, s, context, memory)
        payload = write_varint(len(hz_string)) + hz_string + y_string
        return payload, z_hat, CodecState(new_memory, state.frames_since_refresh + 1)

    @staticmethod
    def split_payload(payload: bytes) -> tuple[bytes, bytes]:
        """A frame payload -> (hyper-latent string, latent string); :class:`BitstreamError` if malformed."""
        reader = _Reader(payload, len(payload))
        hz_length = reader.varint("hyper-latent length")
        hz_string = reader.take(hz_length, "hyper-latent")
        y_string = payload[reader.pos :]
        if not y_string:
            raise BitstreamError("frame payload has no latent data after the hyper-latent")
        return hz_string, y_string

    @torch.inference_mode()
    def decompress_frame(
        self, payload: bytes, state: CodecState, quality: int, latent_size: tuple[int, int]
    ) -> tuple[torch.Tensor, CodecState]:
        """Inverse of :meth:`compress_frame`: payload -> (z_hat (1, C, h, w), new state)."""
        h, w = latent_size
        if h % self.spatial_stride or w % self.spatial_stride:
            raise BitstreamError(f"latent size {w}x{h} is not a multiple of {self.spatial_stride}")
        hz_string, y_string = self.split_payload(payload)
        shape = (h // self.spatial_stride, w // self.spatial_stride)
        hz_string = rans_input(hz_string, self.config.hyper_channels * shape[0] * shape[1], "hyper-latent")
        y_string = rans_input(y_string, self.config.y_channels * (h // 2) * (w // 2), "latent data")
        if self.entropy_bottleneck is not None:
            hz_hat = to_grid(self.entropy_bottleneck.decompress([hz_string], shape))
        else:
            indexes = self._hyper_indexes(quality, shape)
            hz_hat = to_grid(self.hyper_conditional.decompress([hz_string], indexes, dtype=torch.float64))
        memory = self._exact_memory(state, h, w)
        context = self._exact.run(self.context_net, memory)
        means_s, indexes, s = self._exact_entropy_params(hz_hat, context, quality)
        symbols = self.gaussian_conditional.decompress([y_string], indexes, dtype=torch.float64)
        z_hat, new_memory = self._exact_reconstruct(symbols + means_s, s, context, memory)
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
        return all(
            m._quantized_cdf.numel() and (isinstance(m, EntropyBottleneck) or m.scale_table.numel())
            for m in self.entropy_coders
        )

    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` (with the rANS tables) into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        self.prepare_entropy_coders()
        self.save_config(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, subfolder: str | None = None, config_overrides: dict | None = None, **hub_kwargs
    ) -> "LatentCodec":
        """Load from a local folder or a Hub repository (``config.json`` + ``model.safetensors``).

        ``config_overrides`` (for fine-tuning) replaces config entries; parameters that the new
        config adds and the stored weights lack (e.g. ``log_hyper_gain``) keep their initial
        values, weights of modules that it removes (the EntropyBottleneck, for ``hyper_prior``
        "gaussian") are dropped, any other mismatch is an error."""
        folder = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
        if os.path.isdir(folder):
            config_path = os.path.join(folder, cls.config_name)
            weights_path = os.path.join(folder, WEIGHTS_NAME)
        else:
            from huggingface_hub import hf_hub_download

            config_path = hf_hub_download(name_or_path, cls.config_name, subfolder=subfolder, **hub_kwargs)
            weights_path = hf_hub_download(name_or_path, WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
        config = cls.load_config(config_path)
        model = cls.from_config({**config, **(config_overrides or {})})
        if config_overrides:
            stored = load_file(weights_path)
            try:
                missing, unexpected = model.load_state_dict(stored, strict=False)
            except RuntimeError as e:  # shapes differ
                raise ValueError(f"weights in {name_or_path} do not fit the overridden config {config_overrides}: {e}") from None
            added = {name for name, _ in model.named_parameters()} - set(stored)
            held = stored_modules(stored)
            added |= {name for name in missing if name.split(".")[0] not in held}  # a new module's buffers
            removed = {name for name in unexpected if getattr(model, name.split(".")[0], None) is None}
            if set(unexpected) - removed or set(missing) - added:
                raise ValueError(
                    f"weights in {name_or_path} do not fit the overridden config: missing {sorted(set(missing) - added)}, "
                    f"unexpected {sorted(set(unexpected) - removed)}"
                )
        else:
            model.load_state_dict(load_file(weights_path))
        if not model.entropy_coders_ready:  # a file saved without them (not by save_pretrained)
            model.prepare_entropy_coders()
        return model.eval()
