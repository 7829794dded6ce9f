"""video_io's mp4 writer codes the pixels alone: the same frames give the same file whatever ran
in the process before. With x264's macroblock-tree rate control (its default) they did not: after
an x265 rate search in the same process, the same frames gave another file (up to 13 levels apart
after decoding), which made the app's two tabs show different videos for one bitstream."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from glvc.video_io import read_video, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def contents() -> dict[str, np.ndarray]:
    frames = read_video(os.path.join(ROOT, "examples", "vtest_3s.mp4"), max_frames=9, max_height=64).frames  # 86x64
    blocky = frames[:, ::4, ::4].repeat(4, axis=1).repeat(4, axis=2)[:, :64, :86]
    smooth = ((frames[:, :, :-2].astype(np.uint16) + frames[:, :, 1:-1] + frames[:, :, 2:]) // 3).astype(np.uint8)
    # a strided view too, as the pipeline returns (permuted from a (3, T, H, W) tensor)
    strided = np.ascontiguousarray(frames.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)
    return {"frames": frames, "blocky": np.ascontiguousarray(blocky), "smooth": smooth, "strided": strided}


def _digests(contents, folder, tag) -> dict[str, str]:
    out = {}
    for name, frames in contents.items():
        path = folder / f"{name}-{tag}.mp4"
        write_video(str(path), frames, 10)
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_mp4_bytes_depend_on_the_pixels_only(contents, tmp_path):
    from glvc.baselines import match_bitrate

    first = _digests(contents, tmp_path, "first")
    assert first["strided"] == first["frames"]
    for round_, target in enumerate((330, 1030, 1730)):
        # with mbtree, the writes after such a search differed (seen for 3 of these 4 contents)
        match_bitrate(contents["frames"], 10, "x265", target_bytes=target, extra_params="pools=none:frame-threads=1")
        assert _digests(contents, tmp_path, str(round_)) == first, f"after x265 rate search {round_}"
