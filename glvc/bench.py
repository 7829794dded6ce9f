"""Throughput benchmark, GLVC against x265 on the same clip: ``python -m glvc bench``.

::

    python -m glvc bench --clip examples/bikes_2s.mp4 --max-height 360 --quality 32 --out docs/results/bench

What is measured, in one process, in this order:

1. the clip is read (``--max-frames``, default all; ``--max-height``, default 360) and the model loaded;
2. warm-up (untimed): GLVC encode + decode of the first 5 frames, x265 encode of the first 5
   frames (first calls are much slower: oneDNN primitive creation, allocator growth);
3. GLVC encode (:meth:`GLVC.encode`, ``reconstruct=False``) and decode (:meth:`GLVC.decode`),
   wall clock, with the pipeline's per-stage timings (``Report.timings``);
   each timed phase (GLVC encode, GLVC decode, x265 encode + decode) runs ``--repeat`` times
   (default 1) and the fastest run is reported, all run times are kept in the JSON;
4. x265 (low delay, preset medium, :func:`glvc.baselines.encode_decode`) at ``--x265-crf`` or, by
   default, at the CRF whose stream best matches GLVC's bytes (``match_bitrate``; the search encodes
   are not timed, the chosen CRF is re-run for the timing).

Stages. The pipeline reports ``tokenizer_encode``, ``latent_coding``, ``tokenizer_decode``
(encoder) and ``parse``, ``latent_decoding``, ``tokenizer_decode`` (decoder). ``latent_coding``
and ``latent_decoding`` are split further here, without touching codec code, by timing the
CompressAI entropy coders' ``compress``/``decompress`` calls on this benchmark's model instance
(wrapped for the run, restored after): *entropy coding* = those calls (symbol quantisation +
rANS), *latent transforms* = the rest (analysis, hyper-prior, entropy parameters, synthesis and
memory update, which the encoder also runs to keep the decoder's recurrent state).

Engines. The tokenizer engine under test (``--engine``, default the model's: ``openvino`` where it
is installed, see :mod:`glvc.tokenizer`) with the latent codec on the caller's threads is timed
beside the old path (``--baseline-engine``, default ``reference``, with the latent codec on
``--baseline-codec-threads``, default 1, as it ran before; ``none`` skips it) in the same process:
in every repeat the baseline's encode and decode run first, then the engine's, so both see the
same load. The record's ``engines`` block and
the second markdown table give the speed-ups (fastest runs), the PSNR of both, and how far the
engine's stream decoded by the baseline engine lands from the engine's own pixels. The x265 and
per-stage tables describe the engine under test.

Memory. A sampler thread reads the process RSS (psutil) every 5 ms; each phase reports its peak
RSS and the peak's increase over the RSS at the phase's start. ``ru_maxrss`` (the process's peak
since start, ``resource.getrusage``) is reported at the end. All phases share one process, so
absolute peaks include the loaded model and libraries.

Whole process. A user codes a clip with two commands, each a new process that imports the
libraries, loads the model and warms up before its first frame; the in-process figures above leave
that out. So the engine under test also runs as a user runs it (``--process-runs``, default 1; 0
skips it): ``python -m glvc encode`` of the same clip (``--max-frames``, ``--max-height``, the same
quality) and ``python -m glvc decode`` of its stream to ``.npy``, each a subprocess timed from its
start to its exit (wall clock; CPU from the children's ``getrusage``), the fastest of the runs
reported, and ``python -c "import glvc.pipeline"`` alone, the part of that fixed cost that is
imports. The record's ``process_round_trip`` block gives both round trips, their difference (the
fixed cost of two processes) and whether the commands' stream and frames are the in-process ones
bit for bit.

Quality: PSNR-RGB and ColorVideoVDP (JOD, :data:`glvc.metrics.CVVDP_DISPLAY` display model) of both
decoded clips, computed after the timed phases; ColorVideoVDP's own run time is reported beside it.

Outputs: ``bench.json`` and ``bench.md`` in ``--out``; the markdown table is also printed.
Ratios are GLVC / x265 (fps ratio < 1: GLVC is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any

from .defaults import REPO_ROOT, default_model, repo_relative
from .progress import Progress

DEFAULT_CLIP = os.path.join("examples", "bikes_2s.mp4")
WARMUP_FRAMES = 5


def _cpu() -> float:
    """User + system CPU seconds of this process, all threads (FFmpeg's included)."""
    t = os.times()
    return t.user + t.system


class PeakRSS:
    """Sample the process RSS in a thread; ``peak`` / ``start`` in bytes."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.process.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    def as_dict(self) -> dict[str, float]:
        return {"peak_rss_mib": self.peak / 2**20, "peak_increase_mib": (self.peak - self.start) / 2**20}


@contextmanager
def entropy_coder_timer(codec):
    """Time the CompressAI entropy coders' compress/decompress calls of ``codec`` (a LatentCodec).

    Yields a dict that accumulates ``{"encode": seconds, "decode": seconds}``. The wrappers live
    on this instance only and are removed on exit.
    """
    spent = {"encode": 0.0, "decode": 0.0}
    modules = codec.entropy_coders
    patched = []

    def wrap(fn, side):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[side] += time.perf_counter() - start

        return timed

    try:
        for module in modules:
            for name, side in (("compress", "encode"), ("decompress", "decode")):
                had = name in module.__dict__
                original = module.__dict__.get(name)
                object.__setattr__(module, name, wrap(getattr(module, name), side))
                patched.append((module, name, had, original))
        yield spent
    finally:
        for module, name, had, original in reversed(patched):
            if had:
                object.__setattr__(module, name, original)
            else:
                del module.__dict__[name]


def _child_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv`` to its exit: (wall seconds from start to exit, its CPU seconds). A failure raises
    RuntimeError with the command and the last line it wrote to stderr."""
    cpu, start = _child_cpu(), time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds, cpu = time.perf_counter() - start, _child_cpu() - cpu
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise RuntimeError(f"{' '.join(argv)} exited with status {done.returncode}: {last}")
    return seconds, cpu


def process_round_trip(clip: str, model: str, quality: int, engine: str, max_frames: int | None = None,
                       max_height: int | None = None, runs: int = 1) -> dict[str, Any]:
    """The round trip as a user runs it: ``python -m glvc encode`` then ``python -m glvc decode`` (to
    ``.npy``), two processes, each timed from its start to its exit, with ``engine`` as the tokenizer
    engine (``$GLVC_TOKENIZER_ENGINE``); and ``python -c "import glvc.pipeline"`` alone. Each runs
    ``runs`` times in turn; the fastest is reported (seconds, wall clock), all are kept.

    Returns the record's ``process_round_trip`` block, with the stream (``"stream"``, bytes) and the
    decoded frames (``"frames"``, (T, H, W, 3) uint8) of the last run for the caller to compare."""
    import numpy as np

    if runs < 1:
        raise ValueError(f"process round trip: runs must be >= 1, got {runs}")
    env = dict(os.environ)
    env["GLVC_TOKENIZER_ENGINE"] = engine
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    limits = (["--max-frames", str(max_frames)] if max_frames is not None else []) + (
        ["--max-height", str(max_height)] if max_height is not None else [])
    python = [sys.executable, "-m", "glvc"]
    timed: dict[str, list[tuple[float, float]]] = {"import": [], "encode": [], "decode": []}
    with tempfile.TemporaryDirectory(prefix="glvc-bench-") as folder:
        stream_path, frames_path = os.path.join(folder, "clip.glvc"), os.path.join(folder, "clip.npy")
        commands = {
            "import": [sys.executable, "-c", "import glvc.pipeline"],
            "encode": python + ["encode", os.path.abspath(clip), stream_path, "--rate", str(quality), *limits,
                                "--model", model, "--quiet"],
            "decode": python + ["decode", stream_path, frames_path, "--model", model, "--quiet"],
        }
        for _ in range(runs):
            for phase in ("encode", "decode", "import"):
                timed[phase].append(_timed_process(commands[phase], env))
        with open(stream_path, "rb") as f:
            stream = f.read()
        frames = np.load(frames_path)

    def fastest(phase: str) -> tuple[float, float]:
        return min(timed[phase])

    (import_s, import_cpu), (enc_s, enc_cpu), (dec_s, dec_cpu) = fastest("import"), fastest("encode"), fastest("decode")
    def shown(argv: list[str]) -> str:  # as a user types it: temporary files by name, paths in the repository relative
        words = [os.path.basename(a) if a.startswith(folder) else repo_relative(a) if os.path.isabs(a) else a for a in argv[1:]]
        return f"GLVC_TOKENIZER_ENGINE={engine} " + shlex.join(["python", *words])

    return {
        "engine": engine,
        "runs": runs,
        "commands": {phase: shown(argv) for phase, argv in commands.items()},
        "encode_seconds": enc_s,
        "decode_seconds": dec_s,
        "round_trip_seconds": enc_s + dec_s,
        "import_seconds": import_s,
        "encode_cpu_seconds": enc_cpu,
        "decode_cpu_seconds": dec_cpu,
        "import_cpu_seconds": import_cpu,
        "encode_seconds_all_runs": [w for w, _ in timed["encode"]],
        "decode_seconds_all_runs": [w for w, _ in timed["decode"]],
        "import_seconds_all_runs": [w for w, _ in timed["import"]],
        "bytes": len(stream),
        "stream": stream,
        "frames": frames,
    }


def _stages(timings: dict[str, float], entropy: float, latent_key: str) -> dict[str, float]:
    out = {}
    for key, value in timings.items():
        if key == latent_key:
            out[f"{latent_key}.latent_transforms"] = max(0.0, value - entropy)
            out[f"{latent_key}.entropy_coding"] = entropy
        else:
            out[key] = value
    return out


def run_bench(
    clip: str = DEFAULT_CLIP,
    model=None,
    max_frames: int | None = None,
    max_height: int | None = 360,
    quality: int = 32,
    x265_crf: int | None = None,
    x265_preset: str = "medium",
    warmup: bool = True,
    repeat: int = 1,
    out_dir: str | None = None,
    progress: bool = False,
    command: str | None = None,
    engine: str | None = None,
    baseline_engine: str | None = "reference",
    baseline_codec_threads: int | None = 1,
    process_runs: int = 1,
) -> dict[str, Any]:
    """Run the benchmark; return the JSON record (and write ``bench.json``/``bench.md`` to ``out_dir``).

    ``engine`` is the tokenizer engine under test (default: the model's, :func:`glvc.tokenizer.default_engine`);
    ``baseline_engine`` (default ``"reference"``, today's path; None to skip) is timed beside it in the
    same run, its runs alternating with the engine's, and compared in ``record["engines"]``; its latent
    codec runs on ``baseline_codec_threads`` intra-op threads (default 1, the old path; None: the caller's).
    ``process_runs`` (default 1; 0 skips it) times the round trip as two command-line processes too
    (:func:`process_round_trip`); it needs ``model`` as a folder or Hub id, not a loaded GLVC.
    """
    import torch

    from .baselines import encode_decode, match_bitrate
    from .metrics import CVVDP_DISPLAY, psnr_rgb
    from .pipeline import GLVC
    from .tokenizer import ENGINES
    from .video_io import read_video

    if repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {repeat}")
    if process_runs < 0:
        raise ValueError(f"--process-runs must be >= 0, got {process_runs}")
    video = read_video(clip, max_frames=max_frames, max_height=max_height)
    frames, fps = video.frames, video.fps
    t, h, w = frames.shape[:3]
    model_name = model_path = None
    start = time.perf_counter()
    if model is None:
        model = default_model()
    if isinstance(model, str):
        model_path, model_name = model, repo_relative(model)
        model = GLVC.from_pretrained(model)
    load_seconds = time.perf_counter() - start
    for name in (engine, baseline_engine):
        if name is not None and name not in ENGINES:
            raise ValueError(f"tokenizer engine {name!r}: choose one of {', '.join(ENGINES)} (or none for the baseline)")
    if engine is not None:
        model = model.with_tokenizer_engine(engine)
    engine = model.tokenizer.engine

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    if warmup:
        say("warm-up")
        warm = frames[: min(WARMUP_FRAMES, t)]
        model.decode(model.encode(warm, fps, quality, reconstruct=False).bitstream)
        encode_decode(warm, fps, codec="x265", crf=x265_crf if x265_crf is not None else 28, preset=x265_preset)

    baseline = None
    if baseline_engine and (baseline_engine != engine or baseline_codec_threads not in (None, torch.get_num_threads())):
        baseline = model.with_tokenizer_engine(baseline_engine).with_codec_threads(baseline_codec_threads)
    if warmup and baseline is not None:
        baseline.decode(baseline.encode(frames[: min(WARMUP_FRAMES, t)], fps, quality, reconstruct=False).bitstream)

    def time_glvc(glvc, label: str, run: int, enc_runs: list, dec_runs: list):
        say(f"GLVC encode ({label} engine): {t} frames {w}x{h}, quality {quality} (run {run + 1}/{repeat})")
        bar = Progress(f"GLVC encode ({label})", progress)
        try:
            with entropy_coder_timer(glvc.codec) as entropy, PeakRSS() as mem:
                start, cpu = time.perf_counter(), _cpu()
                enc = glvc.encode(frames, fps, quality, reconstruct=False, progress=bar)
                seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        finally:
            bar.close()
        enc_runs.append({"seconds": seconds, "cpu_seconds": cpu, "entropy": entropy["encode"], "timings": dict(enc.report.timings), "memory": mem.as_dict()})
        bar = Progress(f"GLVC decode ({label})", progress)
        try:
            with entropy_coder_timer(glvc.codec) as entropy, PeakRSS() as mem:
                start, cpu = time.perf_counter(), _cpu()
                dec = glvc.decode(enc.bitstream, progress=bar)
                seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        finally:
            bar.close()
        dec_runs.append({"seconds": seconds, "cpu_seconds": cpu, "entropy": entropy["decode"], "timings": dict(dec.report.timings), "memory": mem.as_dict()})
        return enc, dec

    # each timed phase runs ``repeat`` times; the fastest run is reported (all are kept); with a
    # baseline engine its runs alternate with the engine's (baseline first), so both see the same load
    enc_runs, dec_runs, x265_runs = [], [], []
    base_enc_runs, base_dec_runs = [], []
    for i in range(repeat):
        if baseline is not None:
            base_enc, base_dec = time_glvc(baseline, baseline_engine, i, base_enc_runs, base_dec_runs)
        enc, dec = time_glvc(model, engine, i, enc_runs, dec_runs)
    glvc_bytes = len(enc.bitstream)
    best_enc = min(enc_runs, key=lambda r: r["seconds"])
    best_dec = min(dec_runs, key=lambda r: r["seconds"])
    glvc_encode, glvc_decode = best_enc["seconds"], best_dec["seconds"]
    process = None
    if process_runs:
        if model_path is None:
            process = {"skipped": "the model was given loaded (a GLVC object); the command line needs its folder or Hub id"}
        else:
            say(f"whole process: python -m glvc encode, then decode ({engine} engine), {process_runs} run(s)")
            process = process_round_trip(clip, model_path, quality, engine, max_frames, max_height, process_runs)
            process.update(_in_process_comparison(process, enc, dec, glvc_encode, glvc_decode))
    engines = None
    if baseline is not None:
        engines = _engine_comparison(frames, engine, baseline_engine, enc_runs, dec_runs, base_enc_runs, base_dec_runs,
                                     enc, dec, base_enc, base_dec, baseline)

    if x265_crf is None:
        say(f"x265: searching the CRF that matches {glvc_bytes} bytes")
        _, crf = match_bitrate(frames, fps, "x265", glvc_bytes, count="payload", preset=x265_preset)
        crf_how = f"matched to GLVC's {glvc_bytes} bytes (largest payload not above it)"
    else:
        crf = int(x265_crf)
        crf_how = "given"
    for i in range(repeat):
        say(f"x265 crf {crf} (run {i + 1}/{repeat})")
        with PeakRSS() as mem:
            cpu = _cpu()
            result = encode_decode(frames, fps, codec="x265", crf=crf, preset=x265_preset)
            result.params["cpu_seconds"] = _cpu() - cpu
        x265_runs.append((result, mem.as_dict()))
    x265 = result
    x265_enc_s = min(r.encode_seconds for r, _ in x265_runs)
    x265_dec_s = min(r.decode_seconds for r, _ in x265_runs)
    mem_x265 = max((m for _, m in x265_runs), key=lambda m: m["peak_rss_mib"])

    usage = resource.getrusage(resource.RUSAGE_SELF)
    pixels = t * h * w
    glvc_enc_fps, glvc_dec_fps = t / glvc_encode, t / glvc_decode
    x265_enc_fps, x265_dec_fps = t / x265_enc_s, t / x265_dec_s
    record: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "clip": {"path": repo_relative(clip), "frames": t, "width": w, "height": h, "fps": float(fps), "source_size": list(video.source_size)},
        "model": model_name or "<in-memory model>",
        "model_fingerprint": model.fingerprint.hex(),
        "model_load_seconds": load_seconds,
        "warmup": warmup,
        "repeat": repeat,
        "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available(),
        },
        "glvc": {
            "tokenizer_engine": engine,
            "quality": quality,
            "bytes": glvc_bytes,
            "bpp": 8 * glvc_bytes / pixels,
            "psnr_rgb": float(psnr_rgb(frames, dec.frames).value),
            "cvvdp_jod": _timed_cvvdp(frames, dec.frames, fps, say, "GLVC"),
            "encode_seconds": glvc_encode,
            "decode_seconds": glvc_decode,
            "encode_fps": glvc_enc_fps,
            "decode_fps": glvc_dec_fps,
            "encode_stages": _stages(best_enc["timings"], best_enc["entropy"], "latent_coding"),
            "decode_stages": _stages(best_dec["timings"], best_dec["entropy"], "latent_decoding"),
            "encode_memory": max((r["memory"] for r in enc_runs), key=lambda m: m["peak_rss_mib"]),
            "decode_memory": max((r["memory"] for r in dec_runs), key=lambda m: m["peak_rss_mib"]),
            "encode_seconds_all_runs": [r["seconds"] for r in enc_runs],
            "decode_seconds_all_runs": [r["seconds"] for r in dec_runs],
            "encode_cpu_seconds": best_enc["cpu_seconds"],
            "decode_cpu_seconds": best_dec["cpu_seconds"],
        },
        "x265": {
            "crf": crf,
            "crf_choice": crf_how,
            "preset": x265_preset,
            "bytes": x265.payload_bytes,
            "bitstream_bytes": x265.bitstream_bytes,
            "bpp": 8 * x265.payload_bytes / pixels,
            "psnr_rgb": float(psnr_rgb(frames, x265.decoded).value),
            "cvvdp_jod": _timed_cvvdp(frames, x265.decoded, fps, say, "x265"),
            "encode_seconds": x265_enc_s,
            "decode_seconds": x265_dec_s,
            "encode_seconds_all_runs": [r.encode_seconds for r, _ in x265_runs],
            "decode_seconds_all_runs": [r.decode_seconds for r, _ in x265_runs],
            "encode_decode_cpu_seconds": min(r.params["cpu_seconds"] for r, _ in x265_runs),
            "encode_fps": x265_enc_fps,
            "decode_fps": x265_dec_fps,
            "memory": mem_x265,
            "threads": "FFmpeg default",
        },
        "ratios_glvc_over_x265": {
            "encode_fps": glvc_enc_fps / x265_enc_fps,
            "decode_fps": glvc_dec_fps / x265_dec_fps,
            "encode_slowdown": x265_enc_fps / glvc_enc_fps,
            "decode_slowdown": x265_dec_fps / glvc_dec_fps,
        },
        "engines": engines,
        "process_round_trip": process,
        "process_peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "notes": [
            "latent_coding/latent_decoding split by timing the CompressAI entropy coders' compress/decompress calls "
            "(entropy_coding); latent_transforms = the rest of the latent codec",
            "x265 timings include RGB->YUV (encode) and YUV->RGB (decode) conversion; GLVC timings the whole encode/decode call",
            "peak RSS sampled every 5 ms per phase; one process, so peaks include the loaded model",
            f"ColorVideoVDP on the {CVVDP_DISPLAY} display model, computed after the timed phases (not timed with them)",
        ],
    }
    record["markdown"] = bench_markdown(record)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bench.json"), "w") as f:
            json.dump(record, f, indent=1)
        with open(os.path.join(out_dir, "bench.md"), "w") as f:
            f.write(record["markdown"])
    return record


