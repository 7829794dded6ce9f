"""Write the golden .glvc streams that every later decoder must decode bit-exactly (tests/test_golden.py).

Two sets, each a manifest beside its streams in ``tests/golden/``:

* ``shipped.json``: streams of the shipped model (``glvc/pretrained/default``). When that model
  changes, run ``python scripts/make_golden.py`` and commit its output with the model: the
  streams, their hashes and the reference frames are all rewritten.
* ``tiny.json``: streams of a tiny fixed model kept in ``tests/golden/tiny_model`` (random
  weights, a few hundred kB), which never changes, so its streams guard the decoder's code path
  across versions. ``--tiny`` adds streams of the current format version to this set and keeps
  the older ones (tests check those are refused with a clear error); use it only after raising
  ``glvc.bitstream.VERSION``. ``--new-tiny-model`` builds the tiny model itself (done once).

For each stream the manifest holds the sha256 of the file, of its decoded latents
(``GLVC.decode_latents``, float32 little-endian) and of its decoded frames; the frames are kept
too (``.npz``), since other machines may decode them within ``max_pixel_diff`` levels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GOLDEN = os.path.join(ROOT, "tests", "golden")
TINY_MODEL = os.path.join(GOLDEN, "tiny_model")
SHIPPED_MODEL = os.path.join(ROOT, "glvc", "pretrained", "default")
MAX_PIXEL_DIFF = 1  # frames on other machines: the tokenizer's float sums (measured: docs/bitstream.md)

# name, source, frames, max height, quality, refresh period
TINY_STREAMS = [
    ("real9_q30", "tests/data/tiny.mp4", 9, 0, 30, 0),
    ("real9_q5_refresh1", "tests/data/tiny.mp4", 9, 0, 5, 1),
    ("noise6_17x33_q63", "noise", 6, 0, 63, 0),
]
SHIPPED_STREAMS = [
    ("vtest9_q30", "examples/vtest_3s.mp4", 9, 64, 30, 0),
    ("bikes6_q63_refresh1", "examples/bikes_2s.mp4", 6, 64, 63, 1),
]


def build_tiny_model(directory: str) -> None:
    """The fixed tiny model: the test suite's tiny configuration (tests/conftest.py), seed 12,
    tokenizer segments of 2 latent frames."""
    import torch
    from diffusers import AutoencoderKLWan

    from glvc.codec import LatentCodec
    from glvc.pipeline import GLVC
    from glvc.tokenizer import Tokenizer
    from tests.conftest import TINY_CODEC, TINY_TOKENIZER

    torch.manual_seed(12)
    model = GLVC(Tokenizer(AutoencoderKLWan(**TINY_TOKENIZER)), LatentCodec(**TINY_CODEC), segment=2)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    model.save_pretrained(directory)


def _frames(source: str, count: int, max_height: int):
    from fractions import Fraction

    from glvc.video_io import read_video

    if source == "noise":
        return np.random.default_rng(12).integers(0, 256, (count, 17, 33, 3), dtype=np.uint8), Fraction(24)
    video = read_video(os.path.join(ROOT, source), max_frames=count, max_height=max_height or None)
    return video.frames, video.fps


def latents_sha256(latents) -> str:
    """sha256 of decoded latents (any shape) as float32 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(latents, dtype="<f4").tobytes()).hexdigest()


def write_set(manifest_name: str, model_dir: str, specs, keep_older: bool) -> dict:
    """Encode ``specs`` with the model in ``model_dir``; write the streams and the manifest."""
    import torch

    from glvc import bitstream
    from glvc.pipeline import GLVC

    model = GLVC.from_pretrained(model_dir)
    version = bitstream.VERSION
    prefix = os.path.splitext(manifest_name)[0]
    path = os.path.join(GOLDEN, manifest_name)
    old = []
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)["streams"]
    kept = [e for e in old if keep_older and e["version"] != version]
    for entry in old:  # the streams replaced now
        if entry not in kept:
            for name in (entry["file"], entry["reference_frames"]):
                if os.path.isfile(os.path.join(GOLDEN, name)):
                    os.remove(os.path.join(GOLDEN, name))
    streams = list(kept)
    for name, source, count, max_height, quality, refresh in specs:
        frames, fps = _frames(source, count, max_height)
        data = model.encode(frames, fps, quality=quality, refresh_period=refresh).bitstream
        decoded = model.decode(data).frames
        stem = f"{prefix}_v{version}_{name}"
        with open(os.path.join(GOLDEN, stem + ".glvc"), "wb") as f:
            f.write(data)
        np.savez_compressed(os.path.join(GOLDEN, stem + ".npz"), frames=decoded)
        streams.append({
            "file": stem + ".glvc", "version": version, "source": source, "frames": count,
            "size": [int(decoded.shape[2]), int(decoded.shape[1])], "quality": quality, "refresh_period": refresh,
            "sha256": hashlib.sha256(data).hexdigest(),
            "latents_sha256": latents_sha256(model.decode_latents(data).numpy()),
            "frames_sha256": hashlib.sha256(decoded.tobytes()).hexdigest(),
            "reference_frames": stem + ".npz", "max_pixel_diff": MAX_PIXEL_DIFF,
        })
    manifest = {
        "about": "golden streams: written by `python scripts/make_golden.py`" + (" --tiny" if keep_older else "")
                 + "; checked by tests/test_golden.py",
        "model": os.path.relpath(model_dir, ROOT),
        "fingerprint": model.fingerprint.hex(),
        "made_with": {"torch": torch.__version__, "aten_capability": torch.backends.cpu.get_cpu_capability()},
        "streams": streams,
    }
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="add tiny-model streams of the current format version")
    parser.add_argument("--new-tiny-model", action="store_true", help="(re)build the fixed tiny model first (once)")
    args = parser.parse_args(argv)
    os.makedirs(GOLDEN, exist_ok=True)
    if args.new_tiny_model:
        build_tiny_model(TINY_MODEL)
    if args.tiny or args.new_tiny_model:
        manifest = write_set("tiny.json", TINY_MODEL, TINY_STREAMS, keep_older=not args.new_tiny_model)
        print(f"tiny.json: model {manifest['fingerprint']}, {len(manifest['streams'])} streams")
    manifest = write_set("shipped.json", SHIPPED_MODEL, SHIPPED_STREAMS, keep_older=False)
    print(f"shipped.json: model {manifest['fingerprint']}, {len(manifest['streams'])} streams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
