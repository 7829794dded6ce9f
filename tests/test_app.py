"""The Gradio app in-process: launched on 127.0.0.1 and driven with gradio_client.

The clips are cut small through the app's own limit inputs (64 px high, 0.9 s = 9 frames of
vtest at 10 fps), so the whole file takes well under a minute on 2 CPU cores. The service's
limits and refusals are also checked directly, without the server.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from gradio_client import handle_file

from glvc import service
from glvc.video_io import read_video

from .conftest import AppClient, AppError, running_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VTEST = os.path.join(ROOT, "examples", "vtest_3s.mp4")
SMALL = {"max_height": 64, "max_seconds": 0.9}  # vtest: 86x64, 9 frames


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # request folders in a folder of this test's own, where nothing else on the machine writes
    tmp = pytest.MonkeyPatch()
    tmp.setattr(service, "WORKSPACE_ROOT", str(tmp_path_factory.mktemp("requests")))
    try:
        with running_app() as url, AppClient(url) as client:
            yield client
    finally:
        tmp.undo()


def _encode(client, path, mode="quality", quality=32, kbps=150.0, kilobytes=25.0, compare=True, slow_metrics=None, **limits):
    """``slow_metrics=None`` leaves the slow metrics box out of the request (its default applies)."""
    limits = {**SMALL, **limits}
    args = [handle_file(path), "default", mode, quality, kbps, kilobytes, limits["max_height"], limits["max_seconds"], compare]
    return client.predict(*args, *([] if slow_metrics is None else [slow_metrics]), api_name="/encode")


def _frames(video_output) -> np.ndarray:
    path = video_output["video"] if isinstance(video_output, dict) else video_output
    return read_video(path).frames


def _request_dirs() -> set[str]:
    return set(glob.glob(os.path.join(service.WORKSPACE_ROOT or tempfile.gettempdir(), "glvc-app-*")))


@pytest.fixture(scope="module")
def encoded(client):
    out = _encode(client, VTEST, slow_metrics=True)
    return out, _request_dirs()


@pytest.mark.slow
class TestEncodeDecode:
    def test_encode_outputs(self, encoded):
        (status, _, sbs, table, stages, glvc_path, details), left = encoded
        assert status.startswith("GLVC: 9 frames 86x64") and "\n" not in status
        assert details["input"]["frames"] == 9 and details["input"]["coded_size"] == [86, 64]
        assert details["glvc"]["quality"] == 32
        rows = {row[0]: row[1:] for row in table["data"]}
        assert int(rows["bytes"][0].replace(",", "")) == os.path.getsize(glvc_path) == details["glvc"]["bytes"]
        for key in ("kbps", "bits per pixel", "compression ratio (vs 8-bit RGB)"):
            assert rows[key][0] != "-" and rows[key][1] != "-"  # GLVC and x265
        labels = " ".join(rows)
        for name in ("PSNR", "SSIM", "VMAF", "LPIPS", "DISTS", "ColorVideoVDP"):
            assert name in labels
        jod = next(row[1:] for row in table["data"] if row[0].startswith("ColorVideoVDP"))
        assert all(cell.endswith(" JOD") and float(cell.split()[0]) <= 10 for cell in jod), jod  # GLVC and x265
        assert {"GLVC ColorVideoVDP", "x265 ColorVideoVDP"} <= {r[0] for r in stages["data"]}
        assert details["cvvdp_display"] == "standard_fhd" and details["glvc_metrics"]["cvvdp"] <= 10
        for row in table["data"][5:]:
            assert row[1] == "-" or row[1].startswith("unavailable: ") or row[1].split()[0].replace(".", "").lstrip("-").isdigit()
        assert int(rows["bytes"][1].replace(",", "")) <= details["glvc"]["bytes"] or "larger than GLVC" in status
        assert [r[0] for r in stages["data"]][-1] == "total"
        assert _frames(sbs).shape[0] == 9
        assert not left, f"request folders left behind: {left}"

    def test_bitstream_decodes_to_the_same_video(self, client, encoded):
        (_, decoded, _, _, _, glvc_path, details), _ = encoded
        status, decoded_again, decode_details = client.predict(handle_file(glvc_path), "default", api_name="/decode")
        assert status.startswith("Decoded 9 frames 86x64")
        assert decode_details["decoded_sha256"] == details["decoded_sha256"]  # bit-identical frames
        first, second = _frames(decoded), _frames(decoded_again)
        assert first.shape == second.shape == (9, 64, 86, 3)
        # the browser's mp4s are lossy H.264 copies of those frames, and the same in both tabs
        # (with x264's mbtree they differed by up to 13 levels: tests/test_video_io.py)
        assert np.array_equal(first, second)

    # the bundled model codes this 86x64x9 clip in about 210 (quality 0) to 360 bytes (quality 63)
    # (0.1 kB: below quality 0, which the status line must say)
    @pytest.mark.parametrize("mode, kbps, kilobytes", [("kbps", 2.4, 25.0), ("kilobytes", 150.0, 0.3), ("kilobytes", 150.0, 0.1)])
    def test_target_modes_pick_a_quality_that_fits(self, client, mode, kbps, kilobytes):
        status, _, _, table, *_, details = _encode(client, VTEST, mode=mode, kbps=kbps, kilobytes=kilobytes, compare=False)
        # the slow metrics box is off by default without a GPU: the rows say so
        slow = [row[1:] for row in table["data"] if row[0].startswith(("ColorVideoVDP", "DISTS"))]
        if not service.slow_metrics_default():
            assert slow == [[service.SLOW_METRIC_OFF, "-"]] * 2
        target = details["rate"]["target_bytes"]
        assert target == (int(kbps * 1000 / 8 * 0.9) if mode == "kbps" else int(kilobytes * 1000))
        assert details["glvc"]["bytes"] <= target or details["glvc"]["quality"] == 0
        assert f"chosen for a target of {target:,} bytes" in status
        missed = f"the target of {target:,} bytes"
        assert (details["glvc"]["bytes"] > target) == (kilobytes == 0.1 and mode == "kilobytes")
        if details["glvc"]["bytes"] > target:
            assert f"Note: {missed}" in status and "below what this model can make for this clip" in status
            assert f"made {details['glvc']['bytes']:,} bytes" in status
        else:
            assert missed not in status


@pytest.mark.slow
class TestBadUploads:
    """Each refusal is one line that names the problem, never a traceback."""

    def _error(self, call) -> str:
        with pytest.raises(AppError) as info:
            call()
        message = str(info.value)
        assert "Traceback" not in message and "\n" not in message.strip()
        return message

    def test_not_a_video(self, client, tmp_path):
        fake = tmp_path / "notes.mp4"
        fake.write_text("this is not a video\n" * 10)
        assert "is not a readable video" in self._error(lambda: _encode(client, str(fake)))

    def test_no_frames(self, client, tmp_path):
        import av

        empty = tmp_path / "empty.avi"  # a video stream without a single frame
        container = av.open(str(empty), "w")
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        container.close()
        assert "no decodable video frames" in self._error(lambda: _encode(client, str(empty)))

    def test_corrupt_glvc(self, client, encoded, tmp_path):
        glvc_path = encoded[0][5]
        with open(glvc_path, "rb") as f:
            data = f.read()
        truncated = tmp_path / "truncated.glvc"
        truncated.write_bytes(data[: len(data) // 2])
        flipped = tmp_path / "flipped.glvc"
        flipped.write_bytes(data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:])
        garbage = tmp_path / "garbage.glvc"
        garbage.write_bytes(b"not a glvc stream at all")
        for path in (truncated, flipped, garbage):
            message = self._error(lambda path=path: client.predict(handle_file(str(path)), "default", api_name="/decode"))
            assert f"{path.name} is not a valid .glvc file" in message or f"{path.name} is corrupt" in message

    def test_no_upload(self, client):
        assert "no .glvc file given" in self._error(lambda: client.predict(None, "default", api_name="/decode"))


class TestService:
    def test_limits_refuse_with_numbers(self, tmp_path):
        lim = service.Limits(default_height=64, max_height=128, default_seconds=1, max_seconds=1,
                             max_upload_bytes=200_000, max_source_seconds=2.0)
        with pytest.raises(service.UserError, match=r"is 3 s long; uploads up to 2 s"):
            service.load_clip(VTEST, 64, 1, lim)
        big = os.path.join(ROOT, "examples", "bigbuckbunny_3s.mp4")
        with pytest.raises(service.UserError, match=r"bigbuckbunny_3s.mp4 is 387.8 kB; at most 200.0 kB is accepted"):
            service.load_clip(big, 64, 1, lim)
        with pytest.raises(service.UserError, match=r"max height 480 px is outside 64 .. 128"):
            service.load_clip(VTEST, 480, 1, lim)
        with pytest.raises(service.UserError, match=r"max duration 5 s is outside 0 .. 1 s"):
            service.load_clip(VTEST, 64, 5, lim)

    def test_rate_table_interpolates_between_measurements(self):
        table = service.RateTable((0, 10), (0.01, 0.04), ("a",), 240, 2.0)
        assert table.expected_bpp(10) == (0.04, True)
        value, measured = table.expected_bpp(5)
        assert not measured and value == pytest.approx(0.02)  # geometric midpoint

    def test_bundled_rate_table_matches_the_model(self):
        table = service.rate_table(service.DEFAULT_MODEL_KEY)
        if table is None:
            pytest.skip("no rate_table.json for this model (run scripts/rate_table.py)")
        assert list(table.mean_bpp) == sorted(table.mean_bpp)  # more bytes at higher quality
        assert "bpp" in service.quality_hint(service.DEFAULT_MODEL_KEY, 30)

    def test_hub_model_unreachable_is_one_clear_line(self, monkeypatch):
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(service, "_MODELS", {})
        with pytest.raises(service.UserError, match=r"cannot load model .*glvc/glvc-wan21"):
            service.get_model("wan21")
        assert "Not available" in service.model_status("wan21")

    def test_side_by_side_labels_and_layout(self):
        a = np.zeros((2, 40, 50, 3), np.uint8)
        out = service.side_by_side([("a", a), ("b", a + 100)], gap=4)
        assert out.shape == (2, 40, 104, 3)
        assert (out[:, 30:, 54:] == 100).all() and (out[:, :, 50:54] == 255).all()
        assert out[0, :12, :20].max() > 200  # the label: light text on a dark box


@pytest.mark.slow
def test_the_app_starts_quietly():
    """Importing the app (what ``python app.py`` does before it serves: the model loads) prints
    nothing: the libraries' notices (torch.jit's FutureWarning, diffusers' "accelerate" notice) are
    filtered as in the CLI (glvc.defaults.quiet_libraries)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "DIFFUSERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout, done.stderr) == ("", "")


