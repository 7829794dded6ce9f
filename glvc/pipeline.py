"""The GLVC pipeline: frames -> tokenizer -> latent codec -> ``.glvc`` bytes, and back.

::

    frames (T, H, W, 3) uint8
      -> pad T to 1 + sk (repeat the last frame; s the tokenizer's temporal stride, 4 or 1), H and W
         to a multiple of ``GLVC.pixel_stride`` (replicate); the padding is written into the header
         and cropped off after decoding
      -> tokenizer encoder stream: 1 frame, then s frames at a time -> latent frame (1, C, h, w)
      -> LatentCodec.compress_frame with the stream's recurrent memory -> payload
      -> bitstream.pack(header, units)

Decoding mirrors it unit by unit. Both directions stream one latent frame (s pixel frames)
at a time, so memory does not grow with the clip's length unless the caller keeps the frames.

The model fingerprint in the header is a hash of both configs and all weights as stored
(the rANS tables included, never recomputed at load); a stream made by another model is
refused with :class:`~glvc.bitstream.BitstreamError`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import bitstream
from .bitstream import BitstreamError, FrameUnit, Header
from .codec import CodecState, LatentCodec
from .tokenizer import Tokenizer, load_tokenizer

ProgressCallback = Callable[[int, int], None]  # (latent frames done, latent frames in total or 0 if unknown)

GLVC_CONFIG_NAME = "glvc.json"


class ModelLoadError(RuntimeError):
    """A model could not be loaded (missing files, or the Hub could not be reached)."""


@dataclass
class Report:
    """What a run cost and produced. ``timings`` holds seconds per stage."""

    bytes: int
    frames: int
    width: int
    height: int
    fps: float
    quality: int
    timings: dict[str, float] = field(default_factory=dict)
    target_bytes: int | None = None  # the target the quality was chosen for (encode with a target)

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def bits_per_pixel(self) -> float:
        return 8 * self.bytes / (self.frames * self.width * self.height)

    @property
    def kbps(self) -> float:
        return 8 * self.bytes / self.duration / 1000

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(duration=self.duration, bits_per_pixel=self.bits_per_pixel, kbps=self.kbps)
        return out

    def target_note(self) -> str | None:
        """When a target was asked for and even quality 0 is larger: one sentence that says so and
        what was made instead (the encoder then uses quality 0, the smallest it can make). Else None."""
        if self.target_bytes is None or self.bytes <= self.target_bytes:
            return None
        target_kbps = 8 * self.target_bytes / self.duration / 1000
        return (
            f"the target of {self.target_bytes:,} bytes ({target_kbps:.1f} kbps over this clip) is below what this "
            f"model can make for this clip: made {self.bytes:,} bytes ({self.kbps:.1f} kbps) at quality {self.quality}, "
            "its smallest, instead"
        )

    def summary(self) -> str:
        stages = ", ".join(f"{name} {sec:.2f} s" for name, sec in self.timings.items())
        return (
            f"{self.frames} frames {self.width}x{self.height} @ {self.fps:.3f} fps, quality {self.quality}"
            + (f" (chosen for a target of {self.target_bytes} bytes)" if self.target_bytes is not None else "")
            + f": {self.bytes} bytes, {self.bits_per_pixel:.4f} bpp, {self.kbps:.1f} kbps ({stages})"
        )


@dataclass
class CodedLatent:
    """One latent frame as the encoder coded it (``encode(..., keep_latents=True)``)."""

    latent: torch.Tensor  # (1, C, h, w) float32: the tokenizer's normalised latent
    state: CodecState  # the codec state compress_frame got for it (the initial one on intra frames)
    frames: int  # real pixel frames it holds (1, or 4; fewer at the end of the clip)
    payload_bytes: int  # its unit's payload in the stream


@dataclass
class KeptLatents:
    """The latents of one encode, for analysis (bits maps) and for re-coding at other rates
    (:meth:`GLVC.encode_latents`) without running the tokenizer's encoder again."""

    frames: list[CodedLatent]
    quality: int
    refresh_period: int
    analysis: "_Analysis" = field(repr=False)

    @classmethod
    def of(cls, latents, states: list[CodecState], units: list[FrameUnit], quality: int, refresh_period: int,
           analysis: "_Analysis") -> "KeptLatents":
        """From one coding pass: its (latent, real frames) pairs, the state each was coded with, its units."""
        frames = [CodedLatent(z, state, real, len(unit.payload)) for (z, real), state, unit in zip(latents, states, units)]
        return cls(frames, quality, refresh_period, analysis)


