"""Fuzz the ``.glvc`` reader and decoder with mutated, truncated and extended streams.

Every example is a stream from the seed corpus (``tests/fuzz_corpus``, made with the tiny model
of ``tests/conftest.build_tiny_model()``, seed 0) changed by one of these mutations, drawn with
hypothesis:

- ``bytes``       flip/set/insert/delete/copy bytes anywhere, CRC-32 trailer left as it was
- ``bytes+crc``   the same, then the trailer re-computed (the header and payload parsers are reached)
- ``truncate``    cut anywhere, with or without a re-computed trailer
- ``extend``      bytes added before the trailer (re-sealed) or after it
- ``header+crc``  header fields rewritten with arbitrary values (boundaries, huge varints) and re-sealed
- ``units+crc``   unit kinds, declared lengths, order and count changed and re-sealed
- ``payload+crc`` the entropy-coded payloads changed with the container intact and re-sealed
                  (the rANS decoder and the networks are reached)

and then goes through ``bitstream.unpack``, ``GLVC.decode`` and the CLI's ``info`` command. Each
example must end in :class:`~glvc.bitstream.BitstreamError` (``info``: exit status 2 and one line
``error: ...``) or in a valid decode whose frames have the header's shape, within a time bound;
parsing must not allocate more than the stream's size allows (tracemalloc), and decoding no more
than the header's geometry allows (the process's peak RSS). Anything else is a failure.

Usage (the long run; prints the counts of outcomes and the time)::

    python scripts/fuzz.py --examples 10000          # 10,000 distinct streams: ~20-40 minutes on 2 CPU cores
    python scripts/fuzz.py --write-corpus            # rebuild tests/fuzz_corpus (after a model change)

The fast version runs in ``tests/test_fuzz.py`` (same strategies, a few hundred examples,
derandomized).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import contextlib
import io
import json
import os
import re
import resource
import struct
import sys
import tempfile
import time
import tracemalloc
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.json_report import print_and_save  # noqa: E402

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from glvc import bitstream  # noqa: E402
from glvc.bitstream import BitstreamError, FrameUnit, Header  # noqa: E402

CORPUS_DIR = os.path.join(ROOT, "tests", "fuzz_corpus")

# An example may take at most this much CPU time (seconds, all threads; CPU rather than wall time,
# which another job on the machine can stretch at will). The tiny model decodes a corpus stream
# in ~0.2 s; a header that declares a larger frame (up to DECODE_PIXEL_BUDGET) takes longer.
TIME_BOUND = 20.0
# Streams whose header declares more than this many pixels (width x height x frames) are only
# parsed, not decoded: the decoder allocates in proportion to the declared geometry (that is the
# allowed behaviour), the fuzzer keeps its own run small. The app has the same kind of limit
# (Limits.max_decode_pixels) before decoding.
DECODE_PIXEL_BUDGET = 1_000_000
# Peak RSS a decode may add: fixed margin + per declared padded pixel of one frame + per output byte + per stream byte.
RSS_MARGIN = 300 << 20
RSS_PER_PADDED_PIXEL = 4096
RSS_PER_OUTPUT_BYTE = 4
RSS_PER_STREAM_BYTE = 64
# Parsing (bitstream.unpack) may allocate at most this (tracemalloc peak).
def parse_allowance(data_len: int, units: int) -> int:
    return 4 * data_len + 1024 * units + (256 << 10)


# ------------------------------------------------------------------------------------------ corpus


def make_corpus(model) -> dict[str, bytes]:
    """The seed streams (all made with ``model``; 48x64 clips from tests/data/tiny.mp4 and noise)."""
    import numpy as np

    from glvc.pipeline import GLVC
    from glvc.video_io import read_video

    frames = read_video(os.path.join(ROOT, "tests", "data", "tiny.mp4")).frames  # (9, 48, 64, 3)
    noise = np.random.default_rng(0).integers(0, 256, (5, 17, 33, 3), dtype=np.uint8)
    segmented = GLVC(model.tokenizer, model.codec, segment=2)  # same fingerprint, other segment
    return {
        "clip9_q5.glvc": model.encode(frames, 25, quality=5, reconstruct=False).bitstream,
        "clip9_q40_refresh1.glvc": model.encode(frames, Fraction(30000, 1001), quality=40, refresh_period=1,
                                                reconstruct=False).bitstream,
        "frame1_q63.glvc": model.encode(frames[:1], 25, quality=63, reconstruct=False).bitstream,
        "noise5_17x33_q20.glvc": model.encode(noise, 12, quality=20, reconstruct=False).bitstream,
        "clip6_segment2_q30.glvc": segmented.encode(frames[:6], 25, quality=30, reconstruct=False).bitstream,
    }


def load_corpus(directory: str = CORPUS_DIR) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".glvc"):
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = f.read()
    if not out:
        raise FileNotFoundError(f"no .glvc files in {directory}: run python scripts/fuzz.py --write-corpus")
    return out


def tiny_model():
    from tests.conftest import build_tiny_model

    return build_tiny_model(seed=0)


# ------------------------------------------------------------------------------------------ a raw writer


def varint(value: int) -> bytes:
    return bitstream.write_varint(value)


@dataclass
class RawStream:
    """A stream's fields without any validation, so that mutations can write any value."""

    magic: bytes
    version: int
    flags: int
    fingerprint: bytes
    fields: dict  # width .. segment, in format order (ints, written as varints; quality as u8)
    count: int  # the unit count field
    units: list  # [kind, declared length, payload]
    tail: bytes = b""  # bytes after the last unit, before the trailer

    FIELDS = ("width", "height", "frames", "fps_num", "fps_den", "pad_right", "pad_bottom", "pad_frames",
              "quality", "refresh", "segment")

    @classmethod
    def of(cls, data: bytes) -> "RawStream":
        container = bitstream.unpack(data)
        h = container.header
        fields = dict(width=h.width, height=h.height, frames=h.frames, fps_num=h.fps.numerator, fps_den=h.fps.denominator,
                      pad_right=h.pad_right, pad_bottom=h.pad_bottom, pad_frames=h.pad_frames, quality=h.quality,
                      refresh=h.refresh_period, segment=h.segment)
        units = [[u.kind, len(u.payload), u.payload] for u in container.units]
        return cls(bitstream.MAGIC, bitstream.VERSION, h.flags, h.fingerprint, fields, len(units), units)

    def body(self) -> bytes:
        out = bytearray(self.magic)
        out += bytes([self.version & 0xFF, self.flags & 0xFF])
        out += self.fingerprint
        for name in self.FIELDS:
            value = self.fields[name]
            out += bytes([value & 0xFF]) if name == "quality" else varint(value)
        out += varint(self.count)
        for kind, length, payload in self.units:
            out += bytes([kind & 0xFF]) + varint(length) + payload
        out += self.tail
        return bytes(out)

    def sealed(self) -> bytes:
        return seal(self.body())


