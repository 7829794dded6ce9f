"""The per-frame tokenizer family (TAEF2): architecture against the shipped weights, batches and odd
sizes, loading by family, and whole streams at temporal stride 1 decoded in another process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from glvc import bitstream
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

    def test_engines_give_the_same_latents(self):
        tok = tiny_tae_model().tokenizer
        x = torch.rand(2, 3, 2, 16, 16) * 2 - 1
        for engine in ("reference", "onednn", "openvino"):
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
    def test_decodes_in_another_process_to_the_encoder_reconstruction(self, real_frames, tmp_path):
        model = tiny_tae_model()
        model.save_pretrained(str(tmp_path / "model"))
        loaded = GLVC.from_pretrained(str(tmp_path / "model"))
        assert loaded.fingerprint == model.fingerprint
        result = loaded.encode(real_frames, 25, quality=40)
        (tmp_path / "clip.glvc").write_bytes(result.bitstream)
        out = tmp_path / "decoded.npy"
        done = subprocess.run([sys.executable, "-m", "glvc", "decode", str(tmp_path / "clip.glvc"), str(out), "--model",
                               str(tmp_path / "model"), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert np.array_equal(np.load(out), result.reconstruction)
