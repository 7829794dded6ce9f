"""Where the latent codec spends its bits: a per-position map of one latent frame.

The map comes from the entropy model's likelihoods (:meth:`LatentCodec.forward` in eval mode,
where both entropy models round instead of adding noise), run on the latent frame ``z`` and
the codec state that :meth:`LatentCodec.compress_frame` had for it (the decoded memory, float64
on the exact grid, here in float32: its values fit exactly). For one frame::

    y  (1, M, h/2, w/2): -log2 p(y_hat) summed over the M channels, each value spread evenly
                         over its 2x2 latent positions
    hz (1, K, h/4, w/4): -log2 p(hz_hat) summed over the K channels, spread over its 4x4
    map = both, (h, w) float32 bits; one latent position is 8x8 pixels of the picture

The coded payload differs from the map's sum by the framing (the hyper-latent's length varint,
the rANS coders' final states) and by what the float model leaves out of the exact coding path
(scales snapped to the scale table, 16-bit CDFs, the grid's rounding): a few percent on frames
of a few hundred bytes or more (tests/test_codec.py). Nothing here touches the entropy coders:
the bitstream is unchanged.
"""

from __future__ import annotations

import torch

from .model import CodecState, LatentCodec


@torch.no_grad()
def bits_map(codec: LatentCodec, z: torch.Tensor, state: CodecState, quality: int) -> torch.Tensor:
    """Bits spent at each latent position of the latent frame ``z`` (1, C, h, w), coded with
    ``state`` (as :meth:`~LatentCodec.compress_frame` got it) at ``quality``: (h, w) float32, >= 0."""
    if z.dim() != 4 or z.shape[0] != 1:
        raise ValueError(f"bits_map takes one latent frame (1, C, h, w), got {tuple(z.shape)}")
    if codec.training:
        raise ValueError("bits_map needs the codec in eval mode (rounding, not noise): call codec.eval()")
    memory = None if state.memory is None else state.memory.to(torch.float32)
    out = codec(z.detach().to("cpu", torch.float32), CodecState(memory, state.frames_since_refresh),
                torch.tensor([float(quality)]))
    y_bits = -torch.log2(out["likelihoods"]["y"][0]).sum(0)  # (h/2, w/2)
    hz_bits = -torch.log2(out["likelihoods"]["hz"][0]).sum(0)  # (h/4, w/4)
    h, w = z.shape[-2:]
    y_share = y_bits.repeat_interleave(2, 0).repeat_interleave(2, 1) / 4
    hz_share = hz_bits.repeat_interleave(4, 0).repeat_interleave(4, 1) / 16
    if y_share.shape != (h, w) or hz_share.shape != (h, w):
        raise ValueError(f"latent {w}x{h}: y covers {tuple(y_share.shape)}, the hyper-latent {tuple(hz_share.shape)}")
    return (y_share + hz_share).float()