def _in_process_comparison(process: dict, enc, dec, encode_seconds: float, decode_seconds: float) -> dict[str, Any]:
    """The whole-process figures against the in-process ones of the same engine; takes the stream
    and frames out of ``process`` (they are compared here, not recorded)."""
    import numpy as np

    stream, frames = process.pop("stream"), process.pop("frames")
    in_process = encode_seconds + decode_seconds
    return {
        "same_stream_as_in_process": stream == enc.bitstream,
        "same_frames_as_in_process": frames.shape == dec.frames.shape and bool(np.array_equal(frames, dec.frames)),
        "in_process_encode_seconds": encode_seconds,
        "in_process_decode_seconds": decode_seconds,
        "in_process_round_trip_seconds": in_process,
        "fixed_seconds": process["round_trip_seconds"] - in_process,
        "in_process_share": in_process / process["round_trip_seconds"],
    }


def process_markdown(p: dict) -> list[str]:
    """The table of the round trip in one process against two command-line processes."""
    if "skipped" in p:
        return [f"Whole-process round trip not timed: {p['skipped']}.", ""]
    same = "identical" if p["same_stream_as_in_process"] and p["same_frames_as_in_process"] else (
        f"NOT identical (stream {'same' if p['same_stream_as_in_process'] else 'differs'}, "
        f"frames {'same' if p['same_frames_as_in_process'] else 'differ'})")
    return [
        f"| round trip, {p['engine']} engine | encode | decode | encode + decode |",
        "|---|---|---|---|",
        f"| in one process, after warm-up (above) | {p['in_process_encode_seconds']:.2f} s | "
        f"{p['in_process_decode_seconds']:.2f} s | {p['in_process_round_trip_seconds']:.2f} s |",
        f"| two commands, each process start to exit (wall) | {p['encode_seconds']:.2f} s | {p['decode_seconds']:.2f} s | "
        f"{p['round_trip_seconds']:.2f} s |",
        f"| their CPU time | {p['encode_cpu_seconds']:.1f} s | {p['decode_cpu_seconds']:.1f} s | "
        f"{p['encode_cpu_seconds'] + p['decode_cpu_seconds']:.1f} s |",
        f"| fixed cost of two processes (difference) | | | {p['fixed_seconds']:.2f} s "
        f"({100 * (1 - p['in_process_share']):.0f} % of the commands' time) |",
        f"| of which imports (`python -c \"import glvc.pipeline\"`, once per process) | | | "
        f"2 x {p['import_seconds']:.2f} s |",
        "",
        f"The commands' stream and decoded frames are {same} to the in-process ones; fastest of {p['runs']} run(s): "
        f"`{p['commands']['encode']}`, then `{p['commands']['decode']}`.",
        "",
    ]


