"""Decode .glvc streams in another process and with other thread counts; compare with the encoder.

For each clip (the example clips, cut short and scaled down), the model encodes in this process and
keeps its reconstruction; a fresh process then decodes every stream with the default thread count
(must be bit-identical to the reconstruction) and with 1 and 3 intra-op threads (must give the same
decoded latents, i.e. the same entropy-decoded symbols, and pixels within one level: the tokenizer's
float sums depend on the thread count, the entropy coding does not).

Usage::

    python scripts/determinism.py                       # the bundled model, 3 example clips
    python scripts/determinism.py --model DIR --height 128

The fast form, with the tiny test model, is tests/test_long_clip.py::test_decoding_in_another_process_and_thread_count.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.json_report import print_and_save  # noqa: E402

# name, frames, quality, refresh period
CLIPS = [("vtest_3s.mp4", 13, 30, 0), ("bikes_2s.mp4", 17, 50, 2), ("bigbuckbunny_3s.mp4", 9, 10, 1)]
THREADS = (1, 3)

DECODER = """
import sys, numpy as np, torch
from glvc.pipeline import GLVC
model = GLVC.from_pretrained(sys.argv[1])
out = {"threads": torch.get_num_threads()}
for i, path in enumerate(sys.argv[2:]):
    data = open(path, "rb").read()
    out[f"pixels{i}"] = model.decode(data).frames
    for n in THREADS:
        torch.set_num_threads(n)
        out[f"latents{i}_t{n}"] = model.decode_latents(data).numpy()
        out[f"pixels{i}_t{n}"] = model.decode(data).frames
    torch.set_num_threads(out["threads"])
np.savez(sys.stdout.buffer, **out)
""".replace("THREADS", repr(THREADS))


def check(model, model_dir: str, workdir: str, height: int = 64, clips=CLIPS) -> list[dict]:
    """Encode ``clips`` with ``model`` (loaded from ``model_dir``), decode in another process, compare.
    Returns one row per clip; raises AssertionError when a rule is broken."""
    import torch

    from glvc.video_io import read_video

    streams, results = [], []
    for name, frames, quality, refresh in clips:
        video = read_video(os.path.join(ROOT, "examples", name), max_frames=frames, max_height=height)
        result = model.encode(video.frames, video.fps, quality=quality, refresh_period=refresh)
        path = os.path.join(workdir, f"{name}.glvc")
        with open(path, "wb") as f:
            f.write(result.bitstream)
        streams.append(path)
        results.append(result)
    done = subprocess.run([sys.executable, "-c", DECODER, model_dir, *streams], cwd=ROOT, capture_output=True, timeout=3600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = np.load(io.BytesIO(done.stdout))
    threads = int(out["threads"])
    assert threads == torch.get_num_threads() and (threads not in THREADS or os.cpu_count() == 1), threads
    rows = []
    for i, result in enumerate(results):
        name, frames, quality, refresh = clips[i]
        # another process, the same (default) thread count: bit-identical to the encoder's reconstruction
        assert np.array_equal(out[f"pixels{i}"], result.reconstruction), clips[i]
        latents = model.decode_latents(result.bitstream).numpy()
        row = {"clip": name, "frames": frames, "size": list(result.reconstruction.shape[1:3][::-1]), "quality": quality,
               "refresh": refresh, "bytes": len(result.bitstream), "other_process_identical": True, "default_threads": threads}
        for n in THREADS:
            # another thread count: the same symbols and latents; pixels within 1 level (the tokenizer's sums)
            assert np.array_equal(out[f"latents{i}_t{n}"], latents), (clips[i], n)
            diff = np.abs(out[f"pixels{i}_t{n}"].astype(int) - result.reconstruction.astype(int))
            assert diff.max() <= 1, (clips[i], n, int(diff.max()))
            row[f"threads{n}"] = {"latents_identical": True, "max_pixel_diff": int(diff.max()),
                                  "pixels_differing": float(np.mean(diff > 0))}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from glvc.defaults import default_model
    from glvc.pipeline import GLVC

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GLVC model folder (default: the bundled model)")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model_dir = args.model or default_model()
    model = GLVC.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(prefix="glvc-determinism-") as workdir:
        rows = check(model, model_dir, workdir, args.height)
    result = {"model": model_dir, "height": args.height, "rows": rows}
    print_and_save(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
