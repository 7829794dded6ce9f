"""What the latent codec's exact path costs, and what its tap-by-tap convolution saves (same bits).

    python scripts/exact_conv_cost.py --clip examples/bigbuckbunny_3s.mp4 --max-height 240 --threads 1

The clip goes through the tokenizer once; its latents are then coded (``compress_frame``) and decoded
(``decompress_frame``) with two exact runners in turn, ``--repeat`` times each, alternating:

* ``channels-first``: the previous formulation, ``F.conv2d`` in float64 (im2col and one matrix
  product per layer, which is how PyTorch runs a float64 convolution on the CPU) on (1, C, h, w);
* ``taps``: :class:`glvc.codec.model.ExactRunner` as it is, channels-last rows and one matrix
  product per kernel tap.

Both are exact, so payloads, decoded latents and memories must be the same bits (checked; the
script exits 1 if not). Times are CPU seconds of this process (fastest run), so other load on the
machine inflates them less than wall time; with ``--threads 1`` they are what one core spends.
Then each convolution of the exact path alone, at the clip's latent size: ``F.conv2d`` in float64
against the tap form, on random grid values (fastest of 20).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc.codec.model import ExactRunner, ResidualBlock, to_grid  # noqa: E402


class ChannelsFirstRunner(ExactRunner):
    """The exact path as it was before the tap form: F.conv2d in float64 on (1, C, h, w), a new
    tensor for each rounding. Same values (both exact); kept here to measure against."""

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Sequential):
            for child in module:
                x = self.run(child, x)
            return x
        if isinstance(module, nn.Conv2d):
            taps, bias = self._conv_weights(module)
            return to_grid(F.conv2d(x, taps.permute(3, 2, 0, 1), bias, module.stride, module.padding))
        if isinstance(module, nn.LeakyReLU):
            return to_grid(F.leaky_relu(x, module.negative_slope))
        if isinstance(module, nn.PixelShuffle):
            return F.pixel_shuffle(x, module.upscale_factor)
        if isinstance(module, ResidualBlock):
            inner = self.run(module.conv1, to_grid(F.leaky_relu(x, 0.1)))
            return to_grid(x + self.run(module.conv2, to_grid(F.leaky_relu(inner, 0.1))))
        raise TypeError(f"no exact form for {type(module).__name__}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def code(codec, latents, quality):
    """Encode then decode every latent frame: (payloads, decoded latents, final memory, encode cpu/wall, decode cpu/wall)."""
    h, w = latents[0].shape[-2:]
    state, payloads, cpu, wall = codec.initial_state(), [], cpu_seconds(), time.perf_counter()
    for z in latents:
        payload, _, state = codec.compress_frame(z, state, quality)
        payloads.append(payload)
    enc = (cpu_seconds() - cpu, time.perf_counter() - wall)
    decoded, dstate, cpu, wall = [], codec.initial_state(), cpu_seconds(), time.perf_counter()
    for payload in payloads:
        z_hat, dstate = codec.decompress_frame(payload, dstate, quality, (h, w))
        decoded.append(z_hat)
    dec = (cpu_seconds() - cpu, time.perf_counter() - wall)
    if not torch.equal(dstate.memory, state.memory):
        raise SystemExit("the decoder's memory differs from the encoder's")
    return payloads, decoded, state.memory, enc, dec


def exact_convs(codec) -> list[tuple[str, nn.Conv2d, int]]:
    """The convolutions that the exact path runs, with the latent-size divisor of their input."""
    names = {"context_net": 1, "hyper_synthesis": 4, "context_down": 1, "entropy_parameters": 2, "synthesis_up": 2,
             "synthesis": 1, "synthesis_out": 1, "memory_update": 1}
    out = []
    for name, div in names.items():
        module = getattr(codec, name)
        convs = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        for n, m in convs:  # upsampling comes after each block's last convolution: one input size per block
            out.append((f"{name}.{n}" if n else name, m, div))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", default="examples/bigbuckbunny_3s.mp4")
    parser.add_argument("--max-height", type=int, default=240)
    parser.add_argument("--max-frames", type=int, default=33)
    parser.add_argument("--quality", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default=os.path.join("glvc", "pretrained", "default"))
    args = parser.parse_args()

    from glvc.pipeline import GLVC
    from glvc.video_io import read_video

    model = GLVC.from_pretrained(args.model)
    video = read_video(args.clip, max_frames=args.max_frames, max_height=args.max_height)
    latents = [frame.latent for frame in model.encode(video.frames, video.fps, args.quality, reconstruct=False,
                                                       keep_latents=True).latents.frames]
    torch.set_num_threads(args.threads)
    codec = model.codec
    h, w = latents[0].shape[-2:]
    t, height, width = video.frames.shape[:3]
    print(f"{args.clip}: {t} frames {width}x{height}, {len(latents)} latent frames {w}x{h}, quality {args.quality}, "
          f"{args.threads} thread(s), torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")

    runners = {"channels-first": ChannelsFirstRunner(), "taps": ExactRunner()}
    results: dict[str, list] = {name: [] for name in runners}
    reference = None
    for _ in range(args.repeat + 1):  # the first round warms up and is not counted
        for name, runner in runners.items():
            codec._exact = runner
            payloads, decoded, memory, enc, dec = code(codec, latents, args.quality)
            if reference is None:
                reference = (payloads, decoded, memory)
            elif payloads != reference[0] or any(not torch.equal(a, b) for a, b in zip(decoded, reference[1])) \
                    or not torch.equal(memory, reference[2]):
                print(f"{name}: NOT the same bits as channels-first")
                return 1
            results[name].append((enc, dec))
    codec._exact = runners["taps"]
    print(f"same bits: {sum(map(len, reference[0]))} bytes of payload, latents and memories identical\n")
    print("| runner | encode CPU s | decode CPU s | encode wall s | decode wall s |")
    print("|---|---|---|---|---|")
    best = {}
    for name, runs in results.items():
        runs = runs[1:]
        best[name] = (min(r[0][0] for r in runs), min(r[1][0] for r in runs))
        print(f"| {name} | {best[name][0]:.2f} | {best[name][1]:.2f} | {min(r[0][1] for r in runs):.2f} | "
              f"{min(r[1][1] for r in runs):.2f} |")
    old, new = best["channels-first"], best["taps"]
    print(f"| taps / channels-first | {new[0] / old[0]:.2f} | {new[1] / old[1]:.2f} | | |\n")

    print("| convolution | input | F.conv2d float64 ms | taps ms | taps / conv2d |")
    print("|---|---|---|---|---|")
    runner = runners["taps"]
    for name, conv, div in exact_convs(codec):
        x = to_grid(torch.randn(1, conv.in_channels, h // div, w // div, dtype=torch.float64))
        rows = x[0].permute(1, 2, 0).contiguous()
        taps, bias = runner._conv_weights(conv)
        weight = taps.permute(3, 2, 0, 1).contiguous()

        def fastest(fn) -> float:
            fn()
            times = []
            for _ in range(20):
                start = cpu_seconds()
                fn()
                times.append(cpu_seconds() - start)
            return 1000 * min(times)

        a = fastest(lambda: F.conv2d(x, weight, bias, conv.stride, conv.padding))
        b = fastest(lambda: runner._conv(conv, rows))
        print(f"| {name} | {conv.in_channels}x{h // div}x{w // div} -> {conv.out_channels}, {conv.kernel_size[0]}x{conv.kernel_size[1]}"
              f"{' /2' if conv.stride[0] == 2 else ''} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