def _engine_comparison(frames, engine, baseline_engine, enc_runs, dec_runs, base_enc_runs, base_dec_runs,
                       enc, dec, base_enc, base_dec, baseline) -> dict[str, Any]:
    """Today's engine against the new one: fastest times, speed-ups, and what the engine does to pixels."""
    import torch

    import numpy as np

    from .metrics import psnr_rgb

    def fastest(runs):
        return min(r["seconds"] for r in runs)

    def tokenizer(runs, key):
        return min(runs, key=lambda r: r["seconds"])["timings"].get(key, 0.0)

    new_e, new_d, old_e, old_d = (fastest(r) for r in (enc_runs, dec_runs, base_enc_runs, base_dec_runs))
    # the engine's stream decoded with the baseline engine: what a decoder on the other engine shows
    cross = baseline.decode(enc.bitstream).frames
    diff = np.abs(cross.astype(np.int16) - dec.frames.astype(np.int16))
    return {
        "engine": engine,
        "baseline_engine": baseline_engine,
        "codec_threads": torch.get_num_threads(),
        "baseline_codec_threads": baseline.codec_threads or torch.get_num_threads(),
        "encode_seconds": new_e,
        "decode_seconds": new_d,
        "baseline_encode_seconds": old_e,
        "baseline_decode_seconds": old_d,
        "encode_speedup": old_e / new_e,
        "decode_speedup": old_d / new_d,
        "round_trip_seconds": new_e + new_d,
        "baseline_round_trip_seconds": old_e + old_d,
        "round_trip_time_ratio": (new_e + new_d) / (old_e + old_d),
        "tokenizer_encode_speedup": tokenizer(base_enc_runs, "tokenizer_encode") / max(tokenizer(enc_runs, "tokenizer_encode"), 1e-9),
        "tokenizer_decode_speedup": tokenizer(base_dec_runs, "tokenizer_decode") / max(tokenizer(dec_runs, "tokenizer_decode"), 1e-9),
        "baseline_encode_seconds_all_runs": [r["seconds"] for r in base_enc_runs],
        "baseline_decode_seconds_all_runs": [r["seconds"] for r in base_dec_runs],
        "bytes": len(enc.bitstream),
        "baseline_bytes": len(base_enc.bitstream),
        "psnr_rgb": float(psnr_rgb(frames, dec.frames).value),
        "baseline_psnr_rgb": float(psnr_rgb(frames, base_dec.frames).value),
        "cross_decode_max_abs_diff": int(diff.max()),
        "cross_decode_fraction_differing": float((diff > 0).mean()),
        "cross_decode_psnr_rgb": float(psnr_rgb(frames, cross).value),
    }


