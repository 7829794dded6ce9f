"""Compare latent codecs that share one tokenizer: bytes and quality at several quality indices.

Each clip goes through the tokenizer's encoder once; every codec then codes the same latents at
every quality index (the same ``GLVC._code`` path that ``encode`` uses, so the byte counts are
the real ``.glvc`` sizes, header and container included), and the decoded latents go through
the tokenizer's decoder for PSNR-RGB against the original frames. The tokenizer alone (the
unquantised latents decoded) is measured too: no rate can pass that ceiling.

Usage (about 10 minutes for two codecs, five rates and the two validation clips on 2 CPU cores)::

    python scripts/codec_sweep.py data/val_set --codec glvc/pretrained/default/codec \\
        --codec runs/codec_gaussian_hyper/model/codec --qualities 0 16 32 48 63 --max-frames 33 \\
        --out docs/results/codec_sweep.json

``--model`` names the GLVC folder whose tokenizer (and tokenizer segment) is used. With
``--latent-only`` nothing is decoded to pixels: bytes and the latents' mean squared error only
(a few seconds per codec and rate instead of a tokenizer decode each).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glvc import bitstream  # noqa: E402
from glvc.codec import LatentCodec  # noqa: E402
from glvc.eval_clips import discover_clips, load_clip  # noqa: E402
from glvc.metrics import psnr_rgb  # noqa: E402
from glvc.pipeline import GLVC, _Analysis, _Timer  # noqa: E402
from scripts.json_report import print_and_save  # noqa: E402


def sweep_clip(model: GLVC, codecs: dict[str, LatentCodec], frames: np.ndarray, fps, qualities: list[int],
               latent_only: bool = False) -> dict:
    from fractions import Fraction

    fps = Fraction(fps).limit_denominator(1001)
    analysis = _Analysis()
    latents = list(model._analyze(iter(frames), analysis, _Timer()))
    pixels = frames.shape[0] * frames.shape[1] * frames.shape[2]
    ceiling = None if latent_only else psnr_rgb(frames, model._latents_to_frames(latents, analysis)).value
    rows = []
    for name, codec in codecs.items():
        model.codec = codec
        for q in qualities:
            start = time.perf_counter()
            coded = list(model._code(latents, q, 0, _Timer()))
            data = bitstream.pack(model._header(analysis, fps, q, 0), [unit for unit, _, _ in coded])
            latent_mse = float(np.mean([(z_hat - z).pow(2).mean().item() for (_, z_hat, _), (z, _) in zip(coded, latents)]))
            hyper_bytes = sum(len(codec.split_payload(unit.payload)[0]) for unit, _, _ in coded)
            row = {"codec": name, "quality": q, "bytes": len(data), "bpp": round(8 * len(data) / pixels, 5),
                   "hyper_bytes": hyper_bytes, "latent_mse": round(latent_mse, 5)}
            if not latent_only:
                decoded = model._latents_to_frames([(z_hat, real) for _, z_hat, real in coded], analysis)
                row["psnr"] = round(psnr_rgb(frames, decoded).value, 3)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"  {name} q{q}: {len(data)} bytes ({hyper_bytes} of them hyper-latent), {row['bpp']} bpp, latent MSE {row['latent_mse']}, "
                  f"{row.get('psnr', '-')} dB", flush=True)
    return {"tokenizer_psnr": None if ceiling is None else round(ceiling, 3), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="+", help="clips or folders of frames, as `glvc eval` takes them")
    p.add_argument("--model", default=os.path.join("glvc", "pretrained", "default"), help="GLVC folder whose tokenizer is used")
    p.add_argument("--codec", action="append", required=True, help="a latent codec folder (repeat to compare)")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 16, 32, 48, 63], help="quality indices")
    p.add_argument("--max-frames", type=int, default=33, help="frames per clip")
    p.add_argument("--latent-only", action="store_true", help="bytes and latent MSE only, no pixel decode")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    model = GLVC.from_pretrained(args.model)
    codecs = {path: LatentCodec.from_pretrained(path) for path in args.codec}
    result = {"model": args.model, "qualities": args.qualities, "max_frames": args.max_frames, "clips": {}}
    for src in discover_clips(args.clips):
        clip = load_clip(src, args.max_frames)
        print(f"{clip.name}: {clip.num_frames} frames {clip.width}x{clip.height}", flush=True)
        result["clips"][clip.name] = sweep_clip(model, codecs, clip.frames, clip.fps, args.qualities, args.latent_only)
        if not args.latent_only:
            print(f"  tokenizer alone: {result['clips'][clip.name]['tokenizer_psnr']} dB", flush=True)
    print_and_save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
