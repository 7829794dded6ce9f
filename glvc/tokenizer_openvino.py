"""Tokenizers compiled by OpenVINO: the ``"openvino"`` engine of both tokenizer families.

One mechanism, two families. A model's networks are traced into a few fixed graphs, with the batch
size, height and width left dynamic, converted by OpenVINO once per model and machine (kept on disk),
and compiled for the CPU in float32 in every process (:class:`CompiledGraphs`). What differs per
family is only which graphs there are and what shapes they take and give:

* :class:`CompiledTokenizer`, the causal video VAE of :mod:`glvc.tokenizer`. A stream
  (:class:`glvc.tokenizer.EncoderStream` / ``DecoderStream``) runs its encoder or decoder one chunk at
  a time with a cache of the last frames each causal convolution saw. The cache has three shapes in
  a stream's life: none before the first chunk, one frame per convolution after it (plus diffusers'
  ``"Rep"`` marks in the decoder's upsamplers), two frames from then on. So each side is three
  graphs, "steps": the first chunk, the second, and every later one. Each step is a module whose
  inputs are the chunk and the cache tensors and whose outputs are the result and the new cache;
  it is traced on a tiny batch of two clips. Conversion takes about a minute for the bundled tokenizer.
* :class:`CompiledFrameTokenizer`, the per-frame 2-D autoencoder of :mod:`glvc.tokenizer_taef`: two
  graphs, its encoder (RGB frames in [0, 1] -> raw latents) and its decoder, each traced on a tiny
  batch of two frames. Conversion of the shipped TAEF2 takes 9-16 s (2 busy cores).

Every graph's output is checked against the shape the model's config implies, and a mismatch raises
with both (graphs with the batch size fixed at 1 once failed on a batch of two, or, as reported,
returned one clip).

The converted graphs are kept on disk (``$GLVC_CACHE_DIR``, default ``~/.cache/glvc``; folder
``openvino/<key>``), under a key made of the family, the model's config and weights and the versions
of OpenVINO, diffusers and PyTorch; later processes only compile them, and OpenVINO keeps each
compiled graph there too (its ``CACHE_DIR``, subfolder ``compiled``), which later processes load
instead of compiling again.

The cache is bounded: after each compile the least recently used entries are removed until the
whole ``openvino`` folder holds at most ``$GLVC_OPENVINO_CACHE_MB`` megabytes (default
:data:`DEFAULT_CACHE_LIMIT_MB`; 0 keeps only the entries in use). An entry is in use while a process
holds its :class:`CompiledGraphs` (a shared ``flock`` on ``openvino/<key>.lock``, released when the
process ends, however it ends); entries in use are never removed, whatever the limit.

Pixels: OpenVINO's kernels round differently from PyTorch's, within float32 rounding (the bound
measured on the bundled model is in README's speed section). The latent codec is not affected.
An encoder's reconstruction equals a decoder's output bit for bit when both run this engine with
the same thread count on the same machine (tested for both families), like the other engines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass

try:
    import fcntl
except ImportError:  # not on Windows: there the cache is not pruned
    fcntl = None

import numpy as np
import torch
from torch import nn

STEPS = 3  # the causal tokenizer's steps: the first chunk, the second, every later one
PROBE_LATENT_SIZE = 4  # latent height and width of the tiny inputs the graphs are traced on
PROBE_BATCH = 2  # clips or frames traced at once: a size of 1 could be taken for a constant; the batch stays dynamic
CACHE_ENV = "GLVC_CACHE_DIR"
CACHE_LIMIT_ENV = "GLVC_OPENVINO_CACHE_MB"
DEFAULT_CACHE_LIMIT_MB = 1024
MB = 1 << 20
COMPILED_SUBFOLDER = "compiled"  # OpenVINO's own cache of compiled graphs, inside an entry
_WORK_PREFIX = ".converting-"  # + key + "-": a conversion in progress (or killed)
_KEY_LENGTH = 24
logger = logging.getLogger(__name__)
_compile_lock = threading.Lock()  # one conversion or compile at a time in a process


def available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> str:
    """``$GLVC_CACHE_DIR``, else ``~/.cache/glvc``; the converted graphs live in its ``openvino`` folder."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "glvc")