def engines_markdown(e: dict) -> list[str]:
    """The side-by-side table of today's tokenizer engine and the new one."""
    new, old = e["engine"], e["baseline_engine"]
    threads = f"latent codec on {e.get('codec_threads', '?')} thread(s)"
    old_threads = f"latent codec on {e.get('baseline_codec_threads', '?')} thread(s)"
    return [
        f"| path | {old} engine, {old_threads} (before) | {new} engine, {threads} (now) | now / before |",
        "|---|---|---|---|",
        f"| encode | {e['baseline_encode_seconds']:.2f} s | {e['encode_seconds']:.2f} s | {e['encode_speedup']:.2f}x faster |",
        f"| decode | {e['baseline_decode_seconds']:.2f} s | {e['decode_seconds']:.2f} s | {e['decode_speedup']:.2f}x faster |",
        f"| round trip (encode + decode) | {e['baseline_round_trip_seconds']:.2f} s | {e['round_trip_seconds']:.2f} s | "
        f"{e['round_trip_time_ratio']:.2f} of the time |",
        f"| tokenizer alone (encode / decode) | | | {e['tokenizer_encode_speedup']:.2f}x / {e['tokenizer_decode_speedup']:.2f}x faster |",
        f"| bytes | {e['baseline_bytes']} | {e['bytes']} | |",
        f"| PSNR-RGB | {e['baseline_psnr_rgb']:.3f} dB | {e['psnr_rgb']:.3f} dB | {e['psnr_rgb'] - e['baseline_psnr_rgb']:+.3f} dB |",
        f"| {new}'s stream decoded by {old} | | max {e['cross_decode_max_abs_diff']} level(s) from {new}'s pixels, "
        f"{100 * e['cross_decode_fraction_differing']:.4f} % of values differ | |",
        "",
    ]


