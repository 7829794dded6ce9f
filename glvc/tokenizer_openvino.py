"""The tokenizer's causal steps compiled by OpenVINO: the ``"openvino"`` engine of :mod:`glvc.tokenizer`.

A stream (:class:`glvc.tokenizer.EncoderStream` / ``DecoderStream``) runs its encoder or decoder
one chunk at a time with a cache of the last frames each causal convolution saw. The cache has
three shapes in a stream's life: none before the first chunk, one frame per convolution after it
(plus diffusers' ``"Rep"`` marks in the decoder's upsamplers), two frames from then on. So each side
is three fixed graphs, "steps": the first chunk, the second, and every later one. Each step is a
module whose inputs are the chunk and the cache tensors and whose outputs are the result and the
new cache; it is traced once at a small size with the height and width left dynamic, converted by
OpenVINO and compiled for the CPU in float32.

Conversion costs about a minute for the bundled tokenizer, so the converted graphs are kept on
disk (``$GLVC_CACHE_DIR``, default ``~/.cache/glvc``), under a key made of the tokenizer's config
and weights and the versions of OpenVINO and diffusers; later processes only compile them.

Pixels: OpenVINO's kernels round differently from PyTorch's, within float32 rounding (the bound
measured on the bundled model is in README's speed section). The latent codec is not affected.
An encoder's reconstruction equals a decoder's output bit for bit when both run this engine with
the same thread count on the same machine (tested), like the other engines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings

import numpy as np
import torch
from torch import nn

STEPS = 3  # the first chunk, the second, every later one
PROBE_LATENT_SIZE = 4  # latent height and width of the tiny clip the steps are traced on
CACHE_ENV = "GLVC_CACHE_DIR"
_FORMAT = 1  # bump when the traced modules change
logger = logging.getLogger(__name__)


def available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "glvc")


def _layout(cache: list) -> tuple:
    """What each cache slot holds: None, "Rep" or a tensor's frame count."""
    return tuple(None if c is None else "Rep" if isinstance(c, str) else int(c.shape[2]) for c in cache)


class _Step(nn.Module):
    """One causal step of the encoder or the decoder as a graph: (chunk, *cache tensors) -> (out, *new cache tensors)."""

    def __init__(self, vae, side: str, layout: tuple, first_chunk: bool):
        super().__init__()
        self.vae, self.side, self.layout, self.first_chunk = vae, side, layout, first_chunk

    def forward(self, x: torch.Tensor, *cache: torch.Tensor):
        tensors = iter(cache)
        feat_cache = [slot if slot is None or slot == "Rep" else next(tensors) for slot in self.layout]
        if self.side == "encoder":
            out = self.vae.quant_conv(self.vae.encoder(x, feat_cache=feat_cache, feat_idx=[0]))
            out = out[:, : self.vae.config.z_dim]  # the posterior mean
        else:
            out = self.vae.decoder(self.vae.post_quant_conv(x), feat_cache=feat_cache, feat_idx=[0],
                                   first_chunk=self.first_chunk)
        return (out, *[c for c in feat_cache if isinstance(c, torch.Tensor)])


@contextlib.contextmanager
def _traceable_upsampling():
    """diffusers' 2x ``nearest-exact`` upsampling has no OpenVINO conversion; for an integer factor of
    2 it equals repeating each value twice along height and width, written here with expand/reshape."""
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    original = wan.WanUpsample.forward

    def repeat_twice(self, x):
        if tuple(float(s) for s in self.scale_factor) != (2.0, 2.0):
            raise ValueError(f"openvino engine: upsampling by {self.scale_factor} is not supported (2x only)")
        n, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)

    wan.WanUpsample.forward = repeat_twice
    try:
        yield
    finally:
        wan.WanUpsample.forward = original