def seal(body: bytes) -> bytes:
    """``body`` followed by its CRC-32 trailer."""
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


# ------------------------------------------------------------------------------------------ strategies

BOUNDARY_VALUES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 65, 96, 127, 128, 255, 256, 1023, 1024,
                   8191, 8192, 8193, 25001, 100_000, 100_001, 1_000_000, 1_000_001, 2**31, 2**32, 2**63, 2**64, 2**70 - 1]
field_value = st.one_of(st.sampled_from(BOUNDARY_VALUES), st.integers(0, 300), st.integers(0, 2**72))
byte_value = st.one_of(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]), st.integers(0, 255))
blob = st.one_of(st.binary(max_size=48), st.integers(1, 3000).map(lambda n: b"\xff" * n),
                 st.integers(1, 600).map(lambda n: b"\x80" * n))


@st.composite
def byte_ops(draw, data: bytes, max_ops: int = 4, start: int = 0) -> bytes:
    """1 .. max_ops random edits of ``data`` at offsets from ``start`` on."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "flip", "set", "insert", "delete", "copy"]))
        pos = draw(st.integers(min(start, max(0, len(out) - 1)), max(0, len(out) - 1)))
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[pos] = draw(byte_value)
        elif op == "insert":
            out[pos:pos] = draw(blob)
        elif op == "delete" and out:
            del out[pos : pos + draw(st.integers(1, 16))]
        elif op == "copy" and out:
            n = draw(st.integers(1, 32))
            dst = draw(st.integers(0, len(out)))
            out[dst:dst] = out[pos : pos + n]
    return bytes(out)


@st.composite
def header_mutation(draw, raw: RawStream) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["field", "field", "field", "version", "flags", "fingerprint", "count", "magic"]))
        if what == "field":
            raw.fields[draw(st.sampled_from(RawStream.FIELDS))] = draw(field_value)
        elif what == "version":
            raw.version = draw(byte_value)
        elif what == "flags":
            raw.flags = draw(byte_value)
        elif what == "fingerprint":
            fp = bytearray(raw.fingerprint)
            fp[draw(st.integers(0, len(fp) - 1))] ^= 1 << draw(st.integers(0, 7))
            raw.fingerprint = bytes(fp)
        elif what == "count":
            raw.count = draw(field_value)
        else:
            raw.magic = draw(st.binary(min_size=4, max_size=4))
    return raw.sealed()


@st.composite
def units_mutation(draw, raw: RawStream) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw.units) - 1)) if raw.units else 0
        what = draw(st.sampled_from(["kind", "length", "drop", "duplicate", "swap", "replace", "tail"]))
        if what == "kind" and raw.units:
            raw.units[i][0] = draw(byte_value)
        elif what == "length" and raw.units:  # declared length no longer the payload's
            raw.units[i][1] = draw(field_value)
        elif what == "drop" and raw.units:
            del raw.units[i]
        elif what == "duplicate" and raw.units:
            raw.units.insert(i, list(raw.units[i]))
        elif what == "swap" and len(raw.units) > 1:
            j = draw(st.integers(0, len(raw.units) - 1))
            raw.units[i], raw.units[j] = raw.units[j], raw.units[i]
        elif what == "replace" and raw.units:
            payload = draw(blob)
            raw.units[i][1:] = [len(payload), payload]
        else:
            raw.tail = draw(blob)
        if draw(st.booleans()):
            raw.count = len(raw.units)  # keep the count consistent half of the time
    return raw.sealed()


@st.composite
def payload_mutation(draw, raw: RawStream) -> bytes:
    """The container stays valid; only the codec's payloads change (lengths kept in step)."""
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(raw.units) - 1))
        payload = raw.units[i][2]
        what = draw(st.sampled_from(["bytes", "bytes", "hyper_length", "latent", "truncate", "extend"]))
        if what == "bytes":
            payload = draw(byte_ops(payload, max_ops=3))
        elif what == "hyper_length":  # the payload's first varint: length of the hyper-latent
            payload = varint(draw(field_value)) + payload[1:]
        elif what == "latent":  # keep the hyper-latent, replace the latent data
            reader = bitstream._Reader(payload, len(payload))
            try:
                n = reader.varint("hz")
                start = min(reader.pos + n, len(payload))
            except BitstreamError:
                start = 0
            payload = payload[:start] + draw(blob)
        elif what == "truncate":
            payload = payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
        else:
            payload = payload + draw(blob)
        raw.units[i][1:] = [len(payload), payload]
    return raw.sealed()