def cache_limit_bytes() -> int:
    """The size bound of the converted-graph cache: ``$GLVC_OPENVINO_CACHE_MB`` megabytes, else
    :data:`DEFAULT_CACHE_LIMIT_MB`."""
    value = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    if not value:
        return DEFAULT_CACHE_LIMIT_MB * MB
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        raise ValueError(f"{CACHE_LIMIT_ENV}={value!r}: give the cache's size bound in megabytes, e.g. {DEFAULT_CACHE_LIMIT_MB}")
    return int(megabytes * MB)


def _lock_path(root: str, key: str) -> str:
    return os.path.join(root, f"{key}.lock")


def _lock(path: str, exclusive: bool, blocking: bool) -> int | None:
    """A ``flock`` on ``path`` (created if missing): its file descriptor, or None where a non-blocking
    request finds it held (or the file vanished). The lock is taken on the file that ``path`` names
    once it is held: a pruner unlinks the lock file of the entry it removes."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)
        if not blocking:
            return None


def _tree_size(path: str) -> int:
    """Bytes in the files under ``path`` (0 where it does not exist)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _cache_key_of(name: str) -> str | None:
    """The entry key a name in the cache folder belongs to: ``<key>``, ``<key>.lock`` or a work folder."""
    match = re.fullmatch(rf"(?:{re.escape(_WORK_PREFIX)})?([0-9a-f]{{{_KEY_LENGTH}}})(?:\.lock|-.*)?", name)
    return match.group(1) if match else None


def prune(root: str, limit: int) -> list[str]:
    """Remove the least recently used entries of the converted-graph cache ``root`` (the ``openvino``
    folder) until its files take at most ``limit`` bytes; return the keys removed, oldest first.

    An entry's last use is its folder's modification time (:class:`CompiledTokenizer` touches it).
    Entries in use (their lock held by any process) are kept whatever the limit. Work folders of
    killed conversions and lock files without an entry go whenever their key is free. Does nothing
    where ``fcntl`` is missing (Windows).
    """
    if fcntl is None or not os.path.isdir(root):
        return []
    names: dict[str, list[str]] = {}
    for name in os.listdir(root):
        key = _cache_key_of(name)
        if key is not None:
            names.setdefault(key, []).append(name)
    sizes = {key: sum(_tree_size(os.path.join(root, n)) for n in group) for key, group in names.items()}
    last_used = {}
    for key, group in names.items():
        with contextlib.suppress(OSError):
            last_used[key] = max(os.stat(os.path.join(root, n)).st_mtime for n in group if not n.endswith(".lock"))
    total = sum(sizes.values())
    removed = []
    for key in sorted(names, key=lambda k: last_used.get(k, 0.0)):
        folder = os.path.join(root, key)
        leftovers = [n for n in names[key] if n != key and not n.endswith(".lock")]
        has_entry = os.path.isdir(folder)
        if has_entry and total <= limit and not leftovers:
            continue  # kept, nothing stale
        fd = _lock(_lock_path(root, key), exclusive=True, blocking=False)
        if fd is None:
            continue  # in use
        try:
            for name in leftovers:  # nobody converts this key now: a killed conversion's work
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            if has_entry and total > limit:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(key)
            total -= sizes[key] - _tree_size(folder)
            if not os.path.isdir(folder):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_lock_path(root, key))
        finally:
            os.close(fd)
    if total > limit:
        logger.warning("the OpenVINO cache %s holds %.0f MB, over its %.0f MB bound ($%s): the rest is in use",
                       root, total / MB, limit / MB, CACHE_LIMIT_ENV)
    return removed


