"""Tokenizer engines side by side: the time to encode and to decode one clip with each engine, run in
alternation within each repeat (a load on the machine falls on every engine alike), the fastest of
``--repeat`` runs per engine, and each engine's ratio to the first one (of the fastest runs, and per
repeat). Works for a tokenizer of either family (``glvc.tokenizer.load_tokenizer``); the frame count
must suit it (1 + 4k for the causal one).

    python scripts/tokenizer_engine_speed.py [--tokenizer glvc/pretrained/taef2/tokenizer]
        [--clip examples/bikes_2s.mp4] [--width 560] [--height 240] [--frames 9] [--threads 2]
        [--repeat 3] [--engines onednn openvino]

Before the timing each engine is prepared and warmed up, untimed: the openvino engine's first use
(conversion into ``$GLVC_CACHE_DIR``, or only compiling where the graphs are there) is timed apart,
then one encode and decode per engine. Every engine decodes the first engine's latents; the largest
pixel difference from the first engine's decode is reported. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glvc.tokenizer import ENGINES, load_tokenizer  # noqa: E402
from glvc.video_io import read_video  # noqa: E402


def clip_pixels(path: str, frames: int, width: int, height: int) -> torch.Tensor:
    """The first ``frames`` frames of ``path``, scaled to ``height`` rows and centre-cropped to
    ``width``: (1, 3, T, H, W) float32 in [-1, 1]."""
    video = read_video(path, max_frames=frames, max_height=height).frames  # (T, H', W', 3) uint8
    t, h, w, _ = video.shape
    if t < frames or h != height or w < width:
        raise SystemExit(f"{path}: {t} frames of {w}x{h} after scaling to {height} rows; need {frames} of at least "
                         f"{width}x{height}")
    left = (w - width) // 2
    video = video[:, :, left : left + width]
    return torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "glvc", "pretrained", "taef2", "tokenizer"))
    p.add_argument("--clip", default=os.path.join(ROOT, "examples", "bikes_2s.mp4"))
    p.add_argument("--width", type=int, default=560)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=["onednn", "openvino"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pixels = clip_pixels(args.clip, args.frames, args.width, args.height)
    base = load_tokenizer(args.tokenizer)
    tokenizers = {engine: base.with_engine(engine) for engine in args.engines}
    record: dict = {"tokenizer": os.path.relpath(args.tokenizer, ROOT), "clip": os.path.relpath(args.clip, ROOT),
                    "size": f"{args.width}x{args.height}", "frames": args.frames, "threads": torch.get_num_threads(),
                    "repeat": args.repeat, "engines": {}}
    for engine, tok in tokenizers.items():
        started = time.perf_counter()
        compiled = tok.compiled  # openvino: converted or loaded from the cache, compiled
        first_use = time.perf_counter() - started
        tok.decode(tok.encode(pixels[:, :, : tok.temporal_stride + 1]))  # warm-up, untimed
        record["engines"][engine] = {"first_use_s": round(first_use, 2), "compiled": compiled is not None,
                                     "encode_s": [], "decode_s": []}
    latents = tokenizers[args.engines[0]].encode(pixels)
    decoded = {}
    for _ in range(args.repeat):
        for engine, tok in tokenizers.items():  # in alternation: the same load on every engine
            entry = record["engines"][engine]
            started = time.perf_counter()
            tok.encode(pixels)
            entry["encode_s"].append(round(time.perf_counter() - started, 3))
            started = time.perf_counter()
            decoded[engine] = tok.decode(latents)
            entry["decode_s"].append(round(time.perf_counter() - started, 3))
    first = record["engines"][args.engines[0]]
    for engine, entry in record["engines"].items():
        for phase in ("encode", "decode"):
            entry[f"{phase}_fastest_s"] = min(entry[f"{phase}_s"])
            entry[f"{phase}_speedup"] = round(min(first[f"{phase}_s"]) / min(entry[f"{phase}_s"]), 2)
        for phase in ("encode", "decode"):  # each repeat's pair, run back to back: less swayed by the load
            entry[f"{phase}_speedup_per_repeat"] = [round(a / b, 2) for a, b in zip(first[f"{phase}_s"], entry[f"{phase}_s"])]
        entry["max_abs_pixel_difference"] = float((decoded[engine] - decoded[args.engines[0]]).abs().max())
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