MUTATIONS = ["bytes", "bytes", "bytes+crc", "bytes+crc", "truncate", "extend",
             "header+crc", "header+crc", "units+crc", "payload+crc", "payload+crc", "payload+crc"]


@st.composite
def mutated_stream(draw, corpus: dict[str, bytes]) -> tuple[str, str, bytes]:
    """(seed name, mutation, stream)."""
    name = draw(st.sampled_from(sorted(corpus)))
    data = corpus[name]
    how = draw(st.sampled_from(MUTATIONS))
    if how == "bytes":
        out = draw(byte_ops(data, start=draw(st.sampled_from([0, 6, 22]))))
    elif how == "bytes+crc":  # mostly past the magic and version (6), or past the fingerprint (22)
        out = seal(draw(byte_ops(data[:-4], start=draw(st.sampled_from([0, 6, 6, 22, 22, 40])))))
    elif how == "truncate":
        n = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            out, how = seal(data[: max(0, n - 4)]), "truncate+crc"
        else:
            out = data[:n]
    elif how == "extend":
        extra = draw(blob)
        if draw(st.booleans()):
            out, how = seal(data[:-4] + extra), "extend+crc"
        else:
            out = data + extra
    elif how == "header+crc":
        out = draw(header_mutation(RawStream.of(data)))
    elif how == "units+crc":
        out = draw(units_mutation(RawStream.of(data)))
    else:
        out = draw(payload_mutation(RawStream.of(data)))
    return name, how, out


# ------------------------------------------------------------------------------------------ one example


