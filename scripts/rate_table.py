"""Measure a model's bits per pixel at a set of quality indices on the example clips.

The app's rate slider shows the expected bpp of each quality index from this table. It is
measured, not modelled: every listed clip is read with the app's default CPU limits (downscaled
to ``--max-height``, trimmed to ``--max-seconds``), encoded at each quality with
:meth:`glvc.pipeline.GLVC.encode` (``reconstruct=False``) and the ``.glvc`` bytes are counted
(header and container included). The app interpolates log(bpp) linearly between the measured
indices and says so.

Usage (about 10 minutes for the default model on 2 CPU cores)::

    python scripts/rate_table.py                      # writes glvc/pretrained/default/rate_table.json
    python scripts/rate_table.py --model DIR --qualities 0,21,42,63 --out DIR/rate_table.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glvc.cli import default_model  # noqa: E402
from glvc.pipeline import GLVC  # noqa: E402
from glvc.service import RATE_TABLE_NAME, RATE_TABLE_VERSION, CPU_LIMITS  # noqa: E402
from glvc.video_io import read_video  # noqa: E402

EXAMPLES = ("bigbuckbunny_3s.mp4", "vtest_3s.mp4", "bikes_2s.mp4")


def measure(model: GLVC, paths: list[str], qualities: list[int], max_height: int, max_seconds: float) -> dict:
    clips = []
    for path in paths:
        video = read_video(path, max_seconds=max_seconds, max_height=max_height)
        row = {"clip": os.path.basename(path), "frames": video.num_frames, "width": video.width,
               "height": video.height, "fps": float(video.fps), "bytes": [], "bpp": []}
        for q in qualities:
            start = time.perf_counter()
            report = model.encode(video.frames, video.fps, quality=q, reconstruct=False).report
            row["bytes"].append(report.bytes)
            row["bpp"].append(round(report.bits_per_pixel, 6))
            print(f"{row['clip']} {video.width}x{video.height}x{video.num_frames} q={q}: {report.bytes} bytes, "
                  f"{report.bits_per_pixel:.5f} bpp ({time.perf_counter() - start:.1f} s)", flush=True)
        clips.append(row)
    mean = [round(sum(c["bpp"][i] for c in clips) / len(clips), 6) for i in range(len(qualities))]
    return {"clips": clips, "mean_bpp": mean}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--qualities", default="0,7,14,21,28,35,42,49,56,63",
                        help="comma-separated quality indices (default: every 7th, ends included)")
    parser.add_argument("--examples", default=os.path.join(ROOT, "examples"))
    parser.add_argument("--max-height", type=int, default=CPU_LIMITS.default_height)
    parser.add_argument("--max-seconds", type=float, default=CPU_LIMITS.default_seconds)
    parser.add_argument("--out", default=None, help=f"default: <model>/{RATE_TABLE_NAME}")
    args = parser.parse_args(argv)

    model = GLVC.from_pretrained(args.model)
    qualities = sorted({int(q) for q in args.qualities.split(",")})
    if qualities[0] < 0 or qualities[-1] > model.max_quality:
        parser.error(f"qualities must lie in 0 .. {model.max_quality}, got {qualities}")
    start = time.perf_counter()
    table = measure(model, [os.path.join(args.examples, name) for name in EXAMPLES], qualities,
                    args.max_height, args.max_seconds)
    out = {
        "version": RATE_TABLE_VERSION,
        "model_fingerprint": model.fingerprint.hex(),
        "qualities": qualities,
        **table,
        "measured_with": {
            "command": "python scripts/rate_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "max_height": args.max_height,
            "max_seconds": args.max_seconds,
            "bytes": "whole .glvc file (header, unit headers and CRC included)",
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    path = args.out or os.path.join(args.model, RATE_TABLE_NAME)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