def test_a_request_shows_the_decoded_video_before_the_scores(tmp_path):
    steps = service.encode_clip_steps(VTEST, "default", service.Rate("quality", 32), 64, 0.9, True, str(tmp_path),
                                      slow_metrics=False)
    preview = next(steps)
    assert isinstance(preview, service.EncodePreview)
    assert preview.status.startswith("Decoded by GLVC after") and "x265 at the same size follow" in preview.status
    decoded_mp4 = open(preview.decoded_mp4, "rb").read()
    bitstream = open(preview.bitstream_path, "rb").read()
    assert not os.path.exists(os.path.join(str(tmp_path), "vtest_3s_side_by_side.mp4"))  # not yet
    out = next(steps)
    assert isinstance(out, service.EncodeOutcome) and next(steps, None) is None
    assert (out.decoded_mp4, out.bitstream_path) == (preview.decoded_mp4, preview.bitstream_path)
    assert open(out.decoded_mp4, "rb").read() == decoded_mp4 and open(out.bitstream_path, "rb").read() == bitstream
    assert os.path.isfile(out.side_by_side_mp4) and out.status.startswith("GLVC: 9 frames")


@pytest.fixture(scope="module")
def pictured(tmp_path_factory):
    """One real encode of vtest (86x64, 9 frames = 3 latent frames) with x265, as the app makes it."""
    out = service.encode_clip(VTEST, "default", service.Rate("quality", 32), 64, 0.9, True,
                              str(tmp_path_factory.mktemp("pictures")), slow_metrics=False)
    return out, out.inspection


