"""Time the app's default request without the browser: ``service.encode_clip_steps`` as the Encode
button runs it (default model, 240p, 2 s, quality 32, x265 comparison, the metrics the page shows).

    python scripts/app_request_time.py [--clip examples/bikes_2s.mp4] [--repeat 3]

The model is loaded and its tokenizer engine compiled first, as the app does at start (not timed).
For each run: when the decoded video is shown (the preview), the whole request, and the time of
each stage; the fastest run's stages are printed last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc import service  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="examples/bikes_2s.mp4")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quality", type=int, default=32)
    args = p.parse_args()
    start = time.perf_counter()
    model = service.get_model(service.DEFAULT_MODEL_KEY)
    service.prepare_tokenizer()
    print(f"model loaded and tokenizer engine {model.tokenizer.engine!r} prepared in {time.perf_counter() - start:.1f} s "
          "(not timed below, as in the app)")
    runs = []
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            steps = service.encode_clip_steps(args.clip, rate=service.Rate("quality", args.quality), workdir=workdir)
            next(steps)
            preview = time.perf_counter() - start
            outcome = next(steps)
            total = time.perf_counter() - start
        runs.append((total, preview, outcome.timings))
        print(f"run {run + 1}: decoded video shown after {preview:.1f} s, request {total:.1f} s")
    total, preview, timings = min(runs)
    print(f"fastest run ({total:.1f} s, preview at {preview:.1f} s), per stage:")
    for stage, seconds in timings:
        print(f"  {stage:45s} {seconds:>7s} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