_STAGE_LABELS = {
    "tokenizer_encode": "tokenizer encode",
    "latent_coding.latent_transforms": "latent analysis (transforms, hyper-prior, synthesis for the memory)",
    "latent_coding.entropy_coding": "entropy coding (rANS)",
    "tokenizer_decode": "tokenizer decode",
    "parse": "bitstream parse",
    "latent_decoding.latent_transforms": "latent synthesis (hyper-prior, synthesis, memory)",
    "latent_decoding.entropy_coding": "entropy decoding (rANS)",
}


def _timed_cvvdp(ref, dist, fps, say, who: str) -> dict:
    """ColorVideoVDP of one decoded clip: ``{"value": JOD or None, "unavailable": reason, "seconds"}``."""
    from .metrics import cvvdp

    say(f"ColorVideoVDP of {who}")
    start = time.perf_counter()
    r = cvvdp(ref, dist, fps)
    return {"value": r.value, "unavailable": r.unavailable_reason, "seconds": time.perf_counter() - start}


def _jod(side: dict) -> str:
    c = side["cvvdp_jod"]
    if c["value"] is None:
        return f"unavailable: {c['unavailable']}"
    return f"{c['value']:.2f} JOD ({c['seconds']:.0f} s to compute)"


def _frames_per_cpu_second(frames: int, cpu_seconds: float, digits: int) -> str:
    """``frames / cpu_seconds`` formatted, or a note when the CPU time is below the clock's resolution
    (``os.times`` counts in ticks of 10 ms, so a tiny clip's x265 run can measure 0 s)."""
    if cpu_seconds <= 0:
        return "below the CPU clock's resolution"
    return f"{frames / cpu_seconds:.{digits}f}"


