"""Long clips stream, and decoding is deterministic across processes and thread counts.

Streaming: ``python -m glvc encode`` reads frames one at a time (FrameStream) and the pipeline
codes one latent frame (4 frames) at a time; ``decode`` writes each latent frame's pixels to the
mp4/.npy as soon as they are decoded. A clip 4x longer must not need more memory: each command
runs in its own process (scripts/long_clip.py) and reports its peak RSS (ru_maxrss, coarse: the
whole process with torch, FFmpeg and x264's look-ahead) and the peak of the numpy arrays it held
after loading the model (tracemalloc: exact; the code before streaming, which kept every frame,
grew by 9 MB from 17 to 65 frames of 342x192 here, see docs/robustness.md).

Determinism: three example clips cut short; the encoder's reconstruction, a decode in another
process (bit-identical), and decodes with other thread counts (same latents, pixels within 1);
the checks are scripts/determinism.py, which also runs them on the bundled model.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.long_clip import make_clip, run_cli_measured  # noqa: E402

SHORT, LONG = 17, 65  # frames (1 + 4k): 5 and 17 latent frames
HEIGHT = 192  # 342x192
NUMPY_GROWTH_MB = 1.5  # a frame of 342x192 is 0.19 MB: keeping the 48 extra frames would add 9 MB
RSS_GROWTH_MB = 48  # whole-process peak, noisy (threads, x264 look-ahead): measured within +-25 MB


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("long_clip")
    out = {}
    for frames in (SHORT, LONG):
        clip = str(folder / f"clip{frames}.mp4")
        make_clip(clip, frames / 25, HEIGHT)
        stream, decoded, array = (str(folder / f"clip{frames}{ext}") for ext in (".glvc", "_decoded.mp4", "_decoded.npy"))
        encode = run_cli_measured(["encode", clip, stream, "--model", tiny_model_dir, "--quiet"])
        assert encode["returncode"] == 0, encode["stderr"]
        decode = run_cli_measured(["decode", stream, decoded, "--model", tiny_model_dir, "--quiet"])
        assert decode["returncode"] == 0, decode["stderr"]
        out[frames] = {"clip": clip, "stream": stream, "decoded": decoded, "array": array, "encode": encode, "decode": decode}
    return out


@pytest.mark.slow
class TestStreaming:
    @pytest.mark.parametrize("step", ["encode", "decode"])
    def test_memory_does_not_grow_with_length(self, runs, step):
        short, long = runs[SHORT][step], runs[LONG][step]
        print(f"\n{step}: {SHORT} frames peak RSS {short['peak_rss_mb']} MB numpy {short['traced_peak_mb']} MB; "
              f"{LONG} frames peak RSS {long['peak_rss_mb']} MB numpy {long['traced_peak_mb']} MB")
        assert long["traced_peak_mb"] - short["traced_peak_mb"] < NUMPY_GROWTH_MB
        assert long["peak_rss_mb"] - short["peak_rss_mb"] < RSS_GROWTH_MB

    def test_outputs_are_complete(self, runs, tiny_model):
        from glvc import bitstream
        from glvc.video_io import read_video

        for frames, run in runs.items():
            header = bitstream.unpack_header(open(run["stream"], "rb").read())[0]
            assert (header.frames, header.width, header.height) == (frames, 342, HEIGHT)
            assert read_video(run["decoded"]).frames.shape == (frames, HEIGHT, 342, 3)
            assert run["encode"]["stdout"].startswith(f"{frames} frames 342x{HEIGHT}")

    def test_npy_output_equals_in_process_decode(self, runs, tiny_model_dir, tiny_model):
        run = runs[SHORT]
        done = run_cli_measured(["decode", run["stream"], run["array"], "--model", tiny_model_dir, "--quiet"])
        assert done["returncode"] == 0, done["stderr"]
        assert np.array_equal(np.load(run["array"]), tiny_model.decode(open(run["stream"], "rb").read()).frames)

    def test_failed_decode_leaves_no_output(self, runs, tiny_model_dir, tmp_path):
        data = bytearray(open(runs[SHORT]["stream"], "rb").read())
        data[-10] ^= 0xFF
        bad = tmp_path / "bad.glvc"
        bad.write_bytes(bytes(data))
        for out in ("out.mp4", "out.npy"):
            done = run_cli_measured(["decode", str(bad), str(tmp_path / out), "--model", tiny_model_dir, "--quiet"])
            assert done["returncode"] == 2 and "checksum mismatch" in done["stderr"]
        assert sorted(os.listdir(tmp_path)) == ["bad.glvc"]  # neither the output nor a .partial


# ------------------------------------------------------------------------------------------ determinism

@pytest.mark.slow
def test_decoding_in_another_process_and_thread_count(tiny_model, tiny_model_dir, tmp_path):
    from scripts.determinism import check

    rows = check(tiny_model, tiny_model_dir, str(tmp_path))
    assert len(rows) == 3 and all(r["other_process_identical"] for r in rows)
