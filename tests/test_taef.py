"""The per-frame tokenizer family (TAEF2): architecture against the shipped weights, batches and odd
sizes, loading by family, the openvino engine (within float rounding of PyTorch, a clean fallback),
and whole streams at temporal stride 1 decoded in another process with each engine."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from glvc import bitstream, tokenizer_openvino
from glvc.bitstream import BitstreamError
from glvc.codec import LatentCodec
from glvc.metrics import psnr_rgb
from glvc.pipeline import GLVC
from glvc.tokenizer import load_tokenizer, tokenizer_for
from glvc.tokenizer_taef import FrameTokenizer, TinyAutoencoder

from .conftest import TINY_CLIP, TINY_CODEC, build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "glvc", "pretrained", "taef2", "tokenizer")
TINY_TAE = dict(latent_channels=4, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1),
                norm_groups=2, norm_expand=2, norm_blocks=1)


def tiny_tae_model(seed: int = 0) -> GLVC:
    torch.manual_seed(seed)
    vae = TinyAutoencoder(**TINY_TAE, latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.0, 2.0, 0.5, 1.5])
    return GLVC(FrameTokenizer(vae), LatentCodec(latent_channels=4, **TINY_CODEC))


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


class TestShippedWeights:
    def test_reconstructs_a_real_clip(self, real_frames):
        """The architecture written here and the converted TAEF2 weights agree: a wrong layer order,
        a missing branch or a misnamed tensor gives far below 30 dB (random weights: about 10)."""
        tok = load_tokenizer(SHIPPED)
        assert isinstance(tok, FrameTokenizer) and tok.latent_channels == 32 and tok.temporal_stride == 1
        x = to_pixels(real_frames)  # (1, 3, 9, 48, 64)
        z = tok.encode(x)
        assert z.shape == (1, 32, 9, 6, 8)
        assert z.abs().mean() < 3  # normalised by the measured statistics
        out = tok.decode(z)
        frames = ((out[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
        assert psnr_rgb(real_frames, frames).value > 30

    def test_weights_are_the_published_float16_values(self):
        from safetensors.torch import load_file

        weights = load_file(os.path.join(SHIPPED, "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float16}
        assert sum(t.numel() for t in weights.values()) == 2_677_027  # 1,338,528 + 1,338,499 as published


class TestFrameTokenizer:
    def test_batch_and_frames_are_independent(self):
        tok = tiny_tae_model().tokenizer
        x = torch.rand(2, 3, 3, 24, 40) * 2 - 1
        z = tok.encode(x)
        assert z.shape == (2, 4, 3, 3, 5)
        for b in range(2):
            for t in range(3):
                alone = tok.encode(x[b : b + 1, :, t : t + 1])
                torch.testing.assert_close(z[b : b + 1, :, t : t + 1], alone, rtol=1e-5, atol=1e-5)
        out = tok.decode(z)
        assert out.shape == x.shape and out.abs().max() <= 1

    def test_streams_equal_whole_clips(self):
        tok = tiny_tae_model().tokenizer
        x = torch.rand(1, 3, 4, 16, 24) * 2 - 1
        encoder, decoder = tok.encoder_stream(), tok.decoder_stream()
        z = torch.cat([encoder.push(x[:, :, t : t + 1]) for t in range(4)], dim=2)
        torch.testing.assert_close(z, tok.encode(x))
        torch.testing.assert_close(torch.cat([decoder.push(z[:, :, t : t + 1]) for t in range(4)], dim=2), tok.decode(z))
        with pytest.raises(ValueError, match="one frame per push"):
            encoder.push(x[:, :, :2])

    def test_sizes_are_checked(self):
        tok = tiny_tae_model().tokenizer
        with pytest.raises(ValueError, match="30x16 is not a multiple"):
            tok.encode(torch.zeros(1, 3, 1, 16, 30))
        with pytest.raises(ValueError, match=r"\(B, 4, T, h, w\)"):
            tok.decode(torch.zeros(1, 5, 1, 2, 2))

    def test_pytorch_engines_give_the_same_latents(self):
        tok = tiny_tae_model().tokenizer
        x = torch.rand(2, 3, 2, 16, 16) * 2 - 1
        for engine in ("reference", "onednn"):  # openvino: TestOpenVINOEngine
            torch.testing.assert_close(tok.with_engine(engine).encode(x), tok.encode(x), rtol=0, atol=0)

    def test_loaded_by_family(self, tmp_path):
        model = tiny_tae_model()
        model.tokenizer.vae.save_pretrained(str(tmp_path / "tae"))
        loaded = load_tokenizer(str(tmp_path / "tae"))
        assert isinstance(loaded, FrameTokenizer)
        assert loaded.latents_std.flatten().tolist() == [1.0, 2.0, 0.5, 1.5]
        assert isinstance(tokenizer_for(model.tokenizer.vae), FrameTokenizer)
        wan = build_tiny_model().tokenizer.vae
        assert type(tokenizer_for(wan)).__name__ == "Tokenizer"
        with pytest.raises(ValueError, match="GLVC runs"):
            tokenizer_for(torch.nn.Conv2d(1, 1, 1))


@pytest.fixture(scope="module")
def openvino_cache(tmp_path_factory):
    """A converted-graph cache for this module ($GLVC_CACHE_DIR), not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        path = str(tmp_path_factory.mktemp("glvc_cache"))
        patch.setenv(tokenizer_openvino.CACHE_ENV, path)
        yield path


