"""The latent codec: exact encoder/decoder agreement, rate control, persistence, training forward."""

from __future__ import annotations

import pytest
import torch

from glvc.bitstream import BitstreamError
from glvc.codec import LatentCodec

from .conftest import TINY_CODEC


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    model = LatentCodec(**TINY_CODEC).eval()
    model.prepare_entropy_coders()
    return model


def test_decoder_reproduces_encoder_over_a_sequence(codec):
    torch.manual_seed(1)
    z = torch.randn(1, 16, 4, 8, 12)
    enc, dec = codec.initial_state(), codec.initial_state()
    for t in range(z.shape[2]):
        payload, z_enc, enc = codec.compress_frame(z[:, :, t], enc, 40)
        z_dec, dec = codec.decompress_frame(payload, dec, 40, (8, 12))
        assert torch.equal(z_enc, z_dec)
        assert torch.equal(enc.memory, dec.memory)


def test_quality_scale_is_monotone_and_interpolates(codec):
    scales = [codec.quantization_scale(q).mean().item() for q in range(0, 64, 7)]
    assert scales == sorted(scales)
    anchors = codec.log_quant_scale.exp()
    assert torch.allclose(codec.quantization_scale(0)[0, :, 0, 0], anchors[0])
    assert torch.allclose(codec.quantization_scale(63)[0, :, 0, 0], anchors[-1])
    assert codec.rd_lambda(0).item() == pytest.approx(codec.config.anchor_lambdas[0])
    assert codec.rd_lambda(63).item() == pytest.approx(codec.config.anchor_lambdas[-1])


def test_rejects_bad_payloads(codec):
    with pytest.raises(BitstreamError):
        codec.decompress_frame(b"\x05ab", codec.initial_state(), 10, (8, 12))
    with pytest.raises(BitstreamError):
        codec.decompress_frame(b"\x00", codec.initial_state(), 10, (8, 12))
    with pytest.raises(BitstreamError, match="multiple"):
        codec.decompress_frame(b"\x00\x00", codec.initial_state(), 10, (9, 12))


def test_save_and_load_give_identical_streams(codec, tmp_path):
    codec.save_pretrained(str(tmp_path))
    again = LatentCodec.from_pretrained(str(tmp_path))
    z = torch.randn(1, 16, 8, 8)
    assert codec.compress_frame(z, codec.initial_state(), 20)[0] == again.compress_frame(z, again.initial_state(), 20)[0]


def test_training_forward_gives_gradients_and_bits():
    torch.manual_seed(0)
    model = LatentCodec(**TINY_CODEC).train()
    z = torch.randn(2, 16, 8, 8)
    out = model(z, model.initial_state(), torch.tensor([0.0, 63.0]))
    loss = out["bits"].mean() + 10 * (out["z_hat"] - z).pow(2).mean()
    loss.backward()
    assert out["bits"].shape == (2,) and (out["bits"] > 0).all()
    assert model.log_quant_scale.grad is not None and model.analysis[0].weight.grad is not None
    out2 = model(z, out["state"], torch.tensor([10.0, 10.0]))
    assert out2["state"].frames_since_refresh == 2
