"""Time each metric of the app's table on the app's default clip (2 s at 240p), one clip scored.

    python scripts/metric_cost.py [--clip examples/bikes_2s.mp4] [--max-height 240] [--metrics ...]

The distorted clip is the original plus a fixed pattern of small errors (timing does not depend
on the content). LPIPS and DISTS without their ImageNet weights (offline) are timed with a
randomly initialised trunk of the same architecture: the same work, no meaningful score, so only
the seconds are printed for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc import metrics  # noqa: E402
from glvc.video_io import read_video  # noqa: E402


def random_trunk(arch: str) -> dict:
    import torchvision

    model = getattr(torchvision.models, arch)()
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="examples/bikes_2s.mp4")
    p.add_argument("--max-height", type=int, default=240)
    p.add_argument("--metrics", nargs="+", default=["psnr", "ms_ssim", "vmaf", "lpips", "dists", "cvvdp"])
    args = p.parse_args()
    video = read_video(args.clip, max_height=args.max_height)
    ref = video.frames
    noise = np.random.default_rng(0).integers(-6, 7, ref.shape)
    dist = np.clip(ref.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    t, h, w = ref.shape[:3]
    print(f"{args.clip}: {t} frames {w}x{h}, one clip scored")
    metrics.compute_all(ref[:3], dist[:3], metrics=["psnr", "ms_ssim", "vmaf"])  # warm-up
    for key in args.metrics:
        start, cpu = time.perf_counter(), time.process_time()
        value = metrics.compute_all(ref, dist, metrics=[key], fps=float(video.fps))[key]
        note = ""
        if not value.available and key in ("lpips", "dists"):
            trunk = random_trunk("alexnet" if key == "lpips" else "vgg16")
            start, cpu = time.perf_counter(), time.process_time()
            value = (metrics.lpips(ref, dist, backbone_state_dict=trunk) if key == "lpips"
                     else metrics.dists(ref, dist, backbone_state_dict=trunk))
            note = " (ImageNet weights absent: timed with a random trunk, score meaningless)"
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        shown = f"{value.value:.4f}" if value.available and not note else "-"
        print(f"{key:8s} {wall:7.2f} s wall {cpu:7.2f} s CPU  value {shown}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
