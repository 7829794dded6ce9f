"""What the tokenizer's decoder costs per frame, and what a narrower one would: convolution FLOPs
(counted with forward hooks) and the time to decode 3 latent frames (9 video frames) with the
onednn engine, for the bundled tokenizer's config and variants with a narrower decoder
(``decoder_base_dim``; the encoder, the latents and the latent codec are unchanged). The variants
have random weights: this measures cost only.

    python scripts/decoder_cost.py [--width 560] [--height 240] [--decoder-base-dims 16 24]
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

from diffusers import AutoencoderKLWan  # noqa: E402

from glvc.tokenizer import Tokenizer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=560)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--decoder-base-dims", type=int, nargs="*", default=[16, 24])
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    with open(os.path.join(ROOT, "glvc", "pretrained", "default", "tokenizer", "config.json")) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    z = torch.randn(1, config["z_dim"], 3, args.height // 8, args.width // 8, generator=torch.Generator().manual_seed(0))
    variants = [("bundled config", {})] + [(f"decoder_base_dim {d}", {"decoder_base_dim": d}) for d in args.decoder_base_dims]
    for name, override in variants:
        vae = AutoencoderKLWan(**{**config, **override})
        tok = Tokenizer(vae, engine="onednn")
        flops = [0]

        def count(module, inputs, output):
            w = module.weight
            flops[0] += 2 * output.numel() * w.shape[1] * w.shape[2:].numel()

        hooks = [m.register_forward_hook(count) for m in vae.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
        tok.decode(z)
        for hook in hooks:
            hook.remove()
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            tok.decode(z)
            times.append(time.perf_counter() - start)
        params = sum(x.numel() for x in vae.decoder.parameters()) / 1e6
        print(f"{name}: {params:.2f}M decoder parameters, {flops[0] / 9 / 1e9:.1f} GFLOP per frame at "
              f"{args.width}x{args.height}, {min(times):.2f} s per 9 frames (fastest of {args.repeat}, "
              f"{torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
