"""GLVC encode and decode fps at 720p and 1080p on an accelerator, beside the paper's A100 figures.

    python scripts/gpu_speed.py --device cuda --out gpu_speed.json

The example clips are at most 360p, so the frames are Big Buck Bunny upscaled (bicubic) to each
size: speed depends on the size, not the content. The tokenizer runs on ``--device``; the latent
codec stays on the CPU in float32 with one thread (its deterministic path, as everywhere). Encode is
``GLVC.encode(reconstruct=False)``, decode ``GLVC.decode``; warm-up first, then the fastest of
``--repeat`` runs, with the device synchronised before every clock read. The paper (GLVC, A100,
1080p) reports about 5 fps encode and 3 fps decode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc.pipeline import GLVC  # noqa: E402
from glvc.video_io import read_video  # noqa: E402

PAPER_A100_1080P = {"encode_fps": 5.0, "decode_fps": 3.0}
SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}


def upscale(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, h, w, 3) uint8 -> (T, height, width, 3) uint8, bicubic."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def timed(fn, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join("glvc", "pretrained", "default"))
    p.add_argument("--clip", default=os.path.join("examples", "bigbuckbunny_3s.mp4"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, default=33, help="frames per clip (default 33)")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--quality", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args()

    model = GLVC.from_pretrained(args.model, device=args.device)
    source = read_video(args.clip, max_frames=args.frames)
    rows = []
    for name in args.sizes:
        height, width = SIZES[name]
        frames, fps = upscale(source.frames, height, width), source.fps
        model.decode(model.encode(frames[:5], fps, args.quality, reconstruct=False).bitstream)  # warm-up
        enc_s, dec_s = [], []
        for _ in range(args.repeat):
            seconds, enc = timed(lambda: model.encode(frames, fps, args.quality, reconstruct=False), args.device)
            enc_s.append(seconds)
            seconds, _ = timed(lambda: model.decode(enc.bitstream), args.device)
            dec_s.append(seconds)
        t = len(frames)
        rows.append({"size": name, "width": width, "height": height, "frames": t, "bytes": len(enc.bitstream),
                     "encode_fps": t / min(enc_s), "decode_fps": t / min(dec_s),
                     "encode_seconds_all_runs": enc_s, "decode_seconds_all_runs": dec_s,
                     "encode_stages": enc.report.timings})
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    record = {"device": device_name, "tokenizer_engine": model.tokenizer.engine, "quality": args.quality,
              "paper_a100_1080p": PAPER_A100_1080P, "rows": rows}
    print(f"| size | encode fps | decode fps | ({device_name}; paper, A100 1080p: "
          f"{PAPER_A100_1080P['encode_fps']:g} / {PAPER_A100_1080P['decode_fps']:g} fps) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']}x{r['height']}, {r['frames']} frames | {r['encode_fps']:.2f} | {r['decode_fps']:.2f} | |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