@dataclass
class EncodeResult:
    bitstream: bytes
    reconstruction: np.ndarray | None  # (T, H, W, 3) uint8: exactly what decode() returns
    report: Report
    latents: KeptLatents | None = None  # with keep_latents=True


@dataclass
class DecodeResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: Fraction
    report: Report


def bytes_for_kbps(kbps: float, frames: int, fps: float | Fraction) -> int:
    """The bytes that ``kbps`` (1 kbps = 1000 bit/s) allows for ``frames`` frames at ``fps``, at least 1."""
    return max(1, int(kbps * 1000 / 8 * (frames / float(fps))))


def bytes_for_kilobytes(kilobytes: float) -> int:
    """``kilobytes`` (1 kB = 1000 bytes) as a byte count, at least 1."""
    return max(1, int(kilobytes * 1000))


def _to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (1, 3, n, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
    return x.float().div_(127.5).sub_(1.0)


def _to_frames(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, n, H, W) float in [-1, 1] -> (n, H, W, 3) uint8."""
    x = pixels[0].float().add(1.0).mul_(127.5).round_().clamp_(0, 255)
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class GLVC:
    """A tokenizer and a latent codec that together turn video into ``.glvc`` bytes.

    One instance may serve many streams: all per-stream state lives in local variables.
    """

    def __init__(self, tokenizer: Tokenizer, codec: LatentCodec, tokenizer_source: dict | None = None, segment: int = 0):
        if tokenizer.latent_channels != codec.config.latent_channels:
            raise ValueError(
                f"tokenizer gives {tokenizer.latent_channels} latent channels, codec expects {codec.config.latent_channels}"
            )
        if codec.max_quality > bitstream.MAX_QUALITY:
            raise ValueError(f"codec has {codec.max_quality + 1} quality levels, the format holds {bitstream.MAX_QUALITY + 1}")
        self.tokenizer = tokenizer
        self.codec = codec.eval().requires_grad_(False)
        if not self.codec.entropy_coders_ready:  # a codec fresh from training; loaded ones keep their stored tables
            self.codec.prepare_entropy_coders()
        self.tokenizer_source = tokenizer_source  # {"name_or_path", "subfolder"} when the tokenizer comes from elsewhere
        if segment < 0:
            raise ValueError(f"tokenizer segment must be >= 0 latent frames, got {segment}")
        # latent frames the tokenizer codes before it restarts (0 = never): a tokenizer trained on
        # short clips only is reliable for that many (measured: see the model card)
        self.segment = segment
        self.pixel_stride = tokenizer.spatial_stride * codec.spatial_stride
        self._fingerprint: bytes | None = None
        # intra-op threads of the latent codec (None: the caller's); its exact arithmetic gives the
        # same bits with any count, so this is a speed setting only (bench times 1 as the old path)
        self.codec_threads: int | None = None

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu", dtype=torch.float32,
                        engine: str | None = None, **hub_kwargs) -> "GLVC":
        """Load ``<dir>/tokenizer`` and ``<dir>/codec`` from a folder or a Hub repository.

        ``engine`` is the tokenizer's inference engine (:data:`glvc.tokenizer.ENGINES`, default
        :func:`glvc.tokenizer.default_engine`); it changes pixels within float rounding, never the bitstream.

        A ``glvc.json`` beside them says how the model was trained (``tokenizer_segment``) and may name the
        tokenizer elsewhere, e.g. ``{"tokenizer": {"name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "subfolder":
        "vae"}}``. A local folder without one is refused (it would load with segment 0 whatever the model was
        trained with); a Hub repository without one loads with the defaults.
        """
        try:
            config = {}
            if os.path.isdir(name_or_path):
                path = os.path.join(name_or_path, GLVC_CONFIG_NAME)
                if not os.path.isfile(path):
                    raise ValueError(f"{path} is missing: add one with the tokenizer_segment the model was trained with (the "
                                     "training config's tokenizer_segment, else its codec.latent_cache.segment, else 0), "
                                     'e.g. {"tokenizer_segment": 3} as in glvc/pretrained/default')
                with open(path) as f:
                    config = json.load(f)
            else:
                from huggingface_hub import hf_hub_download
                from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

                try:
                    with open(hf_hub_download(name_or_path, GLVC_CONFIG_NAME, **hub_kwargs)) as f:
                        config = json.load(f)
                except LocalEntryNotFoundError as err:
                    # Hub unreachable and nothing cached (a subclass of EntryNotFoundError: without this
                    # clause an offline load would go on as if the repository had no glvc.json)
                    raise OSError(f"the Hugging Face Hub cannot be reached and {GLVC_CONFIG_NAME} of this model "
                                  "is not in the local cache") from err
                except EntryNotFoundError:  # the repository has no glvc.json: the defaults
                    config = {}
            source = config.get("tokenizer") or {"name_or_path": name_or_path, "subfolder": "tokenizer"}
            tokenizer = load_tokenizer(
                source["name_or_path"], subfolder=source.get("subfolder"), device=device, dtype=dtype, engine=engine,
                **hub_kwargs,
            )
            codec = LatentCodec.from_pretrained(name_or_path, subfolder="codec", **hub_kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"could not load a GLVC model from {name_or_path!r}: {err}") from err
        return cls(tokenizer, codec, tokenizer_source=config.get("tokenizer"), segment=int(config.get("tokenizer_segment", 0)))

    def with_tokenizer_engine(self, engine: str) -> "GLVC":
        """The same model (tokenizer weights and codec shared, not copied) with another tokenizer engine."""
        other = copy.copy(self)  # not __init__: the shared codec's rANS tables are not rebuilt under a running stream
        other.tokenizer = self.tokenizer.with_engine(engine)
        return other

    def with_codec_threads(self, threads: int | None) -> "GLVC":
        """The same model (shared, not copied) coding latents with ``threads`` intra-op threads
        (None: the caller's). Streams and frames are the same whatever the count (tested)."""
        if threads is not None and threads < 1:
            raise ValueError(f"codec threads must be >= 1, got {threads}")
        other = copy.copy(self)
        other.codec_threads = threads
        return other

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        config = {"tokenizer_segment": self.segment}
        if self.tokenizer_source:
            config["tokenizer"] = self.tokenizer_source
        else:
            self.tokenizer.vae.save_pretrained(os.path.join(directory, "tokenizer"))
        with open(os.path.join(directory, GLVC_CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2)
        self.codec.save_pretrained(os.path.join(directory, "codec"))
        from .defaults import normal_file_modes

        normal_file_modes(directory)  # safetensors writes 0600

    @property
    def fingerprint(self) -> bytes:
        """16-byte hash of the tokenizer and codec configs and weights (entropy tables included).

        For a loaded model these are the tensors of its files, bit for bit: nothing hashed here is
        derived at load, so every machine computes the same fingerprint (tests/test_golden.py)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, module in (("tokenizer", self.tokenizer.vae), ("codec", self.codec)):
                digest.update(name.encode())
                # not paths/versions; options added later, at the value that means "off", are left out so
                # that models saved before the option existed keep their fingerprint (and their streams)
                neutral = getattr(module, "fingerprint_neutral_options", {})
                config = {k: v for k, v in dict(module.config).items()
                          if not k.startswith("_") and not (k in neutral and v == neutral[k])}
                digest.update(json.dumps(config, sort_keys=True, default=str).encode())
                for key, tensor in sorted(module.state_dict().items()):
                    digest.update(key.encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.digest()[: bitstream.FINGERPRINT_BYTES]
        return self._fingerprint

    @property
    def temporal_stride(self) -> int:
        """Pixel frames per latent frame after the first: 4 (causal video tokenizer) or 1 (per-frame)."""
        return self.tokenizer.temporal_stride

    @property
    def max_quality(self) -> int:
        return self.codec.max_quality

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        frames: np.ndarray | Iterable[np.ndarray],
        fps: float | Fraction,
        quality: int | None = None,
        target_bytes: int | None = None,
        refresh_period: int = 0,
        reconstruct: bool = True,
        progress: ProgressCallback | None = None,
        target_kbps: float | None = None,
        keep_latents: bool = False,
    ) -> EncodeResult:
        """Encode frames (an (T, H, W, 3) uint8 array or an iterable of (H, W, 3) frames).

        Give one of ``quality``, the rate index 0 .. ``max_quality`` (higher = more bytes),
        ``target_bytes``, or ``target_kbps`` (the bytes of that bitrate over the clip's duration,
        :func:`bytes_for_kbps`, known once the clip is read): with a target the clip is analysed
        once and the latent codec alone is run at the qualities of a bisection, keeping the highest
        quality whose stream fits (the lowest if none does); ``report.quality`` says which was
        chosen and ``report.target_bytes`` the target. ``refresh_period`` resets the temporal
        memory every that many latent frames (0: never). With ``reconstruct`` the result holds the
        frames the decoder will output, bit for bit. With a fixed quality everything streams, one
        latent frame at a time; with a target the latents (1/12 of the frames' size) are kept.
        ``keep_latents`` returns them, with the codec state of each, in ``result.latents``.
        """
        if sum(x is not None for x in (quality, target_bytes, target_kbps)) != 1:
            raise ValueError("give exactly one of quality, target_bytes and target_kbps")
        if target_kbps is not None and not 0 < target_kbps < math.inf:  # NaN fails too
            raise ValueError(f"target_kbps must be positive and finite, got {target_kbps}")
        if quality is not None and not 0 <= int(quality) <= self.max_quality:
            raise ValueError(f"quality must be in 0 .. {self.max_quality}, got {quality}")
        if target_bytes is not None and target_bytes < 1:
            raise ValueError(f"target_bytes must be positive, got {target_bytes}")
        if refresh_period < 0:
            raise ValueError(f"refresh period must be >= 0, got {refresh_period}")
        fps = Fraction(fps).limit_denominator(1001)
        timer = _Timer()
        analysis = _Analysis()
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
                raise ValueError(f"expected (T, H, W, 3) uint8 frames with T >= 1, got {frames.shape} {frames.dtype}")
            analysis.total = bitstream.latent_frame_count(frames.shape[0], self.segment, self.temporal_stride)
        latents = self._analyze(iter(frames), analysis, timer)
        if keep_latents:
            latents = list(latents)
        coded = None
        states: list[CodecState] = []
        if quality is None:
            latents = list(latents)
            if target_kbps is not None:
                target_bytes = bytes_for_kbps(target_kbps, analysis.count, fps)
            quality, coded, states = self._search_quality(latents, analysis, fps, target_bytes, refresh_period, timer)
        quality = int(quality)
        if coded is None:
            coded = self._code(latents, quality, refresh_period, timer, progress, analysis.total, states)
        units: list[FrameUnit] = []
        recon: list[np.ndarray] = []
        decoder = None
        for index, (unit, z_hat, real) in enumerate(coded):
            units.append(unit)
            if reconstruct:
                start = time.perf_counter()
                if self._starts_segment(index):
                    decoder = self.tokenizer.decoder_stream()
                pixels = decoder.push(z_hat.unsqueeze(2))
                recon.append(analysis.geometry.crop(_to_frames(pixels))[:real])
                timer.add("tokenizer_decode", start)
        data = bitstream.pack(self._header(analysis, fps, quality, refresh_period), units)
        report = Report(len(data), analysis.count, analysis.geometry.width, analysis.geometry.height, float(fps), quality,
                        timer.timings, target_bytes)
        kept = KeptLatents.of(latents, states, units, quality, refresh_period, analysis) if keep_latents else None
        return EncodeResult(data, np.concatenate(recon) if reconstruct else None, report, kept)

    def encode_latents(self, kept: KeptLatents, fps: float | Fraction, quality: int) -> EncodeResult:
        """Code the latents of an earlier encode (``keep_latents=True``) at another ``quality``, with
        its refresh period, and decode them: the stream and frames that :meth:`encode` makes of the
        same clip at that quality, without the tokenizer's encoder (tested)."""
        if not 0 <= int(quality) <= self.max_quality:
            raise ValueError(f"quality must be in 0 .. {self.max_quality}, got {quality}")
        fps = Fraction(fps).limit_denominator(1001)
        timer, analysis = _Timer(), kept.analysis
        latents = [(frame.latent, frame.frames) for frame in kept.frames]
        states: list[CodecState] = []
        coded = list(self._code(latents, int(quality), kept.refresh_period, timer, states=states))
        units = [unit for unit, _, _ in coded]
        start = time.perf_counter()
        recon = self._latents_to_frames([(z_hat, real) for _, z_hat, real in coded], analysis)
        timer.add("tokenizer_decode", start)
        data = bitstream.pack(self._header(analysis, fps, int(quality), kept.refresh_period), units)
        report = Report(len(data), analysis.count, analysis.geometry.width, analysis.geometry.height, float(fps),
                        int(quality), timer.timings)
        return EncodeResult(data, recon, report, KeptLatents.of(latents, states, units, int(quality), kept.refresh_period, analysis))

    def tokenizer_round_trip(self, frames: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        """The frames through the tokenizer alone (encode, then decode the unquantised latents),
        with the same grouping, segments and padding as :meth:`encode`: the quality ceiling that no
        rate of the latent codec can pass (scripts/tokenizer_ceiling.py)."""
        analysis = _Analysis()
        return self._latents_to_frames(self._analyze(iter(frames), analysis, _Timer()), analysis)

    def _latents_to_frames(self, latents: Iterable[tuple[torch.Tensor, int]], analysis: "_Analysis") -> np.ndarray:
        """(latent frame (1, C, h, w), real pixel frames in it) pairs -> the cropped uint8 frames
        (T, H, W, 3) that the tokenizer's decoder makes of them, restarting at each segment."""
        decoder, out = None, []
        for index, (latent, real) in enumerate(latents):
            if self._starts_segment(index):
                decoder = self.tokenizer.decoder_stream()
            out.append(analysis.geometry.crop(_to_frames(decoder.push(latent.unsqueeze(2))))[:real])
        return np.concatenate(out)

    def _analyze(self, frames: Iterator[np.ndarray], analysis: "_Analysis", timer: _Timer):
        """Tokenizer pass: yields (normalised latent frame (1, C, h, w), real pixel frames in it)."""
        encoder = None
        for chunk, real, starts_segment in _chunks(frames, self.segment, self.temporal_stride):
            if starts_segment:
                encoder = self.tokenizer.encoder_stream()
            if analysis.geometry is None:
                analysis.geometry = _Geometry.of(chunk[0], self.pixel_stride)
            analysis.geometry.check(chunk[0])
            analysis.count += real
            start = time.perf_counter()
            latent = encoder.push(analysis.geometry.pad(_to_pixels(chunk), self.tokenizer.device))
            timer.add("tokenizer_encode", start)
            yield latent[:, :, 0], real
        if analysis.geometry is None:
            raise ValueError("no frames to encode")

    def _code(self, latents, quality: int, refresh_period: int, timer: _Timer, progress=None, total: int = 0,
              states: list[CodecState] | None = None):
        """Latent codec pass: yields (FrameUnit, z_hat (1, C, h, w), real pixel frames); appends the
        state each frame is coded with to ``states`` when given."""
        state = self.codec.initial_state()
        for index, (latent, real) in enumerate(latents):
            kind = bitstream.KIND_INTER
            if state.memory is None or (refresh_period and state.frames_since_refresh >= refresh_period):
                state, kind = self.codec.initial_state(), bitstream.KIND_INTRA
            if states is not None:
                states.append(state)
            start = time.perf_counter()
            with _intra_op_threads(self.codec_threads):
                payload, z_hat, state = self.codec.compress_frame(latent, state, quality)
            timer.add("latent_coding", start)
            if progress:
                progress(index + 1, total)
            yield FrameUnit(kind=kind, payload=payload), z_hat, real

    def _search_quality(self, latents, analysis, fps, target_bytes, refresh_period, timer):
        """Bisection over the quality index with the latent codec alone; returns (quality, coded, states)."""
        coded_at: dict[int, list] = {}
        states_at: dict[int, list[CodecState]] = {}

        def size(q: int) -> int:
            states_at[q] = []
            coded_at[q] = list(self._code(latents, q, refresh_period, timer, states=states_at[q]))
            units = [unit for unit, _, _ in coded_at[q]]
            return len(bitstream.pack(self._header(analysis, fps, q, refresh_period), units))

        low, high = 0, self.max_quality
        if size(low) > target_bytes:
            return low, coded_at[low], states_at[low]
        while low < high:  # invariant: size(low) fits
            mid = (low + high + 1) // 2
            if size(mid) <= target_bytes:
                low = mid
            else:
                high = mid - 1
        return low, coded_at[low], states_at[low]

    def _header(self, analysis: "_Analysis", fps: Fraction, quality: int, refresh_period: int) -> Header:
        geometry = analysis.geometry
        return Header(
            fingerprint=self.fingerprint,
            width=geometry.width,
            height=geometry.height,
            frames=analysis.count,
            fps=fps,
            quality=quality,
            refresh_period=refresh_period,
            pad_right=geometry.pad_right,
            pad_bottom=geometry.pad_bottom,
            pad_frames=bitstream.pad_frame_count(analysis.count, self.segment, self.temporal_stride),
            segment=self.segment,
            temporal_stride=self.temporal_stride,
        )

    def _starts_segment(self, latent_index: int) -> bool:
        return latent_index == 0 or (self.segment > 0 and latent_index % self.segment == 0)

    # ------------------------------------------------------------------ decoding
    def decode(self, data: bytes, progress: ProgressCallback | None = None) -> DecodeResult:
        """Decode a whole ``.glvc`` stream into frames. Raises BitstreamError on any defect."""
        timer = _Timer()
        frames = list(self.decode_stream(data, progress, timer))
        header = bitstream.unpack_header(data)[0]
        report = Report(len(data), header.frames, header.width, header.height, float(header.fps), header.quality, timer.timings)
        return DecodeResult(np.concatenate(frames), header.fps, report)

    def decode_stream(self, data: bytes, progress: ProgressCallback | None = None, timer: _Timer | None = None) -> Iterator[np.ndarray]:
        """Yield decoded frames (n, H, W, 3) uint8, one latent frame (1 or 4 pixel frames) at a time."""
        timer = timer or _Timer()
        header = bitstream.unpack_header(data)[0]
        geometry = _Geometry.for_header(header, self.pixel_stride)
        decoder = None
        remaining = header.frames
        for index, z_hat in enumerate(self._decode_latents(data, progress, timer)):
            start = time.perf_counter()
            if self._starts_segment(index):
                decoder = self.tokenizer.decoder_stream()
            out = geometry.crop(_to_frames(decoder.push(z_hat.unsqueeze(2))))
            timer.add("tokenizer_decode", start)
            out = out[: min(remaining, out.shape[0])]
            remaining -= out.shape[0]
            yield out

    def decode_latents(self, data: bytes) -> torch.Tensor:
        """Entropy-decode a stream to the codec's latents (1, C, T', h, w), without the tokenizer.

        These depend only on the decoded symbols and the single-threaded codec, so they are
        bit-identical whatever the caller's thread count (tested)."""
        return torch.stack(list(self._decode_latents(data, None, _Timer())), dim=2)

    def _decode_latents(self, data: bytes, progress: ProgressCallback | None, timer: _Timer) -> Iterator[torch.Tensor]:
        start = time.perf_counter()
        container = bitstream.unpack(data)
        header = container.header
        if header.fingerprint != self.fingerprint:
            from .defaults import known_model_name

            def named(fingerprint: bytes) -> str:
                name = known_model_name(fingerprint.hex())
                return fingerprint.hex() + (f" ({name})" if name else "")

            raise BitstreamError(
                f"stream was made by model {named(header.fingerprint)}, this decoder is model {named(self.fingerprint)}: "
                "decode it with the model that made it (--model DIR in the command line; `python -m glvc info` "
                "shows a stream's model)"
            )
        if header.temporal_stride != self.temporal_stride:
            raise BitstreamError(f"stream groups {header.temporal_stride} pixel frames per latent frame, this model's "
                                 f"tokenizer {self.temporal_stride}")
        if header.segment != self.segment:
            raise BitstreamError(f"stream uses tokenizer segments of {header.segment} latent frames, this model {self.segment}")
        if header.quality > self.max_quality:
            raise BitstreamError(f"quality {header.quality} is above this model's maximum {self.max_quality}")
        geometry = _Geometry.for_header(header, self.pixel_stride)
        stride = self.tokenizer.spatial_stride
        latent_size = (geometry.padded_height // stride, geometry.padded_width // stride)
        timer.add("parse", start)
        state = self.codec.initial_state()
        for index, unit in enumerate(container.units):
            if unit.kind == bitstream.KIND_INTRA:
                state = self.codec.initial_state()
            start = time.perf_counter()
            try:
                with _intra_op_threads(self.codec_threads):
                    z_hat, state = self.codec.decompress_frame(unit.payload, state, header.quality, latent_size)
            except BitstreamError as err:
                raise BitstreamError(f"unit {index}: {err}") from err
            except (ValueError, RuntimeError) as err:
                raise BitstreamError(f"unit {index}: payload does not decode ({err})") from err
            timer.add("latent_decoding", start)
            if progress:
                progress(index + 1, len(container.units))
            yield z_hat


@contextlib.contextmanager
def _intra_op_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` for the block (process-wide), then restored."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class _Analysis:
    """What the tokenizer pass has learnt about the clip so far."""

    geometry: "_Geometry | None" = None
    count: int = 0  # pixel frames seen
    total: int = 0  # latent frames expected, 0 if unknown


def _chunks(frames: Iterator[np.ndarray], segment: int = 0, stride: int = bitstream.TEMPORAL_STRIDE
            ) -> Iterator[tuple[np.ndarray, int, bool]]:
    """Group frames as a tokenizer of temporal ``stride`` needs them: [f0], [f1..f4], [f5..f8], ... at
    stride 4, one frame each at stride 1; with ``segment`` > 0 the grouping restarts with a single frame
    every ``segment`` latent frames. The last group is padded by repeating its last frame. Yields
    (chunk (n, H, W, 3), real frames in it, starts a segment)."""
    position = 0  # latent frame index inside the current segment
    group: list[np.ndarray] = []
    for frame in frames:
        frame = np.asarray(frame)
        if position == 0:
            yield frame[None], 1, True
            position = 1 if segment != 1 else 0
            continue
        group.append(frame)
        if len(group) == stride:
            yield np.stack(group), stride, False
            group = []
            position = 0 if segment and position + 1 == segment else position + 1
    if group:
        real = len(group)
        group += [group[-1]] * (stride - real)
        yield np.stack(group), real, False


@dataclass
class _Geometry:
    width: int
    height: int
    padded_width: int
    padded_height: int

    @property
    def pad_right(self) -> int:
        return self.padded_width - self.width

    @property
    def pad_bottom(self) -> int:
        return self.padded_height - self.height

    @classmethod
    def of(cls, frame: np.ndarray, stride: int) -> "_Geometry":
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 frames, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if not (1 <= w <= bitstream.MAX_SIDE and 1 <= h <= bitstream.MAX_SIDE):
            raise ValueError(f"frame size {w}x{h} is outside 1x1 .. {bitstream.MAX_SIDE}x{bitstream.MAX_SIDE}")
        return cls(w, h, -(-w // stride) * stride, -(-h // stride) * stride)

    @classmethod
    def for_header(cls, header: Header, stride: int) -> "_Geometry":
        geometry = cls(header.width, header.height, header.width + header.pad_right, header.height + header.pad_bottom)
        expected = cls(header.width, header.height, -(-header.width // stride) * stride, -(-header.height // stride) * stride)
        if geometry != expected:
            raise BitstreamError(
                f"padding {header.pad_right}x{header.pad_bottom} does not match this model's stride {stride} "
                f"for {header.width}x{header.height} (expected {expected.pad_right}x{expected.pad_bottom})"
            )
        return geometry

    def check(self, frame: np.ndarray) -> None:
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame size changed from {self.width}x{self.height} to {frame.shape[1]}x{frame.shape[0]}")

    def pad(self, pixels: torch.Tensor, device) -> torch.Tensor:
        """(1, 3, n, H, W) -> (1, 3, n, H', W') by replicating the last row/column."""
        if self.pad_right or self.pad_bottom:
            b, c, n, h, w = pixels.shape
            flat = pixels.reshape(b, c * n, h, w)
            flat = torch.nn.functional.pad(flat, (0, self.pad_right, 0, self.pad_bottom), mode="replicate")
            pixels = flat.reshape(b, c, n, self.padded_height, self.padded_width)
        return pixels.to(device)

    def crop(self, frames: np.ndarray) -> np.ndarray:
        return frames[:, : self.height, : self.width]
