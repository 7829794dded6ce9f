"""Peak memory of ``python -m glvc encode`` and ``decode`` on clips of different lengths.

Both commands stream: encode reads frames with :class:`glvc.video_io.FrameStream` and codes one
latent frame (4 frames) at a time; decode writes each latent frame's pixels to the mp4 (or .npy)
as soon as they are decoded. So the peak RSS should not grow with the clip's length. This script
makes test clips (the example clips scaled to the given height, cycled to the given durations),
runs each command in its own process and reports the process's peak RSS (``ru_maxrss``, all
memory: torch, FFmpeg, x264's look-ahead...), the peak of the numpy arrays it held (tracemalloc sees
every numpy allocation, so a frame list that grows with the clip shows up exactly) and the time.

Usage::

    python scripts/long_clip.py                                  # bundled model, 10 s and 60 s at 360p
    python scripts/long_clip.py --seconds 10 --model DIR --json out.json
    python scripts/long_clip.py --tiny --seconds 2 8 --height 192  # the tiny test model (tests/test_long_clip.py)

On 2 CPU cores the bundled model codes a 360p clip at about 2 frames per second each way, so the
60 s clip (1500 frames) takes about half an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.json_report import print_and_save  # noqa: E402

EXAMPLES = [os.path.join(ROOT, "examples", n) for n in ("bigbuckbunny_3s.mp4", "vtest_3s.mp4", "bikes_2s.mp4")]


def make_clip(path: str, seconds: float, height: int, fps: int = 25, width: int | None = None) -> int:
    """The example clips scaled and cropped to ``width`` x ``height`` (16:9 by default), played
    forwards and backwards in turn until ``seconds`` are filled; H.264, written frame by frame.
    Returns the frame count."""
    from glvc.video_io import VideoWriter, read_video

    width = width or 2 * round(height * 16 / 9 / 2)
    sources = []
    for name in EXAMPLES:
        frames = read_video(name, max_height=height).frames
        if frames.shape[2] < width:  # too narrow: scale by width instead
            frames = read_video(name, max_width=width).frames
        top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
        sources.append(frames[:, max(top, 0) : max(top, 0) + height, max(left, 0) : max(left, 0) + width])
    sources = [np.pad(s, ((0, 0), (0, height - s.shape[1]), (0, width - s.shape[2]), (0, 0)), mode="edge") for s in sources]
    total = int(round(seconds * fps))
    done = 0
    with VideoWriter(path, Fraction(fps), crf=20, preset="veryfast") as writer:
        turn = 0
        while done < total:
            clip = sources[turn % len(sources)]
            clip = clip if (turn // len(sources)) % 2 == 0 else clip[::-1]
            part = clip[: total - done]
            writer.write(part)
            done += len(part)
            turn += 1
    return total


def run_measured(args: list[str], env: dict | None = None) -> dict:
    """Run a command; its exit status, wall time and peak RSS in MB (from wait4, this child only)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    # read the pipes first (they may fill up), then reap with wait4 to get this child's rusage
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": out.strip(), "stderr": err.strip()[-2000:]}


# The numpy peak leaves the model out: loading it allocates ~250 MB once (its transient peak is
# dropped, what it keeps is subtracted); what remains is what the command held for the clip.
CHILD = """
import json, sys, tracemalloc
tracemalloc.start()
from glvc import cli, pipeline, video_io  # imported before the count starts
loaded = cli._load_model
state = {"peak": 0, "model": 0}
def load_model(args):
    before = tracemalloc.get_traced_memory()
    state["peak"] = before[1]
    model = loaded(args)
    state["model"] = tracemalloc.get_traced_memory()[0] - before[0]
    tracemalloc.reset_peak()
    return model
cli._load_model = load_model
tracemalloc.reset_peak()
base = tracemalloc.get_traced_memory()[0]
status = cli.main(sys.argv[1:])
peak = max(state["peak"], tracemalloc.get_traced_memory()[1] - state["model"]) - base
print(json.dumps({"status": status, "traced_peak_mb": round(peak / 2**20, 2)}))
sys.exit(status)
"""


def run_cli_measured(args: list[str], env: dict | None = None) -> dict:
    """``python -m glvc ARGS`` in its own process, with tracemalloc on: run_measured's fields plus
    ``traced_peak_mb``, the peak of Python/numpy allocations after the model is loaded (torch
    tensors are not traced)."""
    row = run_measured([sys.executable, "-c", CHILD, *args], env)
    lines = row["stdout"].splitlines()
    if row["returncode"] == 0 and lines:
        row.update(json.loads(lines[-1]))
        row["stdout"] = "\n".join(lines[:-1])
    return row


def measure(model: str, seconds: list[float], height: int, workdir: str, quality: int = 32, width: int | None = None,
            fps: int = 25, log=print) -> list[dict]:
    rows = []
    for duration in seconds:
        clip = os.path.join(workdir, f"clip_{duration:g}s.mp4")
        frames = make_clip(clip, duration, height, fps, width)
        stream, out = os.path.join(workdir, f"clip_{duration:g}s.glvc"), os.path.join(workdir, f"clip_{duration:g}s_decoded.mp4")
        row = {"seconds": duration, "frames": frames, "height": height, "clip_bytes": os.path.getsize(clip)}
        row["encode"] = run_cli_measured(["encode", clip, stream, "--model", model, "--rate", str(quality), "--quiet"])
        if row["encode"]["returncode"] != 0:
            raise RuntimeError(f"encode failed: {row['encode']['stderr']}")
        row["decode"] = run_cli_measured(["decode", stream, out, "--model", model, "--quiet"])
        if row["decode"]["returncode"] != 0:
            raise RuntimeError(f"decode failed: {row['decode']['stderr']}")
        row["glvc_bytes"] = os.path.getsize(stream)
        for step in ("encode", "decode"):
            row[step]["fps"] = round(frames / row[step]["seconds"], 2)
            row[step].pop("stderr")
        log(f"{duration:g} s ({frames} frames, {height}p): " + "; ".join(
            f"{step} {row[step]['seconds']} s, peak RSS {row[step]['peak_rss_mb']} MB, numpy peak {row[step]['traced_peak_mb']} MB"
            for step in ("encode", "decode")))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from glvc.defaults import default_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GLVC model folder (default: the bundled model)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random test model (tests/conftest.py)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--quality", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glvc-long-") as workdir:
        model = args.model or default_model()
        if args.tiny:
            from tests.conftest import build_tiny_model

            model = os.path.join(workdir, "tiny_model")
            build_tiny_model().save_pretrained(model)
        rows = measure(model, args.seconds, args.height, workdir, args.quality)
    result = {"model": "tiny" if args.tiny else model, "rows": rows}
    print_and_save(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