def _png_size(fig) -> tuple[int, int, int]:
    """(width, height, distinct colours) of a figure rendered as the app sends it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image.width, image.height, len(set(image.getdata()))


class TestPictures:
    """Each picture of the app, from one real encode (glvc.pictures and the service behind it)."""

    def test_per_frame_chart(self, pictured):
        from glvc import bitstream, pictures

        out, ins = pictured
        fig = pictures.per_frame_chart(ins)
        top, bottom = fig.axes
        glvc_line, x265_line = top.get_lines()
        assert np.allclose(glvc_line.get_ydata(), ins.glvc_psnr) and np.allclose(x265_line.get_ydata(), ins.x265_psnr)
        table_psnr = next(row for row in out.table if row[0].startswith("PSNR"))
        assert f"{ins.glvc_psnr.mean():.2f} dB" == table_psnr[1] and f"{ins.x265_psnr.mean():.2f} dB" == table_psnr[2]
        with open(out.bitstream_path, "rb") as f:
            units = bitstream.unpack(f.read()).units
        glvc_steps, x265_steps = (patch.get_data().values.tolist() for patch in bottom.patches)
        assert glvc_steps == [len(unit.payload) for unit in units]
        assert sum(x265_steps) == out.details["x265"]["bytes"]  # every x265 frame's packet, once
        assert ins.spans == [(0, 1), (1, 5), (5, 9)]
        width, height, colours = _png_size(fig)
        assert width > 500 and height > 300 and colours > 50

    def test_frame_inspector(self, pictured):
        from glvc import pictures

        out, ins = pictured
        original, glvc = pictures.frame_pair(ins, 4, "glvc")
        assert original.shape == glvc.shape == (64, 86, 3)
        assert np.array_equal(glvc, out.decoded[4]) and not np.array_equal(original, glvc)
        _, x265 = pictures.frame_pair(ins, 99, "x265")  # clamped to the last frame
        assert np.array_equal(x265, ins.x265[8])
        assert pictures.frame_caption(ins, 4).startswith(f"Frame 4 of 9 (latent frame 1): GLVC {ins.glvc_psnr[4]:.2f} dB")

    def test_bits_map(self, pictured):
        from glvc import pictures

        _, ins = pictured
        for index, frame in enumerate(ins.latents.frames):
            bits = service.latent_bits(ins, index)
            assert bits.shape == (8, 12) and (bits >= 0).all()  # 96x64 padded / 8
            assert 0.6 <= bits.sum() / (8 * frame.payload_bytes) <= 1.02  # ~70-byte frames: framing is ~10% here
        fig = service.bits_picture(ins, 1)
        heat = fig.axes[0].get_images()[1].get_array()
        assert np.allclose(heat, service.latent_bits(ins, 1))
        rgb = fig.axes[1].get_images()[0].get_array()
        assert rgb.shape == (8, 12, 3) and 0 <= rgb.min() and rgb.max() <= 1 and rgb.std() > 0.05
        projection = pictures.latent_projection([f.latent for f in ins.latents.frames])
        assert np.allclose(rgb, pictures.latent_rgb(ins.latents.frames[1].latent, projection))
        assert _png_size(fig)[2] > 50

    def test_rd_sweep(self, pictured):
        from glvc import pictures

        out, ins = pictured
        seconds, line = service.sweep_estimate(ins)
        assert seconds > 0 and "4 GLVC rates" in line and "5 x265 rate searches" in line  # q32 is this encode's
        sweep = service.rd_sweep(ins)
        glvc = [p for p in sweep.points if p["codec"] == "GLVC"]
        x265 = [p for p in sweep.points if p["codec"] == "x265"]
        assert [p["quality"] for p in glvc] == [0, 16, 32, 47, 63] and len(x265) == 5
        assert [p["bytes"] for p in glvc] == sorted(p["bytes"] for p in glvc)
        assert next(p for p in glvc if p["quality"] == 32)["bytes"] == out.details["glvc"]["bytes"]
        for g, x in zip(glvc, x265):  # x265 at the same size: no larger, unless its highest CRF is
            assert x["bytes"] <= g["bytes"] or x["crf"] == 51
        fig = pictures.rd_figure(sweep.points)
        assert [len(line.get_xdata()) for line in fig.axes[0].get_lines()] == [5, 5]
        assert len(sweep.table()) == 10 and _png_size(fig)[2] > 50
