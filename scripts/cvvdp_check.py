"""ColorVideoVDP in GLVC: agreement with the package's own command line, and its cost.

1. ``--agreement`` (default on): the first ``--frames`` frames of a clip at 240p and x265 at CRF 36
   (low delay, :func:`glvc.baselines.encode_decode`) are written as BMP frames; the score of
   :func:`glvc.metrics.cvvdp` on those frames is compared with the ``cvvdp`` command line on the same
   files (``cvvdp --test test_%04d.bmp --ref ref_%04d.bmp --display standard_fhd --fps 25 --quiet``).
   BMP, not PNG: the package reads PNGs with FreeImage, which it would download.
2. ``--cost``: the time of one ColorVideoVDP score on the app's default clip size (the first 2 s at
   240p) against x265 CRF 36, and of all the other metrics of ``compute_all`` on the same pair, as
   wall-clock and CPU seconds (``time.process_time``: all threads of this process), with the load
   average, since the machine may be shared.

Usage::

    python scripts/cvvdp_check.py                          # agreement on 10 frames
    python scripts/cvvdp_check.py --cost --no-agreement    # cost on 2 s at 240p
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def agreement(clip: str, frames: int, device: str) -> None:
    from PIL import Image

    from glvc import metrics
    from glvc.baselines import encode_decode
    from glvc.video_io import read_video

    video = read_video(clip, max_frames=frames, max_height=240)
    x265 = encode_decode(video.frames, video.fps, codec="x265", crf=36)
    with tempfile.TemporaryDirectory(prefix="glvc-cvvdp-") as folder:
        for k in range(video.num_frames):
            Image.fromarray(video.frames[k]).save(os.path.join(folder, f"ref_{k:04d}.bmp"))
            Image.fromarray(x265.decoded[k]).save(os.path.join(folder, f"test_{k:04d}.bmp"))
        t, h, w = video.frames.shape[:3]
        print(f"{clip}: {t} frames {w}x{h} @ {float(video.fps):g} fps against x265 CRF 36; display {metrics.CVVDP_DISPLAY}")
        start = time.perf_counter()
        ours = metrics.cvvdp(video.frames, x265.decoded, video.fps, device=device)
        print(f"glvc.metrics.cvvdp: {ours.value:.4f} JOD ({time.perf_counter() - start:.0f} s)", flush=True)
        args = ["--test", "test_%04d.bmp", "--ref", "ref_%04d.bmp", "--display", metrics.CVVDP_DISPLAY,
                "--fps", f"{float(video.fps):g}", "--device", device, "--quiet"]
        start = time.perf_counter()
        run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "cvvdp"), *args], cwd=folder,
                             capture_output=True, text=True, check=True)
        cli = float(run.stdout.strip().splitlines()[-1])
        print(f"cvvdp {' '.join(args)}: {cli:.4f} JOD ({time.perf_counter() - start:.0f} s, including its start)")
        print(f"difference: {abs(cli - ours.value):.4f} JOD")


def cost(clip: str, device: str) -> None:
    import torch

    from glvc import metrics
    from glvc.baselines import encode_decode
    from glvc.video_io import read_video

    video = read_video(clip, max_seconds=2.0, max_height=240)
    x265 = encode_decode(video.frames, video.fps, codec="x265", crf=36)
    t, h, w = video.frames.shape[:3]
    print(f"{clip}: {t} frames {w}x{h} @ {float(video.fps):g} fps, device {device}, {torch.get_num_threads()} torch threads, "
          f"load average {[round(v, 1) for v in os.getloadavg()]}", flush=True)
    metrics.cvvdp(video.frames[:2], x265.decoded[:2], video.fps, device=device)  # import, build, first calls

    def timed(label, fn):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        print(f"{label}: {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU", flush=True)
        return out

    jod = timed("ColorVideoVDP", lambda: metrics.cvvdp(video.frames, x265.decoded, video.fps, device=device))
    print(f"  = {jod.value:.4f} JOD")
    others = [k for k in metrics.ALL_METRICS if k != "cvvdp"]
    timed(f"the other metrics ({', '.join(others)})", lambda: metrics.compute_all(video.frames, x265.decoded, metrics=others, device=device))
    print(f"load average at the end {[round(v, 1) for v in os.getloadavg()]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default=os.path.join(ROOT, "examples", "bigbuckbunny_3s.mp4"))
    p.add_argument("--frames", type=int, default=10, help="frames for the agreement check (default 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-agreement", dest="agreement", action="store_false")
    p.add_argument("--cost", action="store_true")
    args = p.parse_args(argv)
    if args.agreement:
        agreement(args.clip, args.frames, args.device)
    if args.cost:
        cost(args.clip, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
