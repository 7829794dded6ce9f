"""The model card's still: one frame of a validation clip, original beside GLVC at a quality index
and beside x265 at the CRF that matches GLVC's bytes (or at a given size), labelled with bytes and PSNR.

    python scripts/model_card_still.py data/val_set/bikes --quality 32 --frame 16 \\
        --out glvc/pretrained/default/side_by_side_q32.png
    python scripts/model_card_still.py data/val_set/bikes --quality 32 --frame 16 --x265-bytes 13916 \\
        --out ...   # x265 at another size (e.g. the old model's)

The clip's first ``--max-frames`` frames are coded (33, as in the README's results), one frame is shown.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from PIL import Image  # noqa: E402

from glvc.baselines import match_bitrate  # noqa: E402
from glvc.defaults import default_model  # noqa: E402
from glvc.eval_clips import discover_clips, load_clip  # noqa: E402
from glvc.metrics import psnr_rgb  # noqa: E402
from glvc.pipeline import GLVC  # noqa: E402
from glvc.service import side_by_side  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clip", help="a video file or a folder of frames")
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--quality", type=int, default=32)
    p.add_argument("--frame", type=int, default=16, help="the frame shown (0-based)")
    p.add_argument("--max-frames", type=int, default=33)
    p.add_argument("--x265-bytes", type=int, default=None, help="x265's size (default: GLVC's)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)

    clip = load_clip(discover_clips([args.clip])[0], max_frames=args.max_frames)
    model = GLVC.from_pretrained(args.model or default_model())
    result = model.encode(clip.frames, clip.fps, quality=args.quality)
    x265, crf = match_bitrate(clip.frames, clip.fps, "x265", args.x265_bytes or result.report.bytes)
    f = min(args.frame, clip.num_frames - 1)
    one = slice(f, f + 1)
    glvc_psnr = psnr_rgb(clip.frames, result.reconstruction).value
    x265_psnr = psnr_rgb(clip.frames, x265.decoded).value
    panels = [
        (f"original, frame {f}", clip.frames[one]),
        (f"GLVC q{args.quality}: {result.report.bytes:,} B, {glvc_psnr:.2f} dB", result.reconstruction[one]),
        (f"x265 crf {crf}: {x265.bitstream_bytes:,} B, {x265_psnr:.2f} dB", x265.decoded[one]),
    ]
    Image.fromarray(side_by_side(panels)[0]).save(args.out, optimize=True)
    print(f"{args.out}: {clip.name} frame {f}; GLVC q{args.quality} {result.report.bytes} bytes {glvc_psnr:.3f} dB "
          f"(clip PSNR); x265 crf {crf} {x265.bitstream_bytes} bytes {x265_psnr:.3f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
