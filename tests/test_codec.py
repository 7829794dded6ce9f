"""The latent codec: exact encoder/decoder agreement, rate control, persistence, training forward."""

from __future__ import annotations

import os

import pytest
import torch

from glvc.bitstream import BitstreamError
from glvc.codec import LatentCodec

from .conftest import TINY_CODEC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


class TestHyperGain:
    """``hyper_gain``: a per-anchor gain on the hyper-latent, so its cost follows the quality index."""

    def test_unit_gain_codes_exactly_like_the_model_without_it(self, codec, tmp_path):
        codec.save_pretrained(str(tmp_path))
        gained = LatentCodec.from_pretrained(str(tmp_path), config_overrides={"hyper_gain": True})
        assert gained.config.hyper_gain and torch.equal(gained.log_hyper_gain, torch.zeros(4, TINY_CODEC["hyper_channels"]))
        z = torch.randn(1, 16, 8, 12)
        assert gained.compress_frame(z, gained.initial_state(), 20)[0] == codec.compress_frame(z, codec.initial_state(), 20)[0]

    def test_a_small_gain_removes_the_side_information_and_still_decodes(self, codec, tmp_path):
        codec.save_pretrained(str(tmp_path))
        gained = LatentCodec.from_pretrained(str(tmp_path), config_overrides={"hyper_gain": True})
        torch.manual_seed(3)
        z1, z2 = torch.randn(1, 16, 16, 16) * 3, torch.randn(1, 16, 16, 16) * 3

        def hyper_string(z, quality):
            payload = gained.compress_frame(z, gained.initial_state(), quality)[0]
            return payload[1 : 1 + payload[0]]  # after its length (a one-byte varint at this size)

        with torch.no_grad():
            gained.log_hyper_gain[:] = 5.0  # a large gain: (this untrained) hyper-latent's values span many bins
        assert hyper_string(z1, 0) != hyper_string(z2, 0)
        with torch.no_grad():
            gained.log_hyper_gain[0] = -8.0  # quality 0 only: every symbol rounds to the median
        assert hyper_string(z1, 0) == hyper_string(z2, 0)
        assert hyper_string(z1, 63) != hyper_string(z2, 63)
        payload, z_enc, _ = gained.compress_frame(z1, gained.initial_state(), 0)
        z_dec, _ = gained.decompress_frame(payload, gained.initial_state(), 0, (16, 16))
        assert torch.equal(z_enc, z_dec)

    def test_gaussian_hyper_prior_round_trips_and_follows_its_scale(self, codec, tmp_path):
        """``hyper_prior="gaussian"``: fine-tuned from a factorized model (its EntropyBottleneck dropped),
        the hyper-latent's cost follows the per-anchor scale, and every stream decodes to the encoder's latents."""
        codec.save_pretrained(str(tmp_path))
        gaussian = LatentCodec.from_pretrained(str(tmp_path), config_overrides={"hyper_gain": True, "hyper_prior": "gaussian"})
        assert gaussian.entropy_bottleneck is None and gaussian.entropy_coders_ready
        torch.manual_seed(4)
        z = torch.randn(1, 16, 16, 16) * 3

        def hyper_bytes(quality):
            payload = gaussian.compress_frame(z, gaussian.initial_state(), quality)[0]
            return payload[0]  # its length (a one-byte varint at this size)

        with torch.no_grad():
            gaussian.log_hyper_gain[:] = 2.0  # values spread over several bins
            gaussian.log_hyper_scale[:] = 2.0  # a scale that fits them
        wide = hyper_bytes(0)
        with torch.no_grad():
            gaussian.log_hyper_scale[0] = -3.0  # quality 0: a density far too narrow, each symbol is costly
        assert hyper_bytes(0) > wide
        with torch.no_grad():
            gaussian.log_hyper_gain[0] = -8.0  # every symbol is 0, and the narrow density codes it almost free
        assert hyper_bytes(0) < wide / 4
        state_enc = state_dec = gaussian.initial_state()
        for quality in (0, 31, 63):
            payload, z_enc, state_enc = gaussian.compress_frame(z, state_enc, quality)
            z_dec, state_dec = gaussian.decompress_frame(payload, state_dec, quality, (16, 16))
            assert torch.equal(z_enc, z_dec)
        again = tmp_path / "again"
        gaussian.save_pretrained(str(again))
        reloaded = LatentCodec.from_pretrained(str(again))
        assert reloaded.compress_frame(z, reloaded.initial_state(), 5)[0] == gaussian.compress_frame(z, gaussian.initial_state(), 5)[0]

    def test_gaussian_hyper_prior_needs_the_gain(self):
        with pytest.raises(ValueError, match="needs hyper_gain"):
            LatentCodec(**TINY_CODEC, hyper_prior="gaussian")

    def test_overrides_that_do_not_fit_the_weights_are_refused(self, codec, tmp_path):
        codec.save_pretrained(str(tmp_path))
        with pytest.raises(ValueError, match="do not fit"):
            LatentCodec.from_pretrained(str(tmp_path), config_overrides={"hyper_channels": TINY_CODEC["hyper_channels"] * 2})