@dataclass(frozen=True)
class _Geometry:
    """The shapes a VAE's steps take and give, from its config (no weights inspected).

    Encoder step: patchified pixels (B, in_channels, n, H/p, W/p) -> posterior mean
    (B, z_dim, 1, H/s, W/s); decoder step: latents (B, z_dim, 1, h, w) -> patchified pixels
    (B, out_channels, n, h*s/p, w*s/p); n = 1 for the first chunk, ``temporal_stride`` after it,
    s the spatial stride, p the patch size.
    """

    in_channels: int
    out_channels: int
    latent_channels: int
    patch_size: int
    spatial_stride: int
    temporal_stride: int
    encoder_convs: int
    decoder_convs: int

    @classmethod
    def of(cls, vae) -> "_Geometry":
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        config = vae.config
        geometry = cls(
            in_channels=int(config.in_channels), out_channels=int(config.out_channels), latent_channels=int(config.z_dim),
            patch_size=int(config.patch_size or 1), spatial_stride=int(config.scale_factor_spatial),
            temporal_stride=2 ** list(config.temperal_downsample).count(True),
            encoder_convs=sum(isinstance(m, WanCausalConv3d) for m in vae.encoder.modules()),
            decoder_convs=sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules()),
        )
        if geometry.spatial_stride % geometry.patch_size:
            raise ValueError(f"openvino engine: spatial stride {geometry.spatial_stride} is not a multiple of the "
                             f"patch size {geometry.patch_size}")
        return geometry

    @property
    def map_stride(self) -> int:
        """Latent height/width to the step's pixel-side height/width (patchified): s / p."""
        return self.spatial_stride // self.patch_size

    def output_shape(self, side: str, k: int, shape: tuple) -> tuple:
        """The shape step ``k`` of ``side`` must return for an input of ``shape``; raises ValueError
        for an input it cannot take."""
        frames = 1 if k == 0 else self.temporal_stride
        channels = self.in_channels if side == "encoder" else self.latent_channels
        expected = f"(B, {channels}, {frames if side == 'encoder' else 1}, H, W) with B, H, W >= 1"
        if len(shape) != 5 or shape[1] != channels or min(shape) < 1 or shape[2] != (frames if side == "encoder" else 1):
            raise ValueError(f"openvino engine: {side} step {k} takes {expected}, got {tuple(shape)}")
        b, _, _, h, w = shape
        if side == "decoder":
            return (b, self.out_channels, frames, h * self.map_stride, w * self.map_stride)
        if h % self.map_stride or w % self.map_stride:
            raise ValueError(f"openvino engine: encoder input {w}x{h} (patchified) is not a multiple of {self.map_stride}")
        return (b, self.latent_channels, 1, h // self.map_stride, w // self.map_stride)


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


def compiled_for(graphs: type[CompiledGraphs], vae, memo: dict, fallback: str) -> CompiledGraphs | None:
    """``graphs(vae, threads)`` for this process's thread count (``torch.get_num_threads()``), made on
    first use and kept in ``memo`` (thread count -> compiled graphs, shared by a tokenizer and its
    :meth:`with_engine` copies). None where OpenVINO cannot take the model: a warning naming
    ``fallback`` (what runs it instead) is logged once and None is kept, so that every later call,
    and so every stream, runs the same code."""
    threads = torch.get_num_threads()
    with _compile_lock:
        if threads not in memo:
            try:
                memo[threads] = graphs(vae, threads)
            except Exception as err:  # a model OpenVINO cannot take: the same on every call, so streams stay consistent
                logger.warning("openvino engine unavailable for this tokenizer (%s); running it with %s", err, fallback)
                memo[threads] = None
        return memo[threads]


class CompiledGraphs:
    """One model's graphs, converted by OpenVINO once per model and machine (kept in the cache, see
    the module's docstring) and compiled for the CPU in float32 with ``threads`` threads. While the
    object lives its cache entry is in use (never pruned).

    A family subclasses it with :attr:`NAMES` (its graphs), :attr:`FORMAT` (part of the key: bump it
    when the traced modules change), :attr:`CONVERSION_COST` (for the log line) and :meth:`_traced`
    (the modules to trace, with example inputs), and runs its graphs through :meth:`_infer`.
    """

    NAMES: tuple[str, ...] = ()
    FORMAT = 1
    CONVERSION_COST = ""

    def __init__(self, vae, threads: int):
        import openvino

        self.threads = threads
        limit = cache_limit_bytes()  # a wrong setting fails before the work
        self.key = self._key(vae, openvino.__version__)
        root = os.path.join(cache_root(), "openvino")
        os.makedirs(root, exist_ok=True)
        self.folder = os.path.join(root, self.key)
        if fcntl is not None:  # held until this object goes (or the process ends): pruning skips the entry
            weakref.finalize(self, os.close, _lock(_lock_path(root, self.key), exclusive=False, blocking=True))
        if not all(os.path.isfile(os.path.join(self.folder, f"{name}.xml")) for name in self.NAMES):
            logger.warning("converting the tokenizer for OpenVINO into %s (once per model and machine, %s)",
                           self.folder, self.CONVERSION_COST)
            self._convert(vae, root)
        os.utime(self.folder)  # its last use, for pruning
        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "CACHE_DIR": os.path.join(self.folder, COMPILED_SUBFOLDER)}
        self._compiled = {name: self._compile(core, os.path.join(self.folder, f"{name}.xml"), config)
                          for name in self.NAMES}
        # idle infer requests per graph: each holds its own buffers, so they are reused, one per
        # stream running at that moment (a request per call grew the decoder's peak RSS by 1.2 GB)
        self._idle: dict[str, list] = {name: [] for name in self.NAMES}
        self._lock = threading.Lock()
        prune(root, limit)

    @staticmethod
    def _compile(core, path: str, config: dict):
        """Compile one converted graph, from OpenVINO's blob in ``config["CACHE_DIR"]`` where there is one
        (a few times faster than compiling). A graph imported from its blob rounds differently (within
        float32 rounding) from the same graph just compiled, so where this call compiled it (and wrote
        the blob) it is imported again: every process then runs the same code, bit for bit."""
        model = core.compile_model(path, "CPU", config)
        if not model.get_property("LOADED_FROM_CACHE"):
            imported = core.compile_model(path, "CPU", config)
            if imported.get_property("LOADED_FROM_CACHE"):  # else no blob could be written: none will be read
                model = imported
        return model

    @classmethod
    def _key(cls, vae, ov_version: str) -> str:
        """The cache entry of ``vae``'s graphs: its family (this class and its :attr:`FORMAT`), config
        and weights, and the versions of OpenVINO, diffusers and PyTorch."""
        import diffusers

        digest = hashlib.sha256()
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        digest.update(json.dumps([cls.__name__, cls.FORMAT, config, ov_version, diffusers.__version__, torch.__version__],
                                 sort_keys=True, default=str).encode())
        for name, tensor in sorted(vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:_KEY_LENGTH]

    def _traced(self, vae) -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...], list[list[int]]]]:
        """Per graph of :attr:`NAMES`: its name, the module to trace, example inputs, and each input's
        shape with -1 for the dimensions left dynamic."""
        raise NotImplementedError

    def _tracing(self):
        """The context the modules are traced in (a family's conversion workarounds)."""
        return contextlib.nullcontext()

    def _convert(self, vae, root: str) -> None:
        import openvino

        graphs = self._traced(vae)
        work = tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{self.key}-", dir=root)
        try:
            with self._tracing(), torch.no_grad(), warnings.catch_warnings():
                # the trace fixes what the shapes leave static (channels, a step's cache frames): intended
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", r"`torch\.jit\.trace", FutureWarning)  # OpenVINO's tracer, not ours
                for name, module, inputs, shapes in graphs:
                    model = openvino.convert_model(module.eval(), example_input=inputs,
                                                   input=[openvino.PartialShape(s) for s in shapes])
                    openvino.save_model(model, os.path.join(work, f"{name}.xml"), compress_to_fp16=False)
            try:
                os.rename(work, self.folder)  # atomic: a reader sees all graphs or none
            except OSError:  # another process finished first
                if not os.path.isdir(self.folder):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _infer(self, name: str, inputs: list[np.ndarray], expected: tuple, what: str) -> list[np.ndarray]:
        """Run graph ``name`` on ``inputs`` (float32 arrays, batch first): its outputs, copied. Raises
        RuntimeError where the first output's shape is not ``expected`` (``what`` names the graph)."""
        with self._lock:
            request = self._idle[name].pop() if self._idle[name] else self._compiled[name].create_infer_request()
        try:
            request.infer(inputs)
            outputs = [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]
        finally:
            with self._lock:
                self._idle[name].append(request)
        if outputs[0].shape != expected:
            raise RuntimeError(f"openvino engine: {what} returned {outputs[0].shape} for an input of "
                               f"{inputs[0].shape}; expected {expected} (graphs in {self.folder})")
        return outputs


def _array(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


class CompiledTokenizer(CompiledGraphs):
    """The six steps (encoder and decoder, :data:`STEPS` each) of a causal tokenizer
    (:class:`glvc.tokenizer.Tokenizer`), compiled for the CPU.

    ``step(side, k, x, cache)`` runs chunk ``k`` (0, 1, then 2 for every later one) of a stream on
    ``side`` ("encoder" or "decoder") for a batch of any size: ``x`` is the step's input (patchified
    pixels; denormalised latents, before the post-quant convolution), ``cache`` the numpy arrays the
    previous step returned.
    """

    NAMES = tuple(f"{side}{k}" for side in ("encoder", "decoder") for k in range(STEPS))
    FORMAT = 2  # 2: dynamic batch size
    CONVERSION_COST = "about a minute for the bundled one"

    def __init__(self, vae, threads: int):
        self.geometry = _Geometry.of(vae)
        super().__init__(vae, threads)

    def _probe_inputs(self, vae) -> dict[str, list]:
        """Trace inputs for each step: a tiny batch of clips run through the encoder and decoder in
        PyTorch, chunk by chunk, as the streams do."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        g = self.geometry
        size = PROBE_LATENT_SIZE * g.spatial_stride
        generator = torch.Generator().manual_seed(0)
        inputs: dict[str, list] = {}
        with torch.inference_mode():
            cache: list = [None] * g.encoder_convs
            for k in range(STEPS):
                frames = 1 if k == 0 else g.temporal_stride
                pixels = torch.rand(PROBE_BATCH, 3, frames, size, size, generator=generator) * 2 - 1
                x = patchify(pixels, patch_size=g.patch_size) if g.patch_size > 1 else pixels
                inputs[f"encoder{k}"] = [x, list(cache)]
                vae.encoder(x, feat_cache=cache, feat_idx=[0])
            encoder_cache = cache
            cache = [None] * g.decoder_convs
            for k in range(STEPS):
                z = torch.randn(PROBE_BATCH, g.latent_channels, 1, PROBE_LATENT_SIZE, PROBE_LATENT_SIZE, generator=generator)
                inputs[f"decoder{k}"] = [z, list(cache)]
                vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=k == 0)
        # the last step must hand on a cache of the shape it takes: then it serves every later chunk
        for side, after in (("encoder", encoder_cache), ("decoder", cache)):
            if _layout(after) != _layout(inputs[f"{side}{STEPS - 1}"][1]):
                raise ValueError(f"openvino engine: this VAE's {side} cache does not settle after two chunks")
        return inputs

    def _traced(self, vae) -> list:
        inputs = self._probe_inputs(vae)
        graphs = []
        for name in self.NAMES:
            x, cache = inputs[name]
            side, k = name[:-1], int(name[-1])
            tensors = tuple([x] + [c for c in cache if isinstance(c, torch.Tensor)])
            # batch, height and width dynamic; channels and frames fixed per step
            shapes = [[-1, *t.shape[1:3], -1, -1] for t in tensors]
            graphs.append((name, _Step(vae, side, _layout(cache), first_chunk=k == 0), tensors, shapes))
        return graphs

    def _tracing(self):
        return _traceable_upsampling()

    def step(self, side: str, k: int, x: torch.Tensor, cache: list[np.ndarray]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Run chunk ``k`` of a stream on ``side`` for a batch of B clips: the step's output
        (shapes in :class:`_Geometry`) and the new cache (numpy arrays, batch first). Raises
        ValueError for an input it cannot take, RuntimeError where the graph returns another shape
        than the VAE's config implies."""
        expected = self.geometry.output_shape(side, k, tuple(x.shape))
        arrays = [c for c in cache if c is not None]  # a fresh stream's cache is all None
        if any(a.shape[0] != x.shape[0] for a in arrays):
            raise ValueError(f"openvino engine: {side} step {k} got a batch of {x.shape[0]} with a cache for "
                             f"{sorted({a.shape[0] for a in arrays})} (one stream, one batch)")
        outputs = self._infer(f"{side}{min(k, STEPS - 1)}", [_array(x), *arrays], expected, f"the {side} step {k}")
        return torch.from_numpy(outputs[0]), outputs[1:]


@dataclass(frozen=True)
class _FrameGeometry:
    """The shapes a per-frame autoencoder's graphs take and give, from its config (no weights
    inspected). Encoder: RGB (N, 3, H, W) -> raw latents (N, C, H/s, W/s); decoder: raw latents
    (N, C, h, w) -> RGB (N, 3, h*s, w*s); s the spatial stride."""

    latent_channels: int
    spatial_stride: int

    @classmethod
    def of(cls, vae) -> "_FrameGeometry":
        config = vae.config  # a TinyAutoencoder: a stride-2 stage between consecutive encoder_blocks entries
        return cls(latent_channels=int(config.latent_channels), spatial_stride=2 ** (len(config.encoder_blocks) - 1))

    def output_shape(self, side: str, shape: tuple) -> tuple:
        """The shape ``side`` must return for an input of ``shape``; raises ValueError for an input it cannot take."""
        channels = 3 if side == "encoder" else self.latent_channels
        if len(shape) != 4 or shape[1] != channels or min(shape) < 1:
            raise ValueError(f"openvino engine: the {side} takes (N, {channels}, H, W) with N, H, W >= 1, got {tuple(shape)}")
        n, _, h, w = shape
        s = self.spatial_stride
        if side == "decoder":
            return (n, 3, h * s, w * s)
        if h % s or w % s:
            raise ValueError(f"openvino engine: encoder input {w}x{h} is not a multiple of {s}")
        return (n, self.latent_channels, h // s, w // s)


class CompiledFrameTokenizer(CompiledGraphs):
    """The encoder and decoder of a per-frame autoencoder (:class:`glvc.tokenizer_taef.TinyAutoencoder`),
    compiled for the CPU; they run as the PyTorch modules do, within float32 rounding.

    ``encode``: RGB frames (N, 3, H, W) float32 in [0, 1], H and W multiples of the spatial stride s
    (8) -> raw latents (N, C, H/s, W/s) float32 (not normalised); ``decode``: raw latents
    (N, C, h, w) -> RGB (N, 3, h*s, w*s) float32 in about [0, 1] (not clamped). Any N, H, W.
    """

    NAMES = ("encoder", "decoder")
    FORMAT = 1
    CONVERSION_COST = "9-16 s for TAEF2 on 2 busy cores"

    def __init__(self, vae, threads: int):
        self.geometry = _FrameGeometry.of(vae)
        super().__init__(vae, threads)

    def _traced(self, vae) -> list:
        g = self.geometry
        generator = torch.Generator().manual_seed(0)
        size = PROBE_LATENT_SIZE * g.spatial_stride
        frames = torch.rand(PROBE_BATCH, 3, size, size, generator=generator)
        latents = torch.randn(PROBE_BATCH, g.latent_channels, PROBE_LATENT_SIZE, PROBE_LATENT_SIZE, generator=generator)
        # batch, height and width dynamic; channels fixed
        return [(name, module, (x,), [[-1, x.shape[1], -1, -1]])
                for name, module, x in (("encoder", vae.encoder, frames), ("decoder", vae.decoder, latents))]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB (N, 3, H, W) in [0, 1] -> raw latents (N, C, H/s, W/s) float32."""
        return self._run("encoder", frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents (N, C, h, w) -> RGB (N, 3, h*s, w*s) float32 in about [0, 1], not clamped."""
        return self._run("decoder", latents)

    def _run(self, side: str, x: torch.Tensor) -> torch.Tensor:
        expected = self.geometry.output_shape(side, tuple(x.shape))
        return torch.from_numpy(self._infer(side, [_array(x)], expected, f"the {side}")[0])
