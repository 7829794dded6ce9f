"""End to end with a tiny model: shapes, determinism across processes and thread counts, rate, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from glvc import bitstream
from glvc.bitstream import BitstreamError
from glvc.metrics import psnr_rgb
from glvc.pipeline import GLVC

from .conftest import TINY_CLIP, build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glvc", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


class TestShapes:
    @pytest.mark.parametrize("frames,height,width", [(1, 17, 33), (2, 17, 33), (6, 17, 33), (5, 40, 50), (9, 48, 64)])
    def test_odd_sizes_come_back_exact(self, tiny_model, frames, height, width):
        rng = np.random.default_rng(frames)
        video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        result = tiny_model.encode(video, 24, quality=30)
        decoded = tiny_model.decode(result.bitstream)
        assert decoded.frames.shape == video.shape
        assert result.reconstruction.shape == video.shape
        assert np.array_equal(decoded.frames, result.reconstruction)
        header = bitstream.unpack_header(result.bitstream)[0]
        assert (header.width, header.height, header.frames) == (width, height, frames)

    @pytest.mark.parametrize("segment", [1, 2, 3])
    @pytest.mark.parametrize("frames", [1, 5, 6, 9, 10, 14])
    def test_tokenizer_segments(self, tiny_model, real_frames, segment, frames):
        model = GLVC(tiny_model.tokenizer, tiny_model.codec, segment=segment)
        video = np.concatenate([real_frames, real_frames[::-1]])[:frames]
        result = model.encode(video, 25, quality=30)
        header = bitstream.unpack_header(result.bitstream)[0]
        assert header.segment == segment
        assert len(bitstream.unpack(result.bitstream).units) == bitstream.latent_frame_count(frames, segment)
        decoded = model.decode(result.bitstream)
        assert decoded.frames.shape == video.shape
        assert np.array_equal(decoded.frames, result.reconstruction)
        with pytest.raises(BitstreamError, match="segment"):
            tiny_model.decode(result.bitstream)

    def test_iterable_input_equals_array_input(self, tiny_model, real_frames):
        a = tiny_model.encode(real_frames, 25, quality=20)
        b = tiny_model.encode(iter(list(real_frames)), 25, quality=20)
        assert a.bitstream == b.bitstream

    def test_refresh_period_makes_intra_units(self, tiny_model, real_frames):
        result = tiny_model.encode(real_frames, 25, quality=20, refresh_period=1)
        kinds = [u.kind for u in bitstream.unpack(result.bitstream).units]
        assert kinds == [bitstream.KIND_INTRA] * len(kinds)
        assert np.array_equal(tiny_model.decode(result.bitstream).frames, result.reconstruction)


class TestRate:
    def test_higher_quality_gives_more_bytes(self, tiny_model, real_frames):
        sizes = [len(tiny_model.encode(real_frames, 25, quality=q, reconstruct=False).bitstream) for q in (0, 31, 63)]
        assert sizes[0] < sizes[1] < sizes[2]

    def test_target_bytes_picks_the_highest_quality_that_fits(self, tiny_model, real_frames):
        low = len(tiny_model.encode(real_frames, 25, quality=10, reconstruct=False).bitstream)
        high = len(tiny_model.encode(real_frames, 25, quality=50, reconstruct=False).bitstream)
        target = (low + high) // 2
        result = tiny_model.encode(real_frames, 25, target_bytes=target)
        assert len(result.bitstream) <= target
        assert 10 <= result.report.quality < 50
        above = tiny_model.encode(real_frames, 25, quality=result.report.quality + 1, reconstruct=False)
        assert len(above.bitstream) > target
        assert np.array_equal(tiny_model.decode(result.bitstream).frames, result.reconstruction)

    def test_target_kbps_is_the_bytes_of_that_bitrate(self, tiny_model, real_frames):
        from glvc.pipeline import bytes_for_kbps

        mid = len(tiny_model.encode(real_frames, 25, quality=30, reconstruct=False).bitstream)
        kbps = mid * 8 / (9 / 25) / 1000  # the bitrate of quality 30 over these 9 frames at 25 fps
        by_rate = tiny_model.encode(real_frames, 25, target_kbps=kbps, reconstruct=False)
        target = bytes_for_kbps(kbps, 9, 25)
        assert target in (mid, mid - 1)  # float rounding may cost a byte
        by_bytes = tiny_model.encode(real_frames, 25, target_bytes=target, reconstruct=False)
        assert by_rate.report.target_bytes == by_bytes.report.target_bytes == target
        assert by_rate.bitstream == by_bytes.bitstream and len(by_rate.bitstream) <= target
        assert f"(chosen for a target of {target} bytes)" in by_rate.report.summary()
        assert tiny_model.encode(real_frames, 25, quality=30, reconstruct=False).report.target_bytes is None
        for bad in ({"quality": 3, "target_kbps": 2.0}, {"target_bytes": 100, "target_kbps": 2.0}, {}):
            with pytest.raises(ValueError, match="exactly one of quality, target_bytes and target_kbps"):
                tiny_model.encode(real_frames, 25, **bad)
        for bad_rate in (0.0, -1.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="target_kbps must be positive and finite"):
                tiny_model.encode(real_frames, 25, target_kbps=bad_rate)

    def test_cli_targets(self, tiny_model, tiny_model_dir, real_frames, tmp_path):
        clip = os.path.join(os.path.dirname(__file__), "data", "tiny.mp4")
        size = len(tiny_model.encode(real_frames, 25, quality=30, reconstruct=False).bitstream)
        for option, value in (("--kilobytes", f"{size / 1000}"), ("--kbps", f"{size * 8 / (9 / 25) / 1000}")):
            out = tmp_path / f"{option[2:]}.glvc"
            done = run_cli("encode", clip, str(out), "--model", tiny_model_dir, "--quiet", option, value)
            assert done.returncode == 0, done.stderr[-500:]
            assert "(chosen for a target of" in done.stdout and out.stat().st_size <= size
        both = run_cli("encode", clip, str(tmp_path / "x.glvc"), "--model", tiny_model_dir, "--rate", "3", "--kbps", "2")
        assert both.returncode == 2 and "not allowed with argument" in both.stderr
        bad = run_cli("encode", clip, str(tmp_path / "x.glvc"), "--model", tiny_model_dir, "--kbps", "inf")
        assert bad.returncode == 2 and "must be a positive number" in bad.stderr and "Traceback" not in bad.stderr

    def test_report(self, tiny_model, real_frames):
        report = tiny_model.encode(real_frames, 25, quality=20).report
        assert report.frames == 9 and (report.width, report.height) == (64, 48)
        assert report.bits_per_pixel == pytest.approx(8 * report.bytes / (9 * 64 * 48))
        assert report.kbps == pytest.approx(8 * report.bytes / (9 / 25) / 1000)
        assert {"tokenizer_encode", "latent_coding", "tokenizer_decode"} <= set(report.timings)


class TestErrors:
    def test_wrong_model_is_refused(self, tiny_model, real_frames):
        other = build_tiny_model(seed=1)
        data = other.encode(real_frames[:1], 25, quality=5, reconstruct=False).bitstream
        with pytest.raises(BitstreamError, match="model"):
            tiny_model.decode(data)

    def test_corrupted_stream(self, tiny_model, real_frames):
        data = tiny_model.encode(real_frames, 25, quality=5, reconstruct=False).bitstream
        for bad in (data[:-1], data[: len(data) // 2], b"GLVX" + data[4:], data[:30] + bytes([data[30] ^ 0x10]) + data[31:]):
            with pytest.raises(BitstreamError):
                tiny_model.decode(bad)

    def test_bad_arguments(self, tiny_model, real_frames):
        with pytest.raises(ValueError, match="quality"):
            tiny_model.encode(real_frames, 25, quality=64)
        with pytest.raises(ValueError, match="exactly one"):
            tiny_model.encode(real_frames, 25)
        with pytest.raises(ValueError, match="uint8"):
            tiny_model.encode(real_frames.astype(np.float32), 25, quality=1)


class TestPersistence:
    def test_save_load_keeps_fingerprint(self, tiny_model, tmp_path):
        tiny_model.save_pretrained(str(tmp_path))
        again = GLVC.from_pretrained(str(tmp_path))
        assert again.fingerprint == tiny_model.fingerprint

    def test_missing_model_is_a_clear_error(self, tmp_path):
        from glvc.pipeline import ModelLoadError

        with pytest.raises(ModelLoadError, match="could not load"):
            GLVC.from_pretrained(str(tmp_path / "nothing"))

    def test_offline_hub_load_fails_at_once_on_glvc_json(self, monkeypatch, tmp_path):
        """Hub unreachable, nothing cached: the error is about the model's glvc.json, raised without
        network retries (huggingface_hub's LocalEntryNotFoundError is an EntryNotFoundError, which
        must not be taken for "this repository has no glvc.json")."""
        import time

        from huggingface_hub import constants

        from glvc.pipeline import ModelLoadError

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match=r"could not load a GLVC model from 'glvc/absent-model'") as info:
            GLVC.from_pretrained("glvc/absent-model")
        assert time.monotonic() - started < 10
        assert "Hub cannot be reached and glvc.json of this model is not in the local cache" in str(info.value)


@pytest.mark.slow
class TestAcrossProcesses:
    def test_cli_round_trip_decodes_to_the_encoder_reconstruction(self, tiny_model, tiny_model_dir, real_frames, tmp_path):
        stream = tmp_path / "clip.glvc"
        encoded = run_cli("encode", TINY_CLIP, str(stream), "--rate", "33", "--model", tiny_model_dir, "--quiet")
        assert encoded.returncode == 0, encoded.stderr
        assert "bpp" in encoded.stdout
        info = run_cli("info", str(stream))
        assert info.returncode == 0 and '"frames": 9' in info.stdout
        # the same frames through the in-process encoder give the same stream and its reconstruction
        local = tiny_model.encode(real_frames, 25, quality=33)
        assert stream.read_bytes() == local.bitstream
        out = tmp_path / "decoded.npy"
        decoded = run_cli("decode", str(stream), str(out), "--model", tiny_model_dir, "--quiet")
        assert decoded.returncode == 0, decoded.stderr
        assert np.array_equal(np.load(out), local.reconstruction)
        mp4 = tmp_path / "decoded.mp4"
        assert run_cli("decode", str(stream), str(mp4), "--model", tiny_model_dir, "--quiet").returncode == 0
        from glvc.video_io import read_video

        assert read_video(str(mp4)).frames.shape == real_frames.shape

    def test_other_thread_count_decodes_the_same_symbols(self, tiny_model, tiny_model_dir, real_frames, tmp_path):
        # the latent codec runs with the caller's threads: here 2, in the decoding process 1
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            result = tiny_model.encode(real_frames, 25, quality=40)
            latents_two_threads = tiny_model.decode_latents(result.bitstream).numpy()
        finally:
            torch.set_num_threads(threads)
        stream = tmp_path / "clip.glvc"
        stream.write_bytes(result.bitstream)
        script = (
            "import sys, numpy as np, torch; torch.set_num_threads(1);"
            "from glvc.pipeline import GLVC;"
            f"m = GLVC.from_pretrained({tiny_model_dir!r}); data = open({str(stream)!r}, 'rb').read();"
            f"np.save({str(tmp_path / 'lat.npy')!r}, m.decode_latents(data).numpy());"
            f"np.save({str(tmp_path / 'pix.npy')!r}, m.decode(data).frames)"
        )
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        assert np.array_equal(np.load(tmp_path / "lat.npy"), latents_two_threads)
        pixels = np.load(tmp_path / "pix.npy").astype(int)
        assert np.abs(pixels - result.reconstruction.astype(int)).max() <= 1

    def test_codec_threads_change_no_bit(self, tiny_model, real_frames):
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            two = tiny_model.encode(real_frames, 25, quality=20)
            one = tiny_model.with_codec_threads(1).encode(real_frames, 25, quality=20)
            assert torch.get_num_threads() == 2  # restored after each latent frame
        finally:
            torch.set_num_threads(threads)
        assert one.bitstream == two.bitstream and np.array_equal(one.reconstruction, two.reconstruction)
        with pytest.raises(ValueError):
            tiny_model.with_codec_threads(0)

    def test_cli_user_errors_are_one_line(self, tiny_model_dir, tmp_path):
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"this is not a video")
        bad = run_cli("encode", str(junk), str(tmp_path / "x.glvc"), "--model", tiny_model_dir)
        assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr
        broken = tmp_path / "broken.glvc"
        broken.write_bytes(b"GLVC\x01\x00" + b"\x00" * 40)
        for command in (["decode", str(broken), str(tmp_path / "y.mp4"), "--model", tiny_model_dir], ["info", str(broken)]):
            done = run_cli(*command)
            assert done.returncode == 2 and "Traceback" not in done.stderr
            assert done.stderr.strip().splitlines()[-1].startswith("error:")


class TestTokenizerRoundTrip:
    def test_equals_the_tokenizer_on_a_whole_clip(self, tiny_model, real_frames):
        # 9 frames (1 + 4k), cut to 64x32 (a multiple of the model's stride of 32): no padding
        from glvc.pipeline import _to_frames, _to_pixels

        frames = real_frames[:, :32]
        out = tiny_model.tokenizer_round_trip(frames)
        with torch.inference_mode():
            expected = _to_frames(tiny_model.tokenizer.decode(tiny_model.tokenizer.encode(_to_pixels(frames))))
        assert tiny_model.pixel_stride == 32 and out.shape == frames.shape and np.array_equal(out, expected)

    def test_odd_size_and_length_come_back_exact(self, tiny_model, real_frames):
        frames = real_frames[:6, :45, :61]
        assert tiny_model.tokenizer_round_trip(iter(list(frames))).shape == frames.shape


def test_codec_sweep_codes_the_same_latents_as_encode(tiny_model, tiny_model_dir, real_frames):
    """scripts/codec_sweep.py: its byte counts are the real streams' sizes and its frames the decoder's."""
    import copy

    from glvc.codec import LatentCodec
    from scripts.codec_sweep import sweep_clip

    frames = real_frames[:9]
    model = copy.copy(tiny_model)  # the sweep swaps the codec in: keep the shared fixture as it is
    codec = LatentCodec.from_pretrained(os.path.join(tiny_model_dir, "codec"))
    result = sweep_clip(model, {"tiny": codec}, frames, 25, [0, 63])
    for row in result["rows"]:
        encoded = tiny_model.encode(frames, 25, quality=row["quality"])
        assert row["bytes"] == len(encoded.bitstream)
        assert row["psnr"] == pytest.approx(psnr_rgb(frames, encoded.reconstruction).value, abs=1e-3)
    assert result["rows"][0]["bytes"] <= result["rows"][1]["bytes"]
    assert result["tokenizer_psnr"] == pytest.approx(psnr_rgb(frames, tiny_model.tokenizer_round_trip(frames)).value, abs=1e-3)
    assert sweep_clip(model, {"tiny": codec}, frames, 25, [0], latent_only=True)["rows"][0]["bytes"] == result["rows"][0]["bytes"]


class TestKeptLatents:
    """encode(..., keep_latents=True) and encode_latents: the RD sweep's and the bits map's data."""

    def test_kept_latents_describe_the_stream(self, tiny_model, real_frames):
        frames = real_frames[:6]  # latent frames of 1, 4 and 1 real frames
        result = tiny_model.encode(frames, 25, quality=20, keep_latents=True)
        kept = result.latents
        units = bitstream.unpack(result.bitstream).units
        assert kept.quality == 20 and [f.frames for f in kept.frames] == [1, 4, 1]
        assert [f.payload_bytes for f in kept.frames] == [len(u.payload) for u in units]
        assert kept.frames[0].state.memory is None and kept.frames[1].state.memory is not None
        assert tiny_model.encode(frames, 25, quality=20).bitstream == result.bitstream  # keeping changes nothing

    def test_recoding_equals_encoding_at_that_quality(self, tiny_model, real_frames):
        frames = real_frames[:9]
        kept = tiny_model.encode(frames, 25, target_bytes=10**6, keep_latents=True).latents  # a target: the search path
        for quality in (0, 63):
            again = tiny_model.encode_latents(kept, 25, quality)
            direct = tiny_model.encode(frames, 25, quality=quality)
            assert again.bitstream == direct.bitstream
            assert np.array_equal(again.reconstruction, direct.reconstruction)
            assert again.report.bytes == len(direct.bitstream) and again.latents.quality == quality
        with pytest.raises(ValueError, match="quality must be in 0 .. 63, got 64"):
            tiny_model.encode_latents(kept, 25, 64)
