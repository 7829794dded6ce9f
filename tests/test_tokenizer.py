"""The tokenizer wrapper: streams equal diffusers' whole-clip encode/decode; input checks; Hub-style loading."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from glvc.tokenizer import Tokenizer

from .conftest import TINY_TOKENIZER

PLAIN_8X = dict(base_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


@pytest.mark.parametrize("config", [TINY_TOKENIZER, PLAIN_8X], ids=["patch2", "plain"])
def test_streams_match_diffusers(config):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**config).eval()
    tok = Tokenizer(vae)
    x = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    with torch.no_grad():
        reference = vae.encode(x).latent_dist.mode()
        latents = tok.encode(x)
        assert latents.shape == (1, 16, 3, 4, 6)
        assert torch.allclose(tok.denormalize(latents), reference, atol=1e-5)
        assert torch.allclose(tok.decode(latents), vae.decode(reference).sample, atol=1e-4)


def test_rejects_bad_shapes():
    tok = Tokenizer(AutoencoderKLWan(**TINY_TOKENIZER))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tok.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="stride"):
        tok.encode(torch.zeros(1, 3, 5, 30, 32))
    stream = tok.encoder_stream()
    with pytest.raises(ValueError, match="\\(B, 3, 1, H, W\\)"):
        stream.push(torch.zeros(1, 3, 4, 32, 32))


def test_needs_4x_temporal_downsampling():
    with pytest.raises(ValueError, match="temporal"):
        Tokenizer(AutoencoderKLWan(**{**PLAIN_8X, "temperal_downsample": [False, False, True]}))


def test_from_pretrained_local_folder(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_TOKENIZER)
    vae.save_pretrained(tmp_path / "vae")
    tok = Tokenizer.from_pretrained(str(tmp_path), subfolder="vae")
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(tok.encode(x), Tokenizer(vae.eval()).encode(x))


class TestEngines:
    """``onednn`` (every 3-D convolution through oneDNN) against ``reference`` (diffusers' own dispatch)."""

    @pytest.mark.parametrize("config", [TINY_TOKENIZER, PLAIN_8X], ids=["patch2", "plain"])
    def test_onednn_matches_reference_within_rounding(self, config):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**config).eval()
        reference, onednn = Tokenizer(vae, engine="reference"), Tokenizer(vae, engine="onednn")
        x = torch.rand(1, 3, 9, 32, 48) * 2 - 1
        z_ref, z_new = reference.encode(x), onednn.encode(x)
        assert torch.allclose(z_ref, z_new, atol=1e-4)
        assert torch.allclose(reference.decode(z_ref), onednn.decode(z_ref), atol=1e-4)

    def test_onednn_is_repeatable(self):
        torch.manual_seed(0)
        tok = Tokenizer(AutoencoderKLWan(**TINY_TOKENIZER).eval(), engine="onednn")
        x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
        z = tok.encode(x)
        assert torch.equal(z, tok.encode(x)) and torch.equal(tok.decode(z), tok.decode(z))

    def test_onednn_runs_the_small_convolutions_in_onednn(self):
        """The reason for the engine: small causal chunks would go to PyTorch's slow_conv3d."""
        from torch.profiler import ProfilerActivity, profile

        torch.manual_seed(0)
        vae = AutoencoderKLWan(**TINY_TOKENIZER).eval()
        x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
        kernels = {}
        for engine in ("reference", "onednn"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                Tokenizer(vae, engine=engine).encode(x)
            kernels[engine] = {e.key for e in prof.key_averages()}
        assert "aten::slow_conv3d_forward" in kernels["reference"]
        assert "aten::slow_conv3d_forward" not in kernels["onednn"] and "aten::mkldnn_convolution" in kernels["onednn"]

    def test_default_and_choice(self, monkeypatch):
        from glvc.tokenizer import ENGINE_ENV, default_engine

        vae = AutoencoderKLWan(**TINY_TOKENIZER)
        monkeypatch.delenv(ENGINE_ENV, raising=False)
        from glvc import tokenizer_openvino

        without_openvino = "onednn" if torch.backends.mkldnn.is_available() else "reference"
        assert default_engine() == ("openvino" if tokenizer_openvino.available() else without_openvino)
        monkeypatch.setattr(tokenizer_openvino, "available", lambda: False)
        assert default_engine() == without_openvino
        monkeypatch.setenv(ENGINE_ENV, "reference")
        assert Tokenizer(vae).engine == "reference"
        assert Tokenizer(vae).with_engine("onednn").vae is vae
        monkeypatch.setenv(ENGINE_ENV, "fast")
        with pytest.raises(ValueError, match="GLVC_TOKENIZER_ENGINE='fast'"):
            Tokenizer(vae)
        with pytest.raises(ValueError, match="engine 'bf16'"):
            Tokenizer(vae, engine="bf16")