def classify(err: BitstreamError) -> str:
    """Which check refused a stream, from the message."""
    text = str(err)
    if re.match(r"unit \d+: ", text):
        return "payload"  # raised while decoding a unit (rANS, codec): "unit N: ..."
    for key, words in (
        ("crc", ("checksum mismatch",)),
        ("magic/version/size", ("not a .glvc stream", "unsupported format version", "shorter than the smallest")),
        ("truncated", ("truncated stream",)),
        ("structure", ("unit count", "unknown kind", "first unit must be intra", "unexpected bytes after")),
        ("model", ("was made by model", "tokenizer segments of", "above this model's maximum", "does not match this model's stride",
                   "pixel frames per latent frame")),
        ("header field", ("outside the allowed range", "flags byte", "pad frames is", "longer than 10 bytes", "fingerprint must be")),
    ):
        if any(w in text for w in words):
            return key
    return "other BitstreamError"


@dataclass
class Outcome:
    kind: str  # "decoded", "parsed (info only)" or a classify() key
    seconds: float  # wall time
    cpu_seconds: float = 0.0
    message: str = ""
    stage: str = ""  # "parse" | "decode"


@dataclass
class Harness:
    """Runs examples against one model and checks every rule; ``counts`` tallies the outcomes."""

    model: object
    workdir: str
    decode: bool = True
    counts: collections.Counter = field(default_factory=collections.Counter)
    by_mutation: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    max_seconds: float = 0.0
    max_cpu_seconds: float = 0.0
    slowest: str = ""
    rss_base_kb: int = 0
    examples: int = 0
    distinct: set = field(default_factory=set)
    skip_repeats: bool = False  # a stream already tried is not run (nor counted) again
    repeats: int = 0

    def warm_up(self, corpus: dict[str, bytes]) -> None:
        for data in corpus.values():
            try:
                self.model.decode(data)
            except BitstreamError:
                pass
        self.rss_base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def run(self, name: str, how: str, data: bytes) -> Outcome | None:
        key = hashlib.blake2b(data, digest_size=16).digest()
        if self.skip_repeats and key in self.distinct:
            self.repeats += 1
            return None
        self.examples += 1
        self.distinct.add(key)
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = self._run(data)
        outcome.seconds, outcome.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        assert outcome.cpu_seconds <= TIME_BOUND, f"took {outcome.cpu_seconds:.1f} s of CPU"
        self.max_seconds = max(self.max_seconds, outcome.seconds)
        self.counts[outcome.kind] += 1
        self.by_mutation[how][outcome.kind] += 1
        if outcome.cpu_seconds > self.max_cpu_seconds:
            self.max_cpu_seconds, self.slowest = outcome.cpu_seconds, f"{name} {how} -> {outcome.kind}"
        return outcome

    def _run(self, data: bytes) -> Outcome:
        # 1. the container parser, with its allocations traced
        tracemalloc.start()
        try:
            container = bitstream.unpack(data)
            parse_error = None
        except BitstreamError as err:
            container, parse_error = None, err
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        units = len(container.units) if container else 0
        assert peak <= parse_allowance(len(data), units), f"parsing {len(data)} bytes allocated {peak} bytes"
        # 2. the CLI's info command (in-process): exit 0 with JSON iff the parser accepted the stream
        self._check_info(data, parse_error is None)
        if parse_error is not None:
            # the decoder must refuse it the same way
            try:
                self.model.decode(data)
            except BitstreamError:
                pass
            else:
                raise AssertionError(f"decode accepted a stream the parser refused: {parse_error}")
            return Outcome(classify(parse_error), 0.0, message=str(parse_error), stage="parse")
        header = container.header
        if not self.decode or header.width * header.height * header.frames > DECODE_PIXEL_BUDGET:
            return Outcome("parsed (info only)", 0.0)
        # 3. the decoder
        try:
            result = self.model.decode(data)
        except BitstreamError as err:
            outcome = Outcome(classify(err), 0.0, message=str(err), stage="decode")
        else:
            assert result.frames.shape == (header.frames, header.height, header.width, 3), result.frames.shape
            assert result.frames.dtype.name == "uint8"
            outcome = Outcome("decoded", 0.0)
        self._check_rss(header, len(data))
        return outcome

    def _check_info(self, data: bytes, valid: bool) -> None:
        from glvc import cli

        path = os.path.join(self.workdir, "example.glvc")
        with open(path, "wb") as f:
            f.write(data)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["info", path])
        if valid:
            assert status == 0, err.getvalue()
            info = json.loads(out.getvalue())
            assert info["bytes"] == len(data)
        else:
            lines = err.getvalue().strip().splitlines()
            assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, err.getvalue())

    def _check_rss(self, header: Header, stream_bytes: int) -> None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stride = self.model.pixel_stride
        padded = (-(-header.width // stride) * stride) * (-(-header.height // stride) * stride)
        allowed = (RSS_MARGIN + RSS_PER_PADDED_PIXEL * padded
                   + RSS_PER_OUTPUT_BYTE * 3 * header.width * header.height * header.frames
                   + RSS_PER_STREAM_BYTE * stream_bytes)
        grown = (peak_kb - self.rss_base_kb) * 1024
        assert grown <= allowed, f"peak RSS grew {grown >> 20} MB, the header allows {allowed >> 20} MB"

    def summary(self) -> dict:
        reached_rans = self.counts["payload"] + self.counts["decoded"]
        return {
            "examples": self.examples,
            "distinct_streams": len(self.distinct),
            "repeats_skipped": self.repeats,
            "outcomes": dict(self.counts.most_common()),
            "reached_payload_decoding": reached_rans,
            "by_mutation": {k: dict(v.most_common()) for k, v in sorted(self.by_mutation.items())},
            "max_cpu_seconds_per_example": round(self.max_cpu_seconds, 3),
            "max_wall_seconds_per_example": round(self.max_seconds, 3),
            "slowest": self.slowest,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_growth_over_warm_up_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.rss_base_kb) / 1024, 1),
        }


