"""Hostile uploads through the app's service functions, the running app and the CLI.

Every input is generated here with PyAV/Pillow in a temporary folder (small: the whole set takes
a few seconds to make). Each one must be handled correctly (rotation applied, 10-bit and 4:4:4
converted, alpha dropped, an 8K frame downscaled, a 10-minute clip trimmed with a notice) or
refused with a one-line message; after the hostile requests the server still serves a normal one.

The app uses the tiny random model of tests/conftest.py (through ``service._MODELS``), so the
numbers are fast, not pretty: PSNR is not checked, shapes, orientation and colours are.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glvc import cli, service  # noqa: E402
from glvc.metrics import psnr_rgb  # noqa: E402
from glvc.video_io import read_video  # noqa: E402

from .conftest import AppClient, AppError, build_tiny_model, running_app  # noqa: E402

FAST = {"preset": "ultrafast"}


def pattern(t: int, h: int, w: int) -> np.ndarray:
    """A smooth test frame: red ramps left to right, green top to bottom, blue with time."""
    y, x = np.mgrid[0:h, 0:w]
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = x * 255 // max(w - 1, 1)
    frame[..., 1] = y * 255 // max(h - 1, 1)
    frame[..., 2] = (40 + 17 * t) % 256
    return frame


def write_clip(path, frames, w, h, codec="libx264", pix_fmt="yuv420p", rate=25, options=FAST, src_format="rgb24",
               frame_fn=None, rotation=None, pts_ms=None, fmt=None):
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if options:
            stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)  # counter-clockwise, as VideoFrame.rotation reads it back
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_fn(i) if frame_fn else pattern(i, h, w), format=src_format)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# Portrait truth: a red block top-left, a blue block bottom-right (48 high, 32 wide). A phone stores
# it landscape (rotated counter-clockwise by 90 degrees) with a display matrix of -90 degrees that
# says "turn it clockwise by 90 to show it" (ffprobe: "rotation of -90.00 degrees").
PORTRAIT = np.zeros((48, 32, 3), np.uint8)
PORTRAIT[:16, :16] = (255, 0, 0)
PORTRAIT[-16:, -16:] = (0, 0, 255)


def make_inputs(d: str) -> dict[str, str]:
    paths = {}

    def p(name):
        paths[name.split(".")[0]] = os.path.join(d, name)
        return paths[name.split(".")[0]]

    with open(p("not_video.mp4"), "w") as f:
        f.write("this is a text file with a video extension\n" * 20)
    open(p("zero_bytes.mp4"), "w").close()
    write_clip(p("one_by_one.mkv"), 3, 1, 1, codec="ffv1", pix_fmt="bgr0", options=None)
    write_clip(p("eight_k.mp4"), 1, 7680, 4320)
    # 10 minutes at 25 fps, 64x36: 15000 frames, about 2.5 MB, a second or two to write
    write_clip(p("ten_minutes.mp4"), 25 * 600, 64, 36, options={"preset": "ultrafast", "g": "250"})
    gaps = [0] + [40 if i % 3 else 120 for i in range(1, 20)]
    write_clip(p("vfr.mkv"), 20, 64, 48, pts_ms=np.cumsum(gaps).tolist())
    landscape = np.ascontiguousarray(np.rot90(PORTRAIT, 1))
    write_clip(p("rotated.mp4"), 5, 48, 32, frame_fn=lambda i: landscape, rotation=-90)
    write_clip(p("rotated_180.mp4"), 5, 32, 48, frame_fn=lambda i: np.ascontiguousarray(PORTRAIT[::-1, ::-1]), rotation=180)
    write_clip(p("ten_bit_x265.mkv"), 5, 64, 48, codec="libx265", pix_fmt="yuv420p10le",
               options={"preset": "ultrafast", "x265-params": "log-level=error"})
    write_clip(p("ten_bit_ffv1.mkv"), 5, 64, 48, codec="ffv1", pix_fmt="yuv420p10le", options=None)
    write_clip(p("yuv444.mp4"), 5, 64, 48, pix_fmt="yuv444p")
    rgba = lambda i: np.dstack([pattern(i, 48, 64), np.full((48, 64, 1), 100, np.uint8)])  # noqa: E731
    write_clip(p("alpha_png.mov"), 5, 64, 48, codec="png", pix_fmt="rgba", src_format="rgba", frame_fn=rgba, options=None)
    write_clip(p("alpha_vp9.webm"), 5, 64, 48, codec="libvpx-vp9", pix_fmt="yuva420p", src_format="rgba", frame_fn=rgba,
               options=None)
    with av.open(p("audio_only.m4a"), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray((np.sin(np.arange(44100) / 20) * 0.3).astype(np.float32)[None], format="fltp",
                                           layout="mono")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    write_clip(p("single_frame.mp4"), 1, 64, 48)
    from PIL import Image

    Image.fromarray(pattern(0, 48, 64)).save(p("image.png"))
    Image.fromarray(pattern(0, 48, 64)).save(p("photo.jpg"), quality=95)
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    return make_inputs(str(tmp_path_factory.mktemp("hostile")))


@pytest.fixture(scope="module")
def tiny_app_model(tiny_model):
    """The app's default model is the tiny one for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(service._MODELS, service.DEFAULT_MODEL_KEY, tiny_model)
        mp.setattr(service, "_RATE_TABLES", {})
        yield tiny_model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR-RGB of one frame against another (glvc.metrics, on a 1-frame clip)."""
    return psnr_rgb(a[None], b[None]).value


# name -> (expected UserError text) or None when accepted
REFUSED = {
    "not_video": "not_video.mp4 is not a readable video",
    "zero_bytes": "zero_bytes.mp4 is empty (0 bytes)",
    "one_by_one": "one_by_one.mkv is 1x1 pixels; at least 2x2 are needed",
    "audio_only": "audio_only.m4a has no video stream",
}


class TestServiceReads:
    """service.load_clip with the CPU limits (240p, 2 s): what the app codes."""

    @pytest.mark.parametrize("name", sorted(REFUSED))
    def test_refused_in_one_line(self, inputs, name):
        with pytest.raises(service.UserError) as info:
            service.load_clip(inputs[name], 240, 2.0, service.CPU_LIMITS)
        assert str(info.value).startswith(REFUSED[name]) and "\n" not in str(info.value)

    def test_eight_k_is_downscaled(self, inputs):
        video = service.load_clip(inputs["eight_k"], 240, 2.0, service.CPU_LIMITS)
        assert video.source_size == (7680, 4320)
        assert video.frames.shape == (1, 240, 426, 3)  # 16:9 kept, even width

    def test_ten_minutes_is_trimmed(self, inputs):
        video = service.load_clip(inputs["ten_minutes"], 240, 2.0, service.CPU_LIMITS)
        assert video.truncated and video.frames.shape == (50, 36, 64, 3)  # 2 s at 25 fps

    def test_trim_counts_whole_frames_without_float_rounding(self, inputs):
        from glvc.video_io import frames_in

        assert [frames_in(0.9, 10), frames_in(0.29, 100), frames_in(0.7, 10), frames_in(0.01, 25)] == [9, 29, 7, 1]
        video = service.load_clip(inputs["ten_minutes"], 240, 1.16, service.CPU_LIMITS)
        assert video.truncated and video.frames.shape[0] == 29  # 1.16 s at 25 fps (1.16 * 25 = 28.999999999999996)

    def test_longer_than_ten_minutes_is_refused(self, inputs):
        lim = service.Limits(default_height=240, max_height=360, default_seconds=2, max_seconds=3, max_source_seconds=599)
        with pytest.raises(service.UserError, match=r"is 600 s long; uploads up to 599 s are accepted"):
            service.load_clip(inputs["ten_minutes"], 240, 2.0, lim)

    def test_variable_frame_rate_keeps_every_frame(self, inputs):
        video = service.load_clip(inputs["vfr"], 240, 2.0, service.CPU_LIMITS)
        # GLVC stores one frame rate: every frame is kept, in order, at the stream's average rate
        assert video.frames.shape == (20, 48, 64, 3) and 0 < float(video.fps) <= 1000
        for t in (0, 7, 19):
            assert psnr(video.frames[t], pattern(t, 48, 64)) > 30

    @pytest.mark.parametrize("name", ["rotated", "rotated_180"])
    def test_rotation_is_applied(self, inputs, name):
        video = service.load_clip(inputs[name], 240, 2.0, service.CPU_LIMITS)
        assert video.frames.shape == (5, 48, 32, 3) and video.source_size == (32, 48)
        frame = video.frames[0].astype(int)
        assert frame[:16, :16].mean(axis=(0, 1)) == pytest.approx([255, 0, 0], abs=40)  # red top-left
        assert frame[-16:, -16:].mean(axis=(0, 1)) == pytest.approx([0, 0, 255], abs=40)  # blue bottom-right
        assert psnr(video.frames[0], PORTRAIT) > 20

    @pytest.mark.parametrize("name", ["ten_bit_x265", "ten_bit_ffv1", "yuv444", "alpha_png", "alpha_vp9"])
    def test_pixel_formats_are_converted(self, inputs, name):
        video = service.load_clip(inputs[name], 240, 2.0, service.CPU_LIMITS)
        assert video.frames.shape == (5, 48, 64, 3) and video.frames.dtype == np.uint8
        for t in range(5):  # the colours survive: 10 bits scaled to 8, chroma kept, alpha dropped
            assert psnr(video.frames[t], pattern(t, 48, 64)) > 30, (name, t)

    @pytest.mark.parametrize("name", ["single_frame", "image", "photo"])
    def test_one_frame(self, inputs, name):
        video = service.load_clip(inputs[name], 240, 2.0, service.CPU_LIMITS)
        assert video.frames.shape == (1, 48, 64, 3)
        assert psnr(video.frames[0], pattern(0, 48, 64)) > 30


class TestServiceEncodes:
    """service.encode_clip end to end (the app's handler without gradio)."""

    @pytest.mark.parametrize("name, coded", [("eight_k", (1, 64, 114)), ("ten_minutes", (10, 36, 64)), ("rotated", (5, 48, 32)),
                                             ("ten_bit_x265", (5, 48, 64)), ("alpha_vp9", (5, 48, 64)), ("image", (1, 48, 64)),
                                             ("vfr", (10, 48, 64))])
    def test_status_and_files(self, inputs, tiny_app_model, tmp_path, name, coded):
        out = service.encode_clip(inputs[name], rate=service.Rate("quality", 30), max_height=64, max_seconds=0.4,
                                  compare_x265=False, workdir=str(tmp_path))
        assert "\n" not in out.status and out.status.startswith(f"GLVC: {coded[0]} frames {coded[2]}x{coded[1]}")
        assert out.decoded.shape == (*coded, 3)
        assert ("Input trimmed to 0.4 s" in out.status) == (name in ("ten_minutes", "vfr"))
        assert np.array_equal(tiny_app_model.decode(open(out.bitstream_path, "rb").read()).frames, out.decoded)
        assert read_video(out.decoded_mp4).frames.shape == out.decoded.shape


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


class TestCli:
    """python -m glvc encode/decode, in-process: exit 0, or 2 with one line ``error: ...``."""

    @pytest.mark.parametrize("name", ["not_video", "zero_bytes", "audio_only"])
    def test_refused(self, inputs, tiny_model_dir, tmp_path, name):
        status, out, err = run_cli("encode", inputs[name], str(tmp_path / "x.glvc"), "--model", tiny_model_dir, "--quiet")
        assert status == 2 and err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x.glvc").exists()

    def test_eight_k_needs_max_height(self, inputs, tiny_model_dir, tmp_path):
        status, _, err = run_cli("encode", inputs["eight_k"], str(tmp_path / "x.glvc"), "--model", tiny_model_dir, "--quiet")
        assert status == 2 and len(err.strip().splitlines()) == 1
        assert "frames are 7680x4320 (33.2 MP)" in err and "--max-height" in err
        status, out, err = run_cli("encode", inputs["eight_k"], str(tmp_path / "x.glvc"), "--model", tiny_model_dir, "--quiet",
                                   "--max-height", "64")
        assert status == 0 and out.startswith("1 frames 114x64")

    @pytest.mark.parametrize("name, summary", [
        ("one_by_one", "3 frames 1x1"), ("rotated", "5 frames 32x48"), ("ten_bit_ffv1", "5 frames 64x48"),
        ("yuv444", "5 frames 64x48"), ("alpha_png", "5 frames 64x48"), ("vfr", "20 frames 64x48"),
        ("single_frame", "1 frames 64x48"), ("image", "1 frames 64x48"), ("photo", "1 frames 64x48"),
    ])
    def test_round_trip(self, inputs, tiny_model_dir, tmp_path, name, summary):
        stream, mp4 = str(tmp_path / "x.glvc"), str(tmp_path / "x.mp4")
        status, out, err = run_cli("encode", inputs[name], stream, "--model", tiny_model_dir, "--quiet")
        assert status == 0 and out.startswith(summary), err
        status, out, err = run_cli("decode", stream, mp4, "--model", tiny_model_dir, "--quiet")
        assert status == 0 and out.startswith(summary), err
        frames = read_video(mp4).frames
        # odd sizes are padded by one row/column for 4:2:0 in the mp4
        want = tuple(int(x) for x in summary.split()[2].split("x"))
        assert frames.shape[0] == int(summary.split()[0]) and frames.shape[2] - want[0] in (0, 1) and frames.shape[1] - want[1] in (0, 1)

    def test_ten_minutes_trimmed_with_a_note(self, inputs, tiny_model_dir, tmp_path):
        status, out, err = run_cli("encode", inputs["ten_minutes"], str(tmp_path / "x.glvc"), "--model", tiny_model_dir,
                                   "--quiet", "--max-seconds", "0.4")
        assert status == 0 and out.startswith("10 frames 64x36")
        assert err.strip() == "note: input trimmed to 10 frames"


# ------------------------------------------------------------------------------------------ the running app


@pytest.fixture(scope="module")
def client(tiny_app_model):
    pytest.importorskip("gradio_client")

    with running_app() as url, AppClient(url) as client:
        yield client


def _encode(client, path, compare=False):
    from gradio_client import handle_file

    return client.predict(handle_file(path), "default", "quality", 30, 150.0, 25.0, 64, 0.4, compare, api_name="/encode")


@pytest.mark.slow
def test_server_survives_hostile_uploads(client, inputs):
    for name, expected in REFUSED.items():
        if name == "zero_bytes":
            continue  # gradio's own upload route refuses an empty file before the app sees it (checked below)
        with pytest.raises(AppError) as info:
            _encode(client, inputs[name])
        message = str(info.value)
        assert expected in message and "Traceback" not in message and "\n" not in message.strip(), message
    with pytest.raises(Exception) as info:  # refused by gradio or by the app, never a crash
        _encode(client, inputs["zero_bytes"])
    assert "Traceback" not in str(info.value)
    for name in ("eight_k", "ten_minutes", "rotated", "alpha_vp9", "image"):
        status, *_, details = _encode(client, inputs[name])
        assert status.startswith("GLVC: ") and details["input"]["truncated"] == (name == "ten_minutes")
    # and a normal request after all that
    status, *_, details = _encode(client, os.path.join(ROOT, "examples", "vtest_3s.mp4"), compare=True)
    assert status.startswith("GLVC: 4 frames 86x64") and "x265 CRF" in status
