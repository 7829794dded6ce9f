"""The quality ceiling of a model's tokenizer: each clip through the tokenizer alone (no latent
codec, no quantisation), with the grouping, segments and padding that encoding uses
(:meth:`glvc.pipeline.GLVC.tokenizer_round_trip`), scored with PSNR-RGB and MS-SSIM.

No rate of the latent codec can give better frames than these; when GLVC's rate-distortion
points sit just under this line, the tokenizer is what to train next.

Usage::

    python scripts/tokenizer_ceiling.py data/val_set --max-frames 33     # the bundled model
    python scripts/tokenizer_ceiling.py CLIP.mp4 --model DIR --max-height 360 --out ceiling.json
    python scripts/tokenizer_ceiling.py data/val_set --tokenizer runs/X/model/tokenizer --segment 0 --per-frame

``--tokenizer`` scores another tokenizer (e.g. a training run's) in the model's place; ``--segment``
overrides the model's ``tokenizer_segment`` (0: the whole clip in one causal pass); ``--per-frame``
adds each frame's PSNR, to see whether quality holds along a long causal pass.

Clips are found and read as ``python -m glvc eval`` does (video files, or folders of frames).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from glvc.defaults import default_model  # noqa: E402
from glvc.eval_clips import discover_clips, load_clip  # noqa: E402
from glvc.metrics import ms_ssim, psnr_rgb  # noqa: E402
from glvc.pipeline import GLVC  # noqa: E402
from glvc.tokenizer import load_tokenizer  # noqa: E402

from json_report import print_and_save  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="+", help="video files or folders of frames")
    p.add_argument("--model", default=None, help="model folder or Hub id (default: the bundled model)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-height", type=int, default=None)
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder to use instead of the model's")
    p.add_argument("--segment", type=int, default=None, help="latent frames per tokenizer segment (0: one causal pass)")
    p.add_argument("--per-frame", action="store_true", help="also list each frame's PSNR")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    model = GLVC.from_pretrained(args.model or default_model())
    if args.tokenizer:
        model.tokenizer = load_tokenizer(args.tokenizer)  # any family (the codec is not used)
    if args.segment is not None:
        model.segment = args.segment
    rows = []
    for source in discover_clips(args.clips):
        clip = load_clip(source, max_frames=args.max_frames, max_height=args.max_height)
        start = time.perf_counter()
        out = model.tokenizer_round_trip(clip.frames)
        seconds = time.perf_counter() - start
        structural = ms_ssim(clip.frames, out)  # single-scale SSIM on clips too small for 5 scales (its name says)
        rows.append({"clip": clip.name, "frames": int(clip.frames.shape[0]), "width": int(clip.frames.shape[2]),
                     "height": int(clip.frames.shape[1]), "psnr_rgb": psnr_rgb(clip.frames, out).value,
                     "ms_ssim": structural.value, "ms_ssim_variant": structural.name, "seconds": round(seconds, 1)})
        if args.per_frame:
            rows[-1]["psnr_per_frame"] = [round(v, 2) for v in psnr_rgb(clip.frames, out).per_frame]
    print_and_save({"model": args.model or "bundled default", "tokenizer": args.tokenizer or "the model's",
                    "segment": model.segment, "clips": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
