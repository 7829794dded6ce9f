"""The app's pictures, each made from one real encode of the uploaded clip (no gradio here).

::

    service.encode_clip --(frames, GLVC's and x265's decoded frames, the kept latents)--> Inspection
      per_frame_chart(ins)        PSNR per frame, bytes per latent frame; GLVC and x265 at the same size
      frame_pair(ins, i, who)     (original, decoded) frame i for a before/after slider, native size
      bits_figure(ins, codec, k)  bits per latent position of latent frame k over the picture, beside the
                                  latent projected to RGB (LatentCodec.bits_map, on the encoder's own state)
      rd_figure(points)           bpp against PSNR of an RD sweep (service.rd_sweep)

Figures are matplotlib ``Figure`` objects made without pyplot (no global state: concurrent requests
may draw at once). Frames are (T, H, W, 3) uint8 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from matplotlib.figure import Figure

from .pipeline import KeptLatents

GLVC_COLOR, X265_COLOR = "#d6336c", "#1c7ed6"
LATENT_PROJECTION = ("the latent's 16 channels projected to RGB by a PCA fitted once over all latent "
                     "positions of this clip (its 3 main components, each stretched between its 1st and "
                     "99th percentile), so colours mean the same in every latent frame")


@dataclass
class Inspection:
    """What the pictures of one encode need, kept for the page's session (CPU, uint8 / float32)."""

    model_key: str
    fps: Fraction
    original: np.ndarray = field(repr=False)  # (T, H, W, 3) uint8, the coded frames
    glvc: np.ndarray = field(repr=False)  # (T, H, W, 3) uint8, bit-identical to decoding the .glvc
    x265: np.ndarray | None = field(repr=False)  # (T, H, W, 3) uint8, x265 at GLVC's size, or None
    latents: KeptLatents = field(repr=False)  # latents and codec states of the encode
    glvc_bytes: int
    x265_bytes: int | None
    x265_packet_bytes: list[int] | None  # one per frame (low delay, no B-frames)
    glvc_psnr: np.ndarray = field(repr=False)  # (T,) dB
    x265_psnr: np.ndarray | None = field(repr=False)
    seconds_per_rate: dict[str, float]  # this encode's cost, the basis of the RD sweep's estimate

    @property
    def num_frames(self) -> int:
        return int(self.original.shape[0])

    @property
    def num_latents(self) -> int:
        return len(self.latents.frames)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Pixel frames [start, stop) of each latent frame."""
        return latent_spans([frame.frames for frame in self.latents.frames])

    def latent_of_frame(self, index: int) -> int:
        return next(k for k, (start, stop) in enumerate(self.spans) if start <= index < stop)


def make_inspection(model_key: str, fps, original: np.ndarray, glvc: np.ndarray, latents: KeptLatents,
                    glvc_bytes: int, x265=None, seconds_per_rate: dict[str, float] | None = None,
                    glvc_psnr=None, x265_psnr=None) -> Inspection:
    """Collect an encode's data for the pictures (``x265``: a :class:`~glvc.baselines.BaselineResult` or None;
    ``*_psnr``: the per-frame PSNR the scores already hold, computed here when not given)."""
    for frame in latents.frames:  # off the accelerator: the session keeps them
        frame.latent = frame.latent.detach().to("cpu", torch.float32)
    packets = None
    if x265 is not None and len(x265.params.get("packet_bytes", [])) == original.shape[0]:
        packets = [int(n) for n in x265.params["packet_bytes"]]
    return Inspection(
        model_key=model_key, fps=Fraction(fps), original=original, glvc=glvc, x265=None if x265 is None else x265.decoded,
        latents=latents, glvc_bytes=int(glvc_bytes), x265_bytes=None if x265 is None else int(x265.bitstream_bytes),
        x265_packet_bytes=packets, glvc_psnr=psnr_per_frame(original, glvc) if glvc_psnr is None else np.asarray(glvc_psnr),
        x265_psnr=None if x265 is None else psnr_per_frame(original, x265.decoded) if x265_psnr is None else np.asarray(x265_psnr),
        seconds_per_rate=dict(seconds_per_rate or {}),
    )


def psnr_per_frame(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """PSNR-RGB of each frame (T,) in dB, as the scores table computes it (:func:`glvc.metrics.psnr_rgb`)."""
    from .metrics import psnr_rgb

    return np.asarray(psnr_rgb(original, decoded).per_frame)


def latent_spans(frames_per_latent: list[int]) -> list[tuple[int, int]]:
    """[start, stop) pixel frames of each latent frame, from the real frames each holds."""
    stops = np.cumsum(frames_per_latent).tolist()
    return [(stop - n, stop) for n, stop in zip(frames_per_latent, stops)]


def bytes_per_latent(packet_bytes: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """A classic codec's per-frame packet sizes summed over the pixel frames of each latent frame."""
    return [int(sum(packet_bytes[start:stop])) for start, stop in spans]


# ---------------------------------------------------------------------------------------------
# per-frame chart