@pytest.fixture(scope="module")
def engines(openvino_cache):
    """(openvino, onednn) FrameTokenizer of the same tiny model; the openvino one compiled (seconds)."""
    openvino = tiny_tae_model().tokenizer.with_engine("openvino")
    assert isinstance(openvino.compiled, tokenizer_openvino.CompiledFrameTokenizer)
    return openvino, openvino.with_engine("onednn")


@pytest.mark.skipif(not tokenizer_openvino.available(), reason="openvino is not installed")
class TestOpenVINOEngine:
    @pytest.mark.parametrize("batch, frames, height, width", [
        (2, 3, 48, 64),  # frames of two clips in one graph call
        (3, 1, 40, 24),  # odd latent sizes (5x3); the graphs were traced at 32x32
        (1, 2, 8, 16),  # the smallest: latents 1x2
        (2, 2, 56, 72),  # odd latent sizes (7x9)
    ])
    def test_any_batch_and_size_equals_pytorch_within_float_rounding(self, engines, batch, frames, height, width):
        openvino, onednn = engines
        pixels = torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        latents = openvino.encode(pixels)
        reference = onednn.encode(pixels)
        assert latents.shape == reference.shape == (batch, 4, frames, height // 8, width // 8)
        assert (latents - reference).abs().max().item() < 1e-4
        decoded = openvino.decode(reference)
        assert decoded.shape == pixels.shape
        assert (decoded - onednn.decode(reference)).abs().max().item() < 1e-4
        for i in range(batch):  # a clip's result does not depend on the others in its batch
            assert torch.equal(openvino.encode(pixels[i : i + 1]), latents[i : i + 1])
            assert torch.equal(openvino.decode(reference[i : i + 1]), decoded[i : i + 1])

    def test_the_graphs_refuse_what_they_cannot_take(self, engines):
        import dataclasses

        compiled = engines[0].compiled
        with pytest.raises(ValueError, match="encoder input 32x30 is not a multiple of 8"):
            compiled.encode(torch.zeros(1, 3, 30, 32))
        with pytest.raises(ValueError, match=r"takes \(N, 4, H, W\) with N, H, W >= 1, got \(1, 4, 0, 2\)"):
            compiled.decode(torch.zeros(1, 4, 0, 2))
        # a graph that disagrees with the config (here: the config says 16x, the graphs do 8x) is caught
        mismatched = copy.copy(compiled)
        mismatched.geometry = dataclasses.replace(compiled.geometry, spatial_stride=16)
        with pytest.raises(RuntimeError, match=r"the decoder returned \(2, 3, 16, 24\) .* expected \(2, 3, 32, 48\)"):
            mismatched.decode(torch.zeros(2, 4, 2, 3))

    def test_graphs_are_kept_in_the_shared_cache(self, engines, openvino_cache, caplog):
        openvino, _ = engines
        compiled = openvino.compiled
        assert os.path.dirname(compiled.folder) == os.path.join(openvino_cache, "openvino")
        assert sorted(os.listdir(compiled.folder)) == [tokenizer_openvino.COMPILED_SUBFOLDER, "decoder.bin",
                                                       "decoder.xml", "encoder.bin", "encoder.xml"]
        assert os.listdir(os.path.join(compiled.folder, tokenizer_openvino.COMPILED_SUBFOLDER))  # OpenVINO's blobs
        with caplog.at_level("WARNING"):
            again = tokenizer_openvino.CompiledFrameTokenizer(openvino.vae, compiled.threads)
        assert again.folder == compiled.folder and "converting" not in caplog.text
        # the key names the family: a causal tokenizer's graphs of the same module would be another entry
        assert tokenizer_openvino.CompiledTokenizer._key(openvino.vae, "v") != compiled._key(openvino.vae, "v")

    def test_a_model_openvino_cannot_take_runs_in_pytorch(self, monkeypatch, caplog):
        def refuse(self, vae, threads):
            raise RuntimeError("no conversion rule")

        monkeypatch.setattr(tokenizer_openvino.CompiledFrameTokenizer, "__init__", refuse)
        tok = tiny_tae_model().tokenizer.with_engine("openvino")
        with caplog.at_level("WARNING"):
            assert tok.compiled is None
        assert "no conversion rule" in caplog.text and "running it with PyTorch" in caplog.text
        x = torch.rand(1, 3, 2, 16, 24) * 2 - 1
        assert torch.equal(tok.encode(x), tok.with_engine("onednn").encode(x))


class TestStreamsAtStrideOne:
    @pytest.mark.parametrize("frames,height,width", [(1, 17, 33), (6, 40, 50), (9, 48, 64)])
    def test_odd_sizes_come_back_exact(self, frames, height, width):
        model = tiny_tae_model()
        video = np.random.default_rng(frames).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        result = model.encode(video, 24, quality=30)
        header = bitstream.unpack_header(result.bitstream)[0]
        assert header.temporal_stride == 1 and header.pad_frames == 0
        assert len(bitstream.unpack(result.bitstream).units) == frames  # one unit per frame
        decoded = model.decode(result.bitstream)
        assert np.array_equal(decoded.frames, result.reconstruction) and decoded.frames.shape == video.shape

    def test_a_stride_4_model_refuses_the_stream(self, real_frames):
        model = tiny_tae_model()
        data = model.encode(real_frames[:5], 25, quality=10).bitstream
        with pytest.raises(BitstreamError):
            build_tiny_model().decode(data)

    @pytest.mark.slow
    @pytest.mark.parametrize("engine", ["onednn", "openvino"])
    def test_decodes_in_another_process_to_the_encoder_reconstruction(self, real_frames, tmp_path, engine, request):
        if engine == "openvino" and not tokenizer_openvino.available():
            pytest.skip("openvino is not installed")
        cache = request.getfixturevalue("openvino_cache") if engine == "openvino" else None
        model = tiny_tae_model()
        model.save_pretrained(str(tmp_path / "model"))
        loaded = GLVC.from_pretrained(str(tmp_path / "model"), engine=engine)
        assert loaded.fingerprint == model.fingerprint
        assert (loaded.tokenizer.compiled is not None) == (engine == "openvino")
        result = loaded.encode(real_frames, 25, quality=40)
        (tmp_path / "clip.glvc").write_bytes(result.bitstream)
        out = tmp_path / "decoded.npy"
        # the same engine and thread count: openvino's compiled graphs round by the thread count
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        entries = sorted(os.listdir(os.path.join(cache, "openvino"))) if cache else None
        done = subprocess.run([sys.executable, "-m", "glvc", "decode", str(tmp_path / "clip.glvc"), str(out), "--model",
                               str(tmp_path / "model"), "--engine", engine, "--quiet"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        if cache:  # the other process compiled the graphs this one converted (no new entry)
            assert sorted(os.listdir(os.path.join(cache, "openvino"))) == entries
        decoded = np.load(out)
        assert decoded.shape == result.reconstruction.shape
        differ = decoded.astype(int) - result.reconstruction
        assert not differ.any(), (f"{np.count_nonzero(differ)} of {differ.size} values differ, by up to "
                                  f"{np.abs(differ).max()} levels; decoder's log: {done.stderr[-2000:]}")
