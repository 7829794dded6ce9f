"""``glvc bench``'s whole-process round trip (glvc/bench.py): the two commands a user runs, timed as
processes beside the in-process figures, on the tiny random model (tests/test_eval.py has the
benchmark's other figures)."""

from __future__ import annotations

import json

import pytest

from glvc.bench import process_round_trip, run_bench

from .conftest import TINY_CLIP


@pytest.fixture(scope="module")
def bench(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    record = run_bench(clip=TINY_CLIP, model=tiny_model_dir, quality=40, x265_crf=30, warmup=False,
                       baseline_engine=None, out_dir=str(out), process_runs=1)
    return record, out


class TestProcessRoundTrip:
    def test_the_record_has_both_round_trips_and_their_difference(self, bench):
        record, out = bench
        p = json.loads((out / "bench.json").read_text())["process_round_trip"]
        assert p == record["process_round_trip"]
        assert p["engine"] == record["glvc"]["tokenizer_engine"] and p["runs"] == 1
        for key in ("encode_seconds", "decode_seconds", "import_seconds", "encode_cpu_seconds", "decode_cpu_seconds"):
            assert p[key] > 0, key
        assert p["round_trip_seconds"] == pytest.approx(p["encode_seconds"] + p["decode_seconds"])
        assert p["in_process_round_trip_seconds"] == pytest.approx(record["glvc"]["encode_seconds"] + record["glvc"]["decode_seconds"])
        assert p["fixed_seconds"] == pytest.approx(p["round_trip_seconds"] - p["in_process_round_trip_seconds"])
        # a command imports the libraries before its first frame: never faster than the import alone
        assert min(p["encode_seconds"], p["decode_seconds"]) > p["import_seconds"] * 0.5
        assert "stream" not in p and "frames" not in p  # compared, not recorded

    def test_the_commands_make_the_in_process_stream_and_frames(self, bench):
        p = bench[0]["process_round_trip"]
        assert p["bytes"] == bench[0]["glvc"]["bytes"]
        assert p["same_stream_as_in_process"] and p["same_frames_as_in_process"]
        assert "python -m glvc encode tests/data/tiny.mp4 clip.glvc --rate 40 --max-height 360" in p["commands"]["encode"]

    def test_the_markdown_shows_both(self, bench):
        record, out = bench
        md = (out / "bench.md").read_text()
        p = record["process_round_trip"]
        assert "two commands, each process start to exit (wall)" in md
        assert f"{p['round_trip_seconds']:.2f} s" in md and f"{p['in_process_round_trip_seconds']:.2f} s" in md
        assert "stream and decoded frames are identical" in md

    def test_a_loaded_model_is_not_timed_as_processes_and_says_why(self, tiny_model):
        record = run_bench(clip=TINY_CLIP, model=tiny_model, quality=40, x265_crf=30, warmup=False,
                           baseline_engine=None, process_runs=1, max_frames=1)
        assert "command line needs its folder" in record["process_round_trip"]["skipped"]
        assert "not timed" in record["markdown"]

    def test_a_failing_command_names_itself(self, tmp_path):
        with pytest.raises(RuntimeError, match=r"-m glvc encode .* exited with status 2: error: .*no-such-model"):
            process_round_trip(TINY_CLIP, str(tmp_path / "no-such-model"), 40, "onednn")
