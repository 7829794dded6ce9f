"""``python -m glvc`` as a user runs it, in a subprocess: a user error is exactly one line on stderr
(no warnings or notices of the libraries), naming the user's path; paths are checked before any work
(``--model`` names a Hub id that does not exist in those tests, so an error about the model would
show that the work had started); a size target below quality 0 is said; progress written to a file
is plain lines; a reader that closes the pipe early ends the command quietly. And the package
installs: a wheel holds the library and the bundled model."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import TINY_CLIP, build_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MODEL = "nonexistent/glvc-model"  # shaped like a Hub id: only loading it would fail


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


def test_frame_limits_below_one_are_refused(tmp_path):
    for option, value in (("--max-frames", "0"), ("--max-frames", "-5"), ("--max-height", "0"), ("--max-seconds", "0")):
        done = glvc("encode", TINY_CLIP, str(tmp_path / "x.glvc"), option, value, "--model", NO_MODEL)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"argument {option}: must be " in done.stderr.splitlines()[-1] and value in done.stderr
    done = glvc("encode", TINY_CLIP, str(tmp_path / "x.glvc"), "--refresh", "-1", "--model", NO_MODEL)
    assert done.returncode == 2 and "argument --refresh: must be 0 or more, got -1" in done.stderr


def test_a_model_path_that_is_no_folder_is_said_at_once(tmp_path):
    out = str(tmp_path / "x.glvc")
    for missing in ("/no/such/dir", "./no-such-dir", "~/no-such-glvc-dir", "no/such/dir"):
        line = one_error_line(glvc("encode", TINY_CLIP, out, "--model", missing))
        assert line == f"error: --model {missing}: no such folder"
    line = one_error_line(glvc("decode", "x.glvc", str(tmp_path / "x.mp4"), "--model", TINY_CLIP))
    assert line == f"error: --model {TINY_CLIP}: this is a file; give the model's folder (it holds tokenizer/ and codec/)"
    env = dict(os.environ, GLVC_MODEL=str(tmp_path / "gone"))
    done = subprocess.run([sys.executable, "-m", "glvc", "encode", TINY_CLIP, out], cwd=REPO, capture_output=True, text=True, env=env)
    assert one_error_line(done) == f"error: $GLVC_MODEL {tmp_path / 'gone'}: no such folder"


def test_stream_errors_name_the_file(stream, tmp_path):
    junk = tmp_path / "junk.glvc"
    junk.write_bytes(b"\x00\x00\x00 not a stream at all, but long enough for a header")
    expected = f"error: {junk}: not a .glvc stream: magic is b'\\x00\\x00\\x00 ', expected b'GLVC'"
    assert one_error_line(glvc("info", str(junk))) == expected
    assert one_error_line(glvc("decode", str(junk), str(tmp_path / "x.mp4"), "--model", NO_MODEL)) == expected
    data = bytearray(open(stream, "rb").read())
    data[-5] ^= 0xFF  # the last payload byte: the CRC-32 over the content no longer matches
    corrupt = tmp_path / "corrupt.glvc"
    corrupt.write_bytes(bytes(data))
    line = one_error_line(glvc("info", str(corrupt)))
    assert line.startswith(f"error: {corrupt}: checksum mismatch: stream says CRC-32 "), line


def test_info_into_a_closed_pipe_is_quiet(stream):
    """``python -m glvc info x.glvc | head -3``: the reader leaves; no "error: [Errno 32] Broken pipe"."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write of the JSON fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "glvc", "info", stream], cwd=REPO, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 128 + 13, (done.returncode, done.stderr)


def test_engine_option(tiny_model_dir):
    from glvc import cli, tokenizer

    assert cli.ENGINE_CHOICES == tokenizer.ENGINES  # the parser's copy (it imports no torch) agrees
    parser = cli.build_parser()
    for command in (["encode", "a.mp4", "b.glvc"], ["decode", "b.glvc", "c.mp4"], ["eval", "clips"]):
        assert parser.parse_args(command).engine is None  # the default: $GLVC_TOKENIZER_ENGINE, else the best installed
        args = parser.parse_args(command + ["--engine", "reference", "--model", tiny_model_dir])
        assert args.engine == "reference"
    assert cli._load_model(args).tokenizer.engine == "reference"
    with pytest.raises(SystemExit):
        parser.parse_args(["decode", "b.glvc", "c.mp4", "--engine", "cuda"])


def test_help_names_the_environment_and_the_costs(capsys):
    from glvc.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    top = capsys.readouterr().out
    for name in ("GLVC_MODEL", "GLVC_TOKENIZER_ENGINE", "GLVC_CACHE_DIR"):
        assert name in top
    assert "prints JSON" in top and "minutes on a CPU" in top
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    assert "DISTS and ColorVideoVDP are slow" in " ".join(capsys.readouterr().out.split())


def test_importing_the_library_prints_nothing():
    """compressai's import of torch_geometric made torch warn about torch.jit.script (twice) in every
    program that imports glvc; the library silences that notice where it imports compressai."""
    done = subprocess.run([sys.executable, "-c", "import glvc.pipeline"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_version():
    from glvc import __version__

    done = glvc("--version")
    assert done.returncode == 0 and done.stdout == f"python -m glvc {__version__}\n"


@pytest.mark.slow
def test_the_package_builds_a_wheel_with_the_model(tmp_path):
    """``pip install .`` works: the wheel (built from a copy, so that the tree gets no build/ or
    egg-info) holds the package, the bundled model and requirements.txt's pins."""
    import glvc

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(os.path.join(REPO, name), src)
    shutil.copytree(os.path.join(REPO, "glvc"), src / "glvc", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").iterdir()
    assert wheel.name == f"glvc-{glvc.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"glvc-{glvc.__version__}.dist-info/METADATA").decode()
    tracked = subprocess.run(["git", "ls-files", "glvc"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    model = [n for n in tracked if n.startswith("glvc/pretrained/")]
    assert "glvc/pretrained/default/tokenizer/diffusion_pytorch_model.safetensors" in model
    assert "glvc/pretrained/default/codec/model.safetensors" in model
    missing = [n for n in tracked if n.endswith(".py") or n in model]
    missing = [n for n in missing if n not in names]
    assert missing == [], missing
    with open(os.path.join(REPO, "requirements.txt")) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert [line[len("Requires-Dist: "):] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")] == pins