def fuzz(harness: Harness, corpus: dict[str, bytes], examples: int, derandomize: bool = False, seed: int | None = None,
         progress_every: int = 0) -> None:
    """Run ``examples`` hypothesis examples through the harness (raises on the first broken rule).

    With ``harness.skip_repeats`` hypothesis's repeats (it draws the same stream again quite often:
    about 2 in 3 of 10,000 draws here) are skipped, and further rounds with other seeds run until
    ``examples`` distinct streams are tried."""
    started = time.perf_counter()
    if harness.skip_repeats and derandomize:
        raise ValueError("skip_repeats needs random rounds (derandomize=False)")

    def check(example):
        if harness.examples >= examples or harness.run(*example) is None:
            return
        if progress_every and harness.examples % progress_every == 0:
            elapsed = time.perf_counter() - started
            print(f"{harness.examples} examples, {elapsed:.0f} s: {dict(harness.counts.most_common())}", file=sys.stderr, flush=True)

    def one_round(count: int, round_seed: int | None) -> None:
        test = given(example=mutated_stream(corpus))(check)
        test = settings(max_examples=count, derandomize=derandomize, database=None, deadline=None, print_blob=True,
                        phases=[Phase.generate, Phase.shrink] if not derandomize else [Phase.generate],
                        suppress_health_check=list(HealthCheck))(test)
        if round_seed is not None:
            from hypothesis import seed as hypothesis_seed

            test = hypothesis_seed(round_seed)(test)
        test()

    rounds = 0
    while harness.examples < examples:
        # a round of few draws would start with hypothesis's simplest example again and again
        count = examples - harness.examples if not harness.skip_repeats else max(2 * (examples - harness.examples), 200)
        one_round(count, None if seed is None else seed + rounds)
        rounds += 1
        if not harness.skip_repeats:
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    parser.add_argument("--no-decode", action="store_true", help="parser and info only")
    parser.add_argument("--with-repeats", action="store_true",
                        help="count hypothesis's repeated draws as examples (default: skip them, so that EXAMPLES distinct streams are tried)")
    parser.add_argument("--json", default=None, help="also write the summary here")
    parser.add_argument("--write-corpus", action="store_true", help="rebuild tests/fuzz_corpus from the tiny model")
    args = parser.parse_args(argv)
    model = tiny_model()
    if args.write_corpus:
        os.makedirs(CORPUS_DIR, exist_ok=True)
        for name, data in make_corpus(model).items():
            with open(os.path.join(CORPUS_DIR, name), "wb") as f:
                f.write(data)
            print(f"{name}: {len(data)} bytes")
        return 0
    corpus = load_corpus()
    for name, data in corpus.items():
        if bitstream.unpack_header(data)[0].fingerprint != model.fingerprint:
            print(f"{name} was made by another model than the tiny one: run with --write-corpus", file=sys.stderr)
            return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="glvc-fuzz-") as workdir:
        harness = Harness(model, workdir, decode=not args.no_decode, skip_repeats=not args.with_repeats)
        harness.warm_up(corpus)
        fuzz(harness, corpus, args.examples, seed=args.seed, progress_every=500)
    summary = harness.summary()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print_and_save(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
