"""Fuzzed .glvc streams against the parser, the decoder and ``python -m glvc info``.

The fast version of ``scripts/fuzz.py`` (same strategies and checks, derandomized hypothesis,
a few hundred examples from the seed corpus in tests/fuzz_corpus); the long run is
``python scripts/fuzz.py --examples 10000`` (results in docs/robustness.md). Plus the guard
against compressai's unchecked rANS decoder (glvc/codec/model.py: rans_input), which a crafted
stream could otherwise make read past its buffer and crash the process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glvc import bitstream  # noqa: E402
from glvc.bitstream import BitstreamError  # noqa: E402
from glvc.codec.model import rans_input  # noqa: E402
from scripts import fuzz  # noqa: E402

EXAMPLES = 300


@pytest.fixture(scope="module")
def corpus(tiny_model) -> dict[str, bytes]:
    streams = fuzz.load_corpus()
    for name, data in streams.items():
        assert bitstream.unpack_header(data)[0].fingerprint == tiny_model.fingerprint, (
            f"{name} was made by another model than tests/conftest.build_tiny_model(0) "
            "(torch changed its random weights?): rebuild with python scripts/fuzz.py --write-corpus"
        )
    return streams


class TestCorpus:
    def test_seeds_decode(self, corpus, tiny_model):
        for name, data in corpus.items():
            header = bitstream.unpack_header(data)[0]
            if header.segment != tiny_model.segment:
                with pytest.raises(BitstreamError, match="segment"):
                    tiny_model.decode(data)
                continue
            frames = tiny_model.decode(data).frames
            assert frames.shape == (header.frames, header.height, header.width, 3), name

    def test_seeds_are_what_the_tiny_model_makes(self, corpus, tiny_model):
        assert fuzz.make_corpus(tiny_model) == corpus


@pytest.mark.slow
def test_mutated_streams(corpus, tiny_model, tmp_path):
    harness = fuzz.Harness(tiny_model, str(tmp_path))
    harness.warm_up(corpus)
    fuzz.fuzz(harness, corpus, EXAMPLES, derandomize=True)
    summary = harness.summary()
    print("\n", summary["outcomes"], "max CPU", summary["max_cpu_seconds_per_example"], "s")
    assert summary["examples"] == EXAMPLES
    # every kind of check was reached, the payload decoder included
    outcomes = summary["outcomes"]
    for kind in ("crc", "magic/version/size", "header field", "structure", "model", "payload", "decoded"):
        assert outcomes.get(kind, 0) > 0, (kind, outcomes)
    assert summary["reached_payload_decoding"] >= EXAMPLES // 6
    assert "other BitstreamError" not in outcomes


class TestRansOverread:
    """compressai's rANS decoder never checks the end of its input; rans_input pads it."""

    def test_crafted_stream_does_not_crash_the_decoder(self, corpus, tiny_model_dir, tmp_path):
        # unit 0 keeps its hyper-latent; its latent data becomes 1 MB of 0xFF, re-sealed. Without the
        # guard the decoder reads ~15 MB past the buffer and the process dies (SIGSEGV).
        raw = fuzz.RawStream.of(corpus["clip9_q5.glvc"])
        payload = raw.units[0][2]
        reader = bitstream._Reader(payload, len(payload))
        hz = reader.varint("hz")
        payload = payload[: reader.pos + hz] + b"\xff" * 1_000_000
        raw.units[0][1:] = [len(payload), payload]
        path = tmp_path / "crafted.glvc"
        path.write_bytes(raw.sealed())
        done = subprocess.run([sys.executable, "-m", "glvc", "decode", str(path), str(tmp_path / "x.mp4"), "--model",
                               tiny_model_dir, "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, (done.returncode, done.stderr[-500:])
        assert done.stderr.strip().splitlines()[-1].startswith(f"error: {path}: unit 0: latent data is 1000000 bytes, more than")

    def test_longest_honest_length_is_accepted(self):
        assert rans_input(b"\x00" * (7 * 10 + 16), 10, "x").startswith(b"\x00" * 86)
        with pytest.raises(BitstreamError, match="87 bytes, more than 10 symbols can take"):
            rans_input(b"\x00" * 87, 10, "x")

    @settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def test_decoder_never_reads_past_the_padding(self, tiny_model, data):
        """Whatever follows the padding cannot change the output (so nothing past it is read)."""
        codec = tiny_model.codec
        which = data.draw(st.sampled_from(["latent", "hyper"]))
        h, w = data.draw(st.sampled_from([(1, 1), (2, 2), (4, 4), (2, 8)]))
        if which == "latent":
            shape = (1, codec.config.y_channels, h, w)
            indexes = torch.tensor(data.draw(st.lists(st.integers(0, len(codec.gaussian_conditional.scale_table) - 1),
                                                      min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                                   dtype=torch.int32).reshape(shape)

            def decode(s):
                return codec.gaussian_conditional.decompress([s], indexes).numpy()
        else:
            shape = (1, codec.config.hyper_channels, h, w)

            def decode(s):
                return codec.entropy_bottleneck.decompress([s], (h, w)).numpy()
        symbols = int(np.prod(shape))
        limit = 7 * symbols + 16
        string = data.draw(st.one_of(
            st.binary(max_size=limit),
            st.integers(0, limit).map(lambda n: b"\xff" * n),  # the worst case: bypass codes all the way
            st.integers(0, limit).map(lambda n: b"\xf0\xff\xff\xff" * (n // 4)),
        ))
        padded = rans_input(string, symbols, "test")
        first = decode(padded + b"\x00" * 4096)
        for tail in (b"\xff", b"\xa5", b"\x0f"):
            assert np.array_equal(decode(padded + tail * 4096), first, equal_nan=True)