class TestBitsMap:
    """LatentCodec.bits_map: where a frame's bits go, on the state the encoder coded it with."""

    @pytest.fixture(scope="class")
    def coded(self):
        """The bundled model on real latents: frames of a few hundred bytes, where the map must hold."""
        from glvc.defaults import default_model
        from glvc.pipeline import GLVC
        from glvc.video_io import read_video

        model = GLVC.from_pretrained(default_model())
        video = read_video(os.path.join(ROOT, "examples", "bikes_2s.mp4"), max_height=128, max_seconds=0.36)  # 9 frames
        return model, model.encode(video.frames, video.fps, quality=32, reconstruct=False, keep_latents=True).latents

    def test_map_sums_to_the_payload(self, coded):
        model, kept = coded
        for frame in kept.frames:
            bits = model.codec.bits_map(frame.latent, frame.state, kept.quality)
            h, w = frame.latent.shape[-2:]
            assert bits.shape == (h, w) and bits.min() >= 0
            # the payload also holds the framing (length varint, rANS final states: ~9 bytes) and the
            # exact path's scale-table snapping; measured 94.5-96% on bikes at 128p (glvc/codec/analysis.py)
            assert 0.90 <= bits.sum().item() / (8 * frame.payload_bytes) <= 1.02, (bits.sum().item(), frame.payload_bytes)

    def test_map_follows_the_rate_and_the_state(self, coded):
        model, kept = coded
        frame = kept.frames[1]
        low, high = (model.codec.bits_map(frame.latent, frame.state, q).sum().item() for q in (0, 63))
        assert low < high
        intra = model.codec.bits_map(frame.latent, model.codec.initial_state(), kept.quality).sum().item()
        assert intra != pytest.approx(model.codec.bits_map(frame.latent, frame.state, kept.quality).sum().item(), rel=1e-3)

    def test_hyper_latent_share_is_spread_over_its_footprint(self, codec):
        from glvc.codec.analysis import bits_map

        torch.manual_seed(3)
        z = torch.randn(1, 16, 8, 12)
        out = codec(z, codec.initial_state(), torch.tensor([40.0]))
        total = -(torch.log2(out["likelihoods"]["y"]).sum() + torch.log2(out["likelihoods"]["hz"]).sum())
        bits = bits_map(codec, z, codec.initial_state(), 40)
        assert bits.shape == (8, 12) and bits.sum().item() == pytest.approx(total.item(), rel=1e-5)
        assert bits.sum().item() == pytest.approx(out["bits"].item(), rel=1e-5)
        with pytest.raises(ValueError, match=r"one latent frame \(1, C, h, w\), got \(2, 16, 8, 12\)"):
            bits_map(codec, z.repeat(2, 1, 1, 1), codec.initial_state(), 40)


class TestExactRunner:
    """The exact path's convolutions, tap by tap on channels-last rows (glvc/codec/model.py ExactRunner),
    give the bits of ``F.conv2d`` in float64 on (1, C, h, w) (scripts/exact_conv_cost.py's reference,
    the formulation the golden streams were made with): both are exact, only the order of the sums differs."""

    @staticmethod
    def _grid_input(channels: int, h: int, w: int, seed: int) -> torch.Tensor:
        from glvc.codec.model import ACT_LIMIT, to_grid

        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, channels, h, w, generator=g, dtype=torch.float64) * 40
        x[0, 0, 0, :3] = torch.tensor([ACT_LIMIT, -ACT_LIMIT, 2.0**-16])  # the grid's extremes and its step
        return to_grid(x)

    @pytest.mark.parametrize("kernel,stride,padding,size", [(3, 1, 1, (7, 10)), (3, 2, 1, (8, 12)), (1, 1, 0, (5, 6)),
                                                            (5, 1, 2, (6, 9)), (3, 2, 1, (7, 9)), (2, 2, 0, (6, 8)),
                                                            ((3, 1), (2, 1), (1, 0), (8, 9)), ((1, 3), (1, 2), (0, 1), (5, 9))])
    def test_a_convolution_gives_the_bits_of_conv2d(self, kernel, stride, padding, size):
        from glvc.codec.model import ExactRunner
        from scripts.exact_conv_cost import ChannelsFirstRunner

        torch.manual_seed(0)
        block = torch.nn.Sequential(torch.nn.Conv2d(12, 20, kernel, stride=stride, padding=padding), torch.nn.LeakyReLU(0.1))
        x = self._grid_input(12, *size, seed=size[1])
        got, want = ExactRunner().run(block, x), ChannelsFirstRunner().run(block, x)
        assert got.shape == want.shape and got.dtype == torch.float64
        assert torch.equal(got, want)

    def test_the_codec_blocks_give_the_bits_of_conv2d(self, codec):
        """Residual blocks, sub-pixel upsampling (PixelShuffle on rows), 1x1 and strided layers."""
        from glvc.codec.model import ExactRunner
        from scripts.exact_conv_cost import ChannelsFirstRunner

        n, m, k, cm = (codec.config.channels, codec.config.y_channels, codec.config.hyper_channels, codec.config.memory_channels)
        for name, channels, (h, w) in [("context_net", cm, (8, 12)), ("context_down", n, (8, 12)), ("hyper_synthesis", k, (2, 3)),
                                       ("entropy_parameters", 2 * n, (4, 6)), ("synthesis_up", m, (4, 6)),
                                       ("synthesis", 2 * n, (8, 12)), ("memory_update", cm + n, (8, 12))]:
            x = self._grid_input(channels, h, w, seed=channels)
            got, want = ExactRunner().run(getattr(codec, name), x), ChannelsFirstRunner().run(getattr(codec, name), x)
            assert torch.equal(got, want), name

    def test_what_it_cannot_run_exactly_is_refused(self):
        from glvc.codec.model import ExactRunner

        x = self._grid_input(4, 4, 4, seed=0)
        with pytest.raises(TypeError, match="groups 1, dilation 1"):
            ExactRunner().run(torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), x)
        with pytest.raises(TypeError, match="no exact form for Sigmoid"):
            ExactRunner().run(torch.nn.Sigmoid(), x)
        with pytest.raises(ValueError, match=r"one frame \(1, C, h, w\), got \(2, 4, 4, 4\)"):
            ExactRunner().run(torch.nn.Conv2d(4, 4, 3, padding=1), x.expand(2, -1, -1, -1))