def bench_markdown(r: dict) -> str:
    c, g, x, ratio = r["clip"], r["glvc"], r["x265"], r["ratios_glvc_over_x265"]
    t = c["frames"]
    lines = [
        f"Clip `{c['path']}`: {c['frames']} frames, {c['width']}x{c['height']} @ {c['fps']:.3g} fps; "
        f"{r['machine']['cpus']} CPU(s), {r['machine']['torch_threads']} torch threads"
        + (", CUDA available" if r["machine"]["cuda"] else ", no GPU")
        + f"; fastest of {r['repeat']} run(s) per phase; load average at the end {r['load_average_1_5_15min_at_end']}.",
        "",
        "| | GLVC (q%d) | x265 (crf %d, %s) | GLVC / x265 |" % (g["quality"], x["crf"], x["preset"]),
        "|---|---|---|---|",
        f"| bytes (bpp) | {g['bytes']} ({g['bpp']:.4f}) | {x['bytes']} ({x['bpp']:.4f}) | {g['bytes'] / x['bytes']:.2f} |",
        f"| PSNR-RGB | {g['psnr_rgb']:.2f} dB | {x['psnr_rgb']:.2f} dB | |",
        f"| ColorVideoVDP | {_jod(g)} | {_jod(x)} | |",
        f"| encode | {g['encode_fps']:.3f} fps ({g['encode_seconds']:.2f} s) | {x['encode_fps']:.1f} fps ({x['encode_seconds']:.2f} s) | {ratio['encode_fps']:.4f} (x265 {ratio['encode_slowdown']:.0f}x faster) |",
        f"| decode | {g['decode_fps']:.3f} fps ({g['decode_seconds']:.2f} s) | {x['decode_fps']:.1f} fps ({x['decode_seconds']:.2f} s) | {ratio['decode_fps']:.4f} (x265 {ratio['decode_slowdown']:.0f}x faster) |",
        f"| CPU time (all threads) | encode {g['encode_cpu_seconds']:.1f} s, decode {g['decode_cpu_seconds']:.1f} s "
        f"({_frames_per_cpu_second(t, g['encode_cpu_seconds'], 2)} / {_frames_per_cpu_second(t, g['decode_cpu_seconds'], 2)} frames per CPU-s) | "
        f"encode + decode {x['encode_decode_cpu_seconds']:.2f} s ({_frames_per_cpu_second(t, x['encode_decode_cpu_seconds'], 0)} frames per CPU-s) | |",
        f"| peak RSS encode (increase) | {g['encode_memory']['peak_rss_mib']:.0f} MiB (+{g['encode_memory']['peak_increase_mib']:.0f}) | "
        f"{x['memory']['peak_rss_mib']:.0f} MiB (+{x['memory']['peak_increase_mib']:.0f}, enc+dec) | |",
        f"| peak RSS decode (increase) | {g['decode_memory']['peak_rss_mib']:.0f} MiB (+{g['decode_memory']['peak_increase_mib']:.0f}) | | |",
        "",
        "| GLVC stage | encoder s | share | decoder s | share |",
        "|---|---|---|---|---|",
    ]
    enc, dec = g["encode_stages"], g["decode_stages"]
    rows = [
        ("tokenizer (VAE)", enc.get("tokenizer_encode"), dec.get("tokenizer_decode")),
        ("latent transforms (analysis/synthesis, hyper-prior, memory)", enc.get("latent_coding.latent_transforms"), dec.get("latent_decoding.latent_transforms")),
        ("entropy coding (rANS incl. symbol quantisation)", enc.get("latent_coding.entropy_coding"), dec.get("latent_decoding.entropy_coding")),
        ("bitstream parse", None, dec.get("parse")),
    ]
    te, td = g["encode_seconds"], g["decode_seconds"]

    def cells(v, total):
        return ("", "") if v is None else (f"{v:.3f}", f"{100 * v / total:.1f} %")

    for label, e, d in rows:
        lines.append("| " + " | ".join((label,) + cells(e, te) + cells(d, td)) + " |")
    other_e = g["encode_seconds"] - sum(v for v in enc.values())
    other_d = g["decode_seconds"] - sum(v for v in dec.values())
    lines.append(f"| other (padding, conversion, packing) | {other_e:.3f} | {100 * other_e / g['encode_seconds']:.1f} % | {other_d:.3f} | {100 * other_d / g['decode_seconds']:.1f} % |")
    lines.append(f"| **total** | {g['encode_seconds']:.3f} | 100 % | {g['decode_seconds']:.3f} | 100 % |")
    if r.get("engines"):
        lines += [""] + engines_markdown(r["engines"])[:-1]
    if r.get("process_round_trip"):
        lines += [""] + process_markdown(r["process_round_trip"])[:-1]
    lines += ["", f"Process peak RSS (ru_maxrss): {r['process_peak_rss_mib']:.0f} MiB. x265 CRF {x['crf_choice']}.", ""]
    return "\n".join(lines)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default=DEFAULT_CLIP, help=f"video file (default {DEFAULT_CLIP})")
    p.add_argument("--max-frames", type=int, default=None, help="first N frames (default: all)")
    p.add_argument("--max-height", type=int, default=360, help="downscale taller clips to this height (default 360)")
    p.add_argument("--quality", type=int, default=32, help="GLVC quality index (default 32)")
    p.add_argument("--x265-crf", type=int, default=None, help="x265 CRF (default: the CRF matching GLVC's bytes)")
    p.add_argument("--x265-preset", default="medium", help="x265 preset (default medium)")
    p.add_argument("--no-warmup", action="store_true", help="time the first calls too")
    p.add_argument("--repeat", type=int, default=1, help="time each phase N times and report the fastest (default 1)")
    p.add_argument("--out", default=None, help="folder for bench.json and bench.md")
    p.add_argument("--engine", default=None, help="tokenizer engine under test: reference, onednn or openvino "
                   "(default: the model's default)")
    p.add_argument("--baseline-engine", default="reference",
                   help="tokenizer engine timed beside it in the same run, runs alternating (default reference, "
                        "the old path; 'none' to skip)")
    p.add_argument("--process-runs", type=int, default=1,
                   help="time the round trip as a user runs it too: `python -m glvc encode`, then `decode`, each a new "
                        "process, N times, the fastest reported (default 1; 0 skips it)")
    p.add_argument("--baseline-codec-threads", type=int, default=1,
                   help="intra-op threads of the baseline's latent codec (default 1, the old path; 0: the caller's)")


def cmd_bench(args) -> int:
    command = "python -m glvc " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("glvc", "__main__.py")) else None
    record = run_bench(
        clip=args.clip,
        model=args.model,
        max_frames=args.max_frames,
        max_height=args.max_height,
        quality=args.quality,
        x265_crf=args.x265_crf,
        x265_preset=args.x265_preset,
        warmup=not args.no_warmup,
        repeat=args.repeat,
        out_dir=args.out,
        progress=not args.quiet,
        command=command,
        engine=args.engine,
        baseline_engine=None if args.baseline_engine == "none" else args.baseline_engine,
        baseline_codec_threads=args.baseline_codec_threads or None,
        process_runs=args.process_runs,
    )
    print(record["markdown"])
    if args.out:
        print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.md")
    return 0
