"""``python -m glvc`` as a user runs it, in a subprocess: a user error is exactly one line on stderr
(no warnings or notices of the libraries), paths are checked before any work (``--model`` points
nowhere in those tests, so an error about the model would show that the work had started), a size
target below quality 0 is said, and progress written to a file is plain lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_CLIP, build_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MODEL = "/nonexistent/glvc-model"


def glvc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glvc", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The run failed with status 2 and exactly one line on stderr, which is returned."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def stream(tiny_model_dir, tmp_path_factory) -> str:
    """A .glvc file of the tiny clip made by the tiny model."""
    path = str(tmp_path_factory.mktemp("cli") / "tiny.glvc")
    done = glvc("encode", TINY_CLIP, path, "--model", tiny_model_dir, "--rate", "20", "--quiet")
    assert done.returncode == 0, done.stderr
    return path


def test_encode_checks_the_output_folder_first(tmp_path):
    target = str(tmp_path / "missing" / "x.glvc")
    line = one_error_line(glvc("encode", TINY_CLIP, target, "--model", NO_MODEL))
    assert line == f"error: cannot write {target}: the folder {tmp_path / 'missing'} does not exist"
    line = one_error_line(glvc("encode", TINY_CLIP, str(tmp_path), "--model", NO_MODEL))
    assert line == f"error: cannot write {tmp_path}: it is a folder"


def test_encode_checks_the_rate_before_loading(tiny_model_dir, tmp_path):
    line = one_error_line(glvc("encode", TINY_CLIP, str(tmp_path / "x.glvc"), "--model", tiny_model_dir, "--rate", "64"))
    assert line == "error: --rate 64: this model's quality indices run from 0 to 63"


def test_decode_checks_paths_before_the_model_loads(stream, tmp_path):
    line = one_error_line(glvc("decode", "nope.glvc", str(tmp_path / "x.mp4"), "--model", NO_MODEL))
    assert line == "error: cannot read nope.glvc: no such file"
    for name in ("x.mp4", "x.npy"):
        target = str(tmp_path / "missing" / name)
        line = one_error_line(glvc("decode", stream, target, "--model", NO_MODEL))
        assert line == f"error: cannot write {target}: the folder {tmp_path / 'missing'} does not exist"
        assert ".partial" not in line


@pytest.mark.slow
def test_error_after_the_model_loaded_is_one_line(stream, tmp_path):
    """Loading a model is where torch.jit's FutureWarning and diffusers' accelerate notice came from."""
    other = str(tmp_path / "other_model")
    build_tiny_model(seed=1).save_pretrained(other)
    line = one_error_line(glvc("decode", stream, str(tmp_path / "x.mp4"), "--model", other))
    assert "stream was made by model" in line and "--model DIR" in line
    assert not os.path.exists(tmp_path / "x.mp4") and not os.path.exists(tmp_path / "x.mp4.partial")


@pytest.mark.slow
def test_the_bundled_model_is_named_in_a_mismatch(stream, tmp_path):
    from glvc.defaults import default_model
    from glvc.pipeline import GLVC

    bundled = GLVC.from_pretrained(default_model()).fingerprint.hex()
    line = one_error_line(glvc("decode", stream, str(tmp_path / "x.npy")))
    assert f"this decoder is model {bundled} (the bundled model, glvc/pretrained/default)" in line


@pytest.mark.slow
def test_target_below_quality_0_is_said(tiny_model_dir, tmp_path):
    out = tmp_path / "small.glvc"
    done = glvc("encode", TINY_CLIP, str(out), "--model", tiny_model_dir, "--kilobytes", "0.1", "--quiet")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    size = out.stat().st_size
    assert size > 100
    assert lines == [f"note: the target of 100 bytes (2.2 kbps over this clip) is below what this model can make for "
                     f"this clip: made {size:,} bytes ({8 * size / 0.36 / 1000:.1f} kbps) at quality 0, its smallest, instead"]
    assert "quality 0 (chosen for a target of 100 bytes)" in done.stdout
    # a reachable target: no note
    done = glvc("encode", TINY_CLIP, str(out), "--model", tiny_model_dir, "--kilobytes", "100", "--quiet")
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.slow
def test_progress_to_a_file_is_plain_lines(stream, tiny_model_dir, tmp_path):
    done = glvc("decode", stream, str(tmp_path / "x.npy"), "--model", tiny_model_dir)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert done.stderr.splitlines() == ["decode: 1/3 latent frames", "decode: 3/3 latent frames"]


def test_eval_checks_rates_before_the_model_loads(tmp_path):
    line = one_error_line(glvc("eval", TINY_CLIP, "--glvc-rates", "0", "64", "--model", NO_MODEL, "--out", str(tmp_path)))
    assert line == "error: --glvc-rates 64: quality indices run from 0 to 63 (the .glvc format's highest)"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    from glvc.progress import Progress

    term = _Terminal()
    bar = Progress("encode", file=term)
    for i in range(1, 4):
        bar(i, 0)
    bar.close()
    assert "3 latent frames" in term.getvalue()  # tqdm wrote "3latent frame" before

    log = io.StringIO()
    bar = Progress("encode", file=log, interval=3600)
    for i in range(1, 13):
        bar(i, 12)
    bar.close()
    assert log.getvalue() == "encode: 1/12 latent frames\nencode: 12/12 latent frames\n"

    log = io.StringIO()
    bar = Progress("encode", file=log, interval=3600)
    bar(1, 0)
    bar(5, 0)
    bar.close()  # the final count of a stream of unknown length
    assert log.getvalue() == "encode: 1 latent frames\nencode: 5 latent frames\n"

    silent = io.StringIO()
    bar = Progress("encode", enabled=False, file=silent)
    bar(1, 2)
    bar.close()
    assert silent.getvalue() == ""


def _options(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {n}", a) for n, a in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action


def test_every_option_is_described():
    from glvc.cli import build_parser
    from glvc.data.prepare import build_parser as prepare_parser

    for parser in (build_parser(), prepare_parser()):
        undescribed = [name for name, action in _options(parser) if not action.help]
        assert undescribed == [], undescribed