def per_frame_chart(ins: Inspection) -> Figure:
    """PSNR per frame (top) and bytes per latent frame (bottom, one step over the frames it holds)."""
    fig = Figure(figsize=(9, 4.6), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    t = np.arange(ins.num_frames)
    top.plot(t, ins.glvc_psnr, "o-", color=GLVC_COLOR, ms=3, label=f"GLVC q{ins.latents.quality} ({ins.glvc_bytes:,} B)")
    if ins.x265_psnr is not None:
        top.plot(t, ins.x265_psnr, "s-", color=X265_COLOR, ms=3, label=f"x265 same size ({ins.x265_bytes:,} B)")
    top.set_ylabel("PSNR-RGB (dB)")
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize=8)
    spans = ins.spans
    edges = [spans[0][0] - 0.5] + [stop - 0.5 for _, stop in spans]  # a step over the frames of each latent frame
    bottom.stairs([frame.payload_bytes for frame in ins.latents.frames], edges, fill=True, alpha=0.5, color=GLVC_COLOR, label="GLVC")
    if ins.x265_packet_bytes is not None:
        bottom.stairs(bytes_per_latent(ins.x265_packet_bytes, spans), edges, color=X265_COLOR, lw=2, label="x265 (its frames' packets)")
    for edge in edges[1:-1]:
        bottom.axvline(edge, color="0.8", lw=0.5)
    bottom.legend(loc="best", fontsize=8)
    bottom.set_ylabel("bytes per\nlatent frame")
    bottom.set_xlabel("frame (each step: the frames of one latent frame)")
    bottom.grid(alpha=0.3, axis="y")
    bottom.set_ylim(bottom=0)
    return fig


# ---------------------------------------------------------------------------------------------
# frame inspector


def frame_pair(ins: Inspection, index: int, who: str = "glvc") -> tuple[np.ndarray, np.ndarray] | None:
    """(original, decoded) frame ``index`` (H, W, 3) uint8 at native size; None without x265."""
    decoded = {"glvc": ins.glvc, "x265": ins.x265}[who]
    if decoded is None:
        return None
    index = int(np.clip(index, 0, ins.num_frames - 1))
    return ins.original[index], decoded[index]


def frame_caption(ins: Inspection, index: int) -> str:
    index = int(np.clip(index, 0, ins.num_frames - 1))
    line = f"Frame {index} of {ins.num_frames} (latent frame {ins.latent_of_frame(index)}): GLVC {ins.glvc_psnr[index]:.2f} dB"
    if ins.x265_psnr is not None:
        line += f", x265 {ins.x265_psnr[index]:.2f} dB"
    return line + ". Drag the divider; scroll to zoom, the full-screen button shows native pixels."


# ---------------------------------------------------------------------------------------------
# where the bits go


def latent_projection(latents: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed PCA of the clip's latents (1, C, h, w): (mean (C,), basis (C, 3), low (3,), high (3,))."""
    x = torch.cat([z[0].flatten(1).T for z in latents]).double().numpy()  # (positions, C)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:3].T
    basis *= np.sign(basis[np.abs(basis).argmax(0), range(3)])  # a fixed sign: the largest loading positive
    proj = (x - mean) @ basis
    return mean, basis, np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)


def latent_rgb(z: torch.Tensor, projection) -> np.ndarray:
    """One latent frame (1, C, h, w) as an (h, w, 3) float image in [0, 1]."""
    mean, basis, low, high = projection
    c, h, w = z.shape[1:]
    proj = (z[0].flatten(1).T.double().numpy() - mean) @ basis
    return np.clip((proj - low) / np.maximum(high - low, 1e-9), 0, 1).reshape(h, w, 3)


def bits_figure(ins: Inspection, bits: np.ndarray, index: int, projection) -> Figure:
    """Latent frame ``index``: its bits per latent position over its first picture (left), the latent as RGB (right)."""
    frame = ins.latents.frames[index]
    start, stop = ins.spans[index]
    h, w = ins.original.shape[1:3]
    hl, wl = bits.shape
    stride = ins.latents.analysis.geometry.padded_height // hl  # pixels per latent position (8)
    picture = ins.original[start].astype(np.float32).mean(2) / 255.0
    fig = Figure(figsize=(9, 3.4), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    extent = (0, wl * stride, hl * stride, 0)  # the padded latent grid over the picture
    left.imshow(picture, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    heat = left.imshow(bits, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest", vmin=0)
    left.set_xlim(0, w)
    left.set_ylim(h, 0)
    fig.colorbar(heat, ax=left, shrink=0.85, label=f"bits per latent position ({stride}x{stride} px)")
    kind = "intra" if frame.state.memory is None else "inter"
    frames = f"frame {start}" if stop - start == 1 else f"frames {start}-{stop - 1}"
    left.set_title(f"latent frame {index} ({kind}, {frames}): {frame.payload_bytes:,} B coded, "
                   f"{bits.sum() / 8:,.0f} B in the map", fontsize=9)
    right.imshow(latent_rgb(frame.latent, projection), extent=extent, interpolation="nearest")
    right.set_xlim(0, w)
    right.set_ylim(h, 0)
    right.set_title(f"the latent ({frame.latent.shape[1]} channels, {wl}x{hl}) as RGB", fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


# ---------------------------------------------------------------------------------------------
# RD sweep


def rd_figure(points: list[dict]) -> Figure:
    """bpp against PSNR for rows ``{"codec": "GLVC" | "x265", "bpp", "psnr", "label"}`` of a sweep."""
    fig = Figure(figsize=(6.5, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for codec, color, marker in (("GLVC", GLVC_COLOR, "o"), ("x265", X265_COLOR, "s")):
        rows = sorted((p for p in points if p["codec"] == codec), key=lambda p: p["bpp"])
        if not rows:
            continue
        ax.plot([p["bpp"] for p in rows], [p["psnr"] for p in rows], marker + "-", color=color, label=codec)
        for i, p in enumerate(rows):
            if i and (p["bpp"], p["psnr"]) == (rows[i - 1]["bpp"], rows[i - 1]["psnr"]):
                continue  # the same stream again (x265's highest CRF for several small targets)
            ax.annotate(p["label"], (p["bpp"], p["psnr"]), textcoords="offset points", xytext=(4, -10), fontsize=7, color=color)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_title("this clip: GLVC at several quality indices, x265 at the same sizes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