class CompiledTokenizer:
    """The six steps (encoder and decoder, :data:`STEPS` each) of one tokenizer, compiled for the CPU.

    ``step(side, k, x, cache)`` runs chunk ``k`` (0, 1, then 2 for every later one) of a stream on
    ``side`` ("encoder" or "decoder"): ``x`` is the step's input (patchified pixels; denormalised
    latents, before the post-quant convolution), ``cache`` the numpy arrays the previous step returned.
    """

    def __init__(self, vae, threads: int):
        import openvino

        self.threads = threads
        self.key = self._key(vae, openvino.__version__)
        folder = os.path.join(cache_root(), "openvino", self.key)
        if not all(os.path.isfile(os.path.join(folder, f"{name}.xml")) for name in self._names()):
            logger.warning("converting the tokenizer for OpenVINO into %s (once per model and machine, about a "
                           "minute for the bundled one)", folder)
            self._convert(vae, folder)
        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        self._compiled = {name: core.compile_model(core.read_model(os.path.join(folder, f"{name}.xml")), "CPU", config)
                          for name in self._names()}
        # idle infer requests per step: each holds its own buffers, so they are reused, one per
        # stream running at that moment (a request per call grew the decoder's peak RSS by 1.2 GB)
        self._idle: dict[str, list] = {name: [] for name in self._names()}
        self._lock = threading.Lock()

    @staticmethod
    def _names() -> list[str]:
        return [f"{side}{k}" for side in ("encoder", "decoder") for k in range(STEPS)]

    @staticmethod
    def _key(vae, ov_version: str) -> str:
        import diffusers

        digest = hashlib.sha256()
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        digest.update(json.dumps([config, ov_version, diffusers.__version__, torch.__version__, _FORMAT],
                                 sort_keys=True, default=str).encode())
        for name, tensor in sorted(vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:24]

    @staticmethod
    def _probe_inputs(vae) -> dict[str, list]:
        """Trace inputs for each step: a tiny clip run through the PyTorch streams, chunk by chunk."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        from .tokenizer import TEMPORAL_STRIDE, Tokenizer

        tok = Tokenizer(vae, engine="reference")
        size = PROBE_LATENT_SIZE * tok.spatial_stride
        generator = torch.Generator().manual_seed(0)
        inputs: dict[str, list] = {}
        with torch.inference_mode():
            cache: list = [None] * tok._encoder_convs
            for k in range(STEPS):
                frames = 1 if k == 0 else TEMPORAL_STRIDE
                pixels = torch.rand(1, 3, frames, size, size, generator=generator) * 2 - 1
                x = patchify(pixels, patch_size=tok.patch_size) if tok.patch_size > 1 else pixels
                inputs[f"encoder{k}"] = [x, list(cache)]
                vae.encoder(x, feat_cache=cache, feat_idx=[0])
            encoder_cache = cache
            cache = [None] * tok._decoder_convs
            for k in range(STEPS):
                z = torch.randn(1, tok.latent_channels, 1, PROBE_LATENT_SIZE, PROBE_LATENT_SIZE, generator=generator)
                inputs[f"decoder{k}"] = [z, list(cache)]
                vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=k == 0)
        # the last step must hand on a cache of the shape it takes: then it serves every later chunk
        for side, after in (("encoder", encoder_cache), ("decoder", cache)):
            if _layout(after) != _layout(inputs[f"{side}{STEPS - 1}"][1]):
                raise ValueError(f"openvino engine: this VAE's {side} cache does not settle after two chunks")
        return inputs

    def _convert(self, vae, folder: str) -> None:
        import openvino

        inputs = self._probe_inputs(vae)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        work = tempfile.mkdtemp(prefix=".converting-", dir=os.path.dirname(folder))
        try:
            with _traceable_upsampling(), torch.no_grad(), warnings.catch_warnings():
                # the trace fixes the cache's frame counts: intended, each step is one of them
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                for name in self._names():
                    x, cache = inputs[name]
                    side, k = name[:-1], int(name[-1])
                    step = _Step(vae, side, _layout(cache), first_chunk=k == 0).eval()
                    tensors = [x] + [c for c in cache if isinstance(c, torch.Tensor)]
                    shapes = [openvino.PartialShape([*t.shape[:3], -1, -1]) for t in tensors]
                    model = openvino.convert_model(step, example_input=tuple(tensors), input=shapes)
                    openvino.save_model(model, os.path.join(work, f"{name}.xml"), compress_to_fp16=False)
            try:
                os.rename(work, folder)  # atomic: a reader sees all six or none
            except OSError:  # another process finished first
                if not os.path.isdir(folder):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def step(self, side: str, k: int, x: torch.Tensor, cache: list[np.ndarray]) -> tuple[torch.Tensor, list[np.ndarray]]:
        name = f"{side}{min(k, STEPS - 1)}"
        with self._lock:
            request = self._idle[name].pop() if self._idle[name] else self._compiled[name].create_infer_request()
        try:
            arrays = [c for c in cache if c is not None]  # a fresh stream's cache is all None
            request.infer([np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), *arrays])
            outputs = [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]
        finally:
            with self._lock:
                self._idle[name].append(request)
        return torch.from_numpy(outputs[0]), outputs[1:]
