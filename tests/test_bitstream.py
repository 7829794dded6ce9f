"""The .glvc container: round trip, limits, and every kind of malformed input -> BitstreamError."""

from __future__ import annotations

import struct
import time
import zlib
from fractions import Fraction

import pytest

from glvc import bitstream
from glvc.bitstream import BitstreamError, FrameUnit, Header


def make_stream(frames: int = 6, payload_size: int = 20) -> tuple[Header, list[FrameUnit], bytes]:
    header = Header(
        fingerprint=bytes(range(16)),
        width=33,
        height=17,
        frames=frames,
        fps=Fraction(30000, 1001),
        quality=40,
        refresh_period=8,
        pad_right=31,
        pad_bottom=15,
        pad_frames=(4 - (frames - 1) % 4) % 4,
    )
    units = [
        FrameUnit(kind=bitstream.KIND_INTRA if i == 0 else bitstream.KIND_INTER, payload=bytes([i]) * payload_size)
        for i in range(bitstream.latent_frame_count(frames))
    ]
    return header, units, bitstream.pack(header, units)


def with_crc(body: bytes) -> bytes:
    """Re-seal a modified stream so the checks behind the CRC are reached."""
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


class TestRoundTrip:
    def test_pack_unpack(self):
        header, units, data = make_stream()
        container = bitstream.unpack(data)
        assert container.header == header
        assert container.units == units
        assert data[:4] == b"GLVC" and data[4] == bitstream.VERSION

    @pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63])
    def test_varint(self, value):
        encoded = bitstream.write_varint(value)
        reader = bitstream._Reader(encoded, len(encoded))
        assert reader.varint("v") == value and reader.left() == 0

    @pytest.mark.parametrize("frames,latent", [(1, 1), (2, 2), (5, 2), (6, 3), (9, 3), (10, 4)])
    def test_latent_frame_count(self, frames, latent):
        assert bitstream.latent_frame_count(frames) == latent

    @pytest.mark.parametrize(
        "frames,segment,latent,pad",
        [(9, 3, 3, 0), (10, 3, 4, 0), (11, 3, 5, 3), (18, 3, 6, 0), (8, 3, 3, 1), (4, 1, 4, 0), (5, 2, 2, 0), (6, 2, 3, 0), (7, 2, 4, 3)],
    )
    def test_segmented_counts(self, frames, segment, latent, pad):
        assert bitstream.latent_frame_count(frames, segment) == latent
        assert bitstream.pad_frame_count(frames, segment) == pad


class TestTemporalStride:
    """Flag bit 0: a per-frame tokenizer (temporal stride 1), one latent frame per pixel frame."""

    @pytest.mark.parametrize("frames,segment,latent", [(1, 0, 1), (7, 0, 7), (10, 3, 10), (10, 4, 10)])
    def test_counts_at_stride_1(self, frames, segment, latent):
        assert bitstream.latent_frame_count(frames, segment, stride=1) == latent
        assert bitstream.pad_frame_count(frames, segment, stride=1) == 0
        assert bitstream.segment_frames(3, stride=1) == 3

    def test_round_trip_sets_the_flag(self):
        header = Header(fingerprint=bytes(16), width=33, height=17, frames=7, fps=Fraction(25), quality=3,
                        temporal_stride=1)
        units = [FrameUnit(kind=bitstream.KIND_INTRA if i == 0 else bitstream.KIND_INTER, payload=b"x") for i in range(7)]
        data = bitstream.pack(header, units)
        assert data[5] == bitstream.FLAG_FRAME_LATENTS
        container = bitstream.unpack(data)
        assert container.header == header and container.header.temporal_stride == 1
        assert len(container.units) == 7

    def test_stride_4_streams_keep_flags_zero(self):
        _, _, data = make_stream()
        assert data[5] == 0 and bitstream.unpack(data).header.temporal_stride == 4

    @pytest.mark.parametrize("flags", [0x02, 0x80, 0x03])
    def test_unknown_flag_bits_are_refused(self, flags):
        _, _, data = make_stream()
        body = bytearray(data[:-4])
        body[5] = flags
        with pytest.raises(BitstreamError, match="flags byte"):
            bitstream.unpack(with_crc(bytes(body)))

    def test_flag_flipped_on_a_stride_4_stream_is_refused(self):
        _, _, data = make_stream(frames=6)  # 3 units at stride 4; stride 1 would need 6
        body = bytearray(data[:-4])
        body[5] = bitstream.FLAG_FRAME_LATENTS
        with pytest.raises(BitstreamError, match="pad frames|unit count"):
            bitstream.unpack(with_crc(bytes(body)))

    def test_a_stride_the_format_cannot_hold(self):
        header = Header(fingerprint=bytes(16), width=8, height=8, frames=3, fps=Fraction(25), quality=0, temporal_stride=2)
        with pytest.raises(BitstreamError, match="temporal stride is 2"):
            header.validate()


class TestMalformed:
    def test_every_truncation_fails_cleanly_and_fast(self):
        _, _, data = make_stream()
        start = time.perf_counter()
        for length in range(len(data)):
            with pytest.raises(BitstreamError):
                bitstream.unpack(data[:length])
        assert time.perf_counter() - start < 2.0

    def test_every_single_bit_flip_is_caught(self):
        _, _, data = make_stream(frames=2, payload_size=3)
        for position in range(len(data) * 8):
            corrupted = bytearray(data)
            corrupted[position // 8] ^= 1 << (position % 8)
            with pytest.raises(BitstreamError):
                bitstream.unpack(bytes(corrupted))

    def test_wrong_magic(self):
        _, _, data = make_stream()
        with pytest.raises(BitstreamError, match="magic"):
            bitstream.unpack(b"MP4 " + data[4:])

    def test_wrong_version(self):
        _, _, data = make_stream()
        body = bytearray(data[:-4])
        body[4] = 99
        with pytest.raises(BitstreamError, match="version 99"):
            bitstream.unpack(with_crc(bytes(body)))

    def test_huge_length_field_does_not_allocate(self):
        header, units, _ = make_stream(frames=1)
        body = bitstream.pack(header, units)[:-4]
        # replace the single unit's payload length (1 byte varint: 20) by 2**60
        prefix = body[: -(len(units[0].payload) + 1)]
        forged = prefix + bitstream.write_varint(2**60) + units[0].payload
        with pytest.raises(BitstreamError, match="truncated"):
            bitstream.unpack(with_crc(forged))

    def test_absurd_dimensions(self):
        header, units, _ = make_stream()
        for field, value in (("width", 100_000), ("height", 0), ("frames", 10**9), ("quality", 200)):
            bad = Header(**{**header.__dict__, field: value})
            with pytest.raises(BitstreamError, match=field):
                bad.validate()

    def test_trailing_garbage(self):
        _, _, data = make_stream()
        with pytest.raises(BitstreamError, match="unexpected bytes"):
            bitstream.unpack(with_crc(data[:-4] + b"\x00\x01"))

    def test_first_unit_must_be_intra(self):
        header, units, _ = make_stream()
        units[0] = FrameUnit(kind=bitstream.KIND_INTER, payload=units[0].payload)
        with pytest.raises(BitstreamError, match="intra"):
            bitstream.unpack(bitstream.pack(header, units))

    def test_not_bytes(self):
        with pytest.raises(BitstreamError):
            bitstream.unpack("GLVC")  # type: ignore[arg-type]
