"""Command line: ``python -m glvc {encode,decode,info,train,eval,bench}``.

User errors (a bad file, a bad stream, a missing model) print one line, naming the user's path,
and exit with status 2; no traceback. Paths and arguments (``--model`` included) are checked before
the model loads. Results go to stdout; progress (glvc.progress) and notes to stderr. A reader that
closes stdout early (``| head``) ends the command quietly, as it ends Unix tools. The libraries'
warnings are filtered in ``glvc/__main__.py``, the entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile

from . import __version__
from .bitstream import BitstreamError
from .defaults import default_model, local_max_quality
from .progress import Progress

ENGINE_CHOICES = ("reference", "onednn", "openvino")
"""``glvc.tokenizer.ENGINES``, repeated here so that building the parser imports no torch
(tests/test_cli.py checks that the two agree)."""

ENVIRONMENT_HELP = """environment variables:
  GLVC_MODEL              the model used without --model (default: the bundled glvc/pretrained/default)
  GLVC_TOKENIZER_ENGINE   the tokenizer engine used without --engine: reference, onednn or openvino
                          (default: openvino where it is installed, else onednn)
  GLVC_CACHE_DIR          where the openvino engine keeps its converted models (default ~/.cache/glvc)"""


def _load_model(args):
    from .pipeline import GLVC

    return GLVC.from_pretrained(args.model, engine=args.engine)


def _check_model_argument(model: str) -> str:
    """``--model`` (or ``$GLVC_MODEL``) as given, ``~`` expanded; refused at once when it names a
    path that is no folder. Anything else is left to the loader as a Hub id (``owner/name``).

    A path: it starts with ``/``, ``.`` or ``~``, holds more than one ``/`` (a Hub id has one) or a
    backslash, or names an existing file. Without this check such a name reached the Hub client,
    which refused it as a repository id only after torch and the libraries had loaded (5.9 s for
    ``encode tests/data/tiny.mp4 x.glvc --model /no/such/dir`` here)."""
    named = "$GLVC_MODEL" if model == os.environ.get("GLVC_MODEL") else "--model"
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{named} {model}: this is a file; give the model's folder (it holds tokenizer/ and codec/)")
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model:
        raise ValueError(f"{named} {model}: no such folder")
    return model


@contextlib.contextmanager
def _naming_stream(path: str):
    """Stream errors raised inside start with the stream's path (``x.glvc: checksum mismatch ...``)."""
    try:
        yield
    except BitstreamError as err:
        raise BitstreamError(f"{path}: {err}") from err


# Frames above this many pixels are refused by ``encode`` unless --max-height brings them down: the
# tokenizer's activations grow with the frame (8K with the bundled model would need tens of GB).
MAX_ENCODE_PIXELS = 3840 * 2160


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):  # NaN fails the first test
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _count(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
        return value

    parse.__name__ = f"whole number >= {minimum}"  # how argparse names the type in its messages
    return parse


def _check_output(path: str) -> None:
    """Refuse an output path that cannot be written, before any work (a failed write would
    otherwise come after the whole encode or decode)."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path}: it is a folder")
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: the folder {folder} does not exist")
    try:  # os.access says yes to root on a read-only file system: try it
        fd, probe = tempfile.mkstemp(prefix=".glvc-write-check-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"cannot write {path}: the folder {folder} is not writable ({err.strerror})") from err


def _read_input(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"cannot read {path}: no such file") from None
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from err


def _write_output(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from err


def cmd_encode(args) -> int:
    import itertools

    from .video_io import FrameStream, VideoError

    _check_output(args.output)
    top = local_max_quality(args.model)
    if args.kbps is None and args.kilobytes is None and top is not None and not 0 <= args.rate <= top:
        raise ValueError(f"--rate {args.rate}: this model's quality indices run from 0 to {top}")
    # streamed: frames go through the tokenizer and the codec one latent frame (4 frames) at a
    # time, so memory does not grow with the clip's length
    video = FrameStream(args.input, max_frames=args.max_frames, max_seconds=args.max_seconds, max_height=args.max_height)
    frames = iter(video)
    first = next(frames)
    height, width = first.shape[:2]
    if width * height > MAX_ENCODE_PIXELS:
        raise VideoError(
            f"frames are {width}x{height} ({width * height / 1e6:.1f} MP); encode codes at most "
            f"{MAX_ENCODE_PIXELS / 1e6:.1f} MP per frame: pass --max-height 2160 (or lower) to downscale"
        )
    model = _load_model(args)
    progress = Progress("encode", not args.quiet)
    try:
        from .pipeline import bytes_for_kilobytes  # here: torch is imported with the model, after the input is checked

        rate = {"target_kbps": args.kbps} if args.kbps is not None else (
            {"target_bytes": bytes_for_kilobytes(args.kilobytes)} if args.kilobytes is not None else {"quality": args.rate})
        result = model.encode(itertools.chain([first], frames), video.fps, refresh_period=args.refresh,
                              reconstruct=False, progress=progress, **rate)
    finally:
        progress.close()
    if video.truncated:
        print(f"note: input trimmed to {video.count} frames", file=sys.stderr)
    missed = result.report.target_note()
    if missed:
        print(f"note: {missed}", file=sys.stderr)
    _write_output(args.output, result.bitstream)
    print(result.report.summary())
    return 0


def cmd_decode(args) -> int:
    from . import bitstream

    # the paths and the header are checked before the model loads
    _check_output(args.output)
    data = _read_input(args.input)
    with _naming_stream(args.input):
        header = bitstream.unpack_header(data)[0]

    from .pipeline import Report, _Timer
    from .video_io import VideoWriter

    model = _load_model(args)
    progress = Progress("decode", not args.quiet)
    timer = _Timer()
    # streamed: each latent frame's pixels go to the output as soon as they are decoded; the
    # output appears (renamed from a partial file) only when the whole stream decoded
    partial = f"{args.output}.partial"
    try:
        frames = model.decode_stream(data, progress=progress, timer=timer)
        if args.output.endswith(".npy"):
            import numpy as np

            shape = (header.frames, header.height, header.width, 3)
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
            done = 0
            for chunk in frames:
                out[done : done + len(chunk)] = chunk
                done += len(chunk)
            out.flush()
            del out
        else:
            with VideoWriter(partial, header.fps) as writer:
                for chunk in frames:
                    writer.write(chunk)
        os.replace(partial, args.output)
    except BaseException as err:
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(err, OSError):  # name the user's path, not the partial file
            raise ValueError(f"cannot write {args.output}: {err.strerror or err}") from err
        if isinstance(err, BitstreamError):  # found while decoding (a unit, another model): name the stream
            raise BitstreamError(f"{args.input}: {err}") from err
        raise
    finally:
        progress.close()
    report = Report(len(data), header.frames, header.width, header.height, float(header.fps), header.quality, timer.timings)
    print(report.summary())
    return 0


def cmd_info(args) -> int:
    from . import bitstream

    data = _read_input(args.input)
    with _naming_stream(args.input):
        container = bitstream.unpack(data)
    h = container.header
    info = {
        "bytes": len(data),
        "model_fingerprint": h.fingerprint.hex(),
        "width": h.width,
        "height": h.height,
        "frames": h.frames,
        "fps": f"{h.fps.numerator}/{h.fps.denominator}",
        "duration_s": round(h.frames / float(h.fps), 3),
        "quality": h.quality,
        "refresh_period": h.refresh_period,
        "padding": {"right": h.pad_right, "bottom": h.pad_bottom, "frames": h.pad_frames},
        "latent_frames": len(container.units),
        "units": [{"kind": u.kind_name, "bytes": len(u.payload)} for u in container.units],
        "bits_per_pixel": round(8 * len(data) / (h.frames * h.width * h.height), 5),
        "kbps": round(8 * len(data) / (h.frames / float(h.fps)) / 1000, 2),
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_train(args) -> int:
    from .train import load_config, train

    cfg = load_config(args.config)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    if args.max_minutes is not None:
        cfg["max_minutes"] = args.max_minutes
    folder = train(cfg)
    if folder is None:
        print("training stopped before the end (max_minutes); run the same command to resume")
    else:
        print(f"model written to {folder}")
    return 0


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line help in ``python -m glvc --help`` is also its ``--help`` description."""
    return sub.add_parser(name, help=help, description=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glvc", description="Generative latent video compression",
                                     epilog=ENVIRONMENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_arg(p, engine: bool = True):
        p.add_argument("--model", default=default_model(),
                       help="GLVC model folder or Hub id (default: $GLVC_MODEL, else the bundled glvc/pretrained/default)")
        if engine:
            p.add_argument("--engine", choices=ENGINE_CHOICES, default=None,
                           help="tokenizer engine (default: $GLVC_TOKENIZER_ENGINE, else openvino where installed, else "
                           "onednn); it changes decoded pixels within float rounding, never the bitstream")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _command(sub, "encode", help="video file -> .glvc bitstream")
    p.add_argument("input", help="video file (any format FFmpeg reads) or image")
    p.add_argument("output", help=".glvc file to write (its folder must exist)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=int, default=32,
                      help="rate index: 0 (smallest stream) .. 63 (largest, best quality) with the bundled model; default 32")
    rate.add_argument("--kbps", type=_positive, default=None,
                      help="target bitrate (1 kbps = 1000 bit/s): the encoder picks the highest quality index that fits; "
                      "below what quality 0 makes for the clip, quality 0 is used and stderr says so")
    rate.add_argument("--kilobytes", type=_positive, default=None,
                      help="target .glvc size in kB (1000 bytes): the encoder picks the highest quality index that fits; "
                      "below what quality 0 makes for the clip, quality 0 is used and stderr says so")
    p.add_argument("--refresh", type=_count(0), default=0, help="reset the temporal memory every N latent frames (0: never)")
    p.add_argument("--max-frames", type=_count(1), default=None, help="code at most this many frames (default: all)")
    p.add_argument("--max-seconds", type=_positive, default=None, help="code at most this many seconds (default: all)")
    p.add_argument("--max-height", type=_count(1), default=None, help="downscale taller input to this height")
    model_arg(p)
    p.set_defaults(func=cmd_encode)

    p = _command(sub, "decode", help=".glvc bitstream -> mp4 (or .npy of uint8 frames)")
    p.add_argument("input", help=".glvc file")
    p.add_argument("output", help="video to write: .mp4 (H.264), or .npy for the exact (T, H, W, 3) uint8 frames")
    model_arg(p)
    p.set_defaults(func=cmd_decode)

    p = _command(sub, "info", help="describe a .glvc bitstream: prints JSON (header, units, bpp, kbps)")
    p.add_argument("input", help=".glvc file")
    p.set_defaults(func=cmd_info)

    p = _command(sub, "train", help="train the tokenizer and the latent codec (runs under torchrun too)")
    p.add_argument("--config", required=True,
                   help="JSON training config (configs/default.json, configs/paper.json; keys in the README, "
                   "defaults in glvc/train.py DEFAULT_CONFIG)")
    p.add_argument("--output-dir", default=None,
                   help="run folder, overrides the config's output_dir: checkpoints <dir>/tokenizer.pt and "
                   "<dir>/codec.pt, logs <dir>/log_<stage>.csv, the exported model <dir>/model")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="pause a stage after it ran this many minutes in this run (checkpointed: the same command resumes)")
    p.set_defaults(func=cmd_train)

    from .bench import add_bench_arguments, cmd_bench
    from .evaluate import add_eval_arguments, cmd_eval

    p = _command(sub, "eval", help="rate-distortion evaluation against x264/x265/SVT-AV1 (CSV, JSON, BD-rate, plots); "
                       "its default metrics include the slow DISTS and ColorVideoVDP (see --metrics)")
    add_eval_arguments(p)
    model_arg(p)
    p.set_defaults(func=cmd_eval)

    p = _command(sub, "bench", help="GLVC encode/decode throughput, memory and stage times against x265; minutes on a CPU "
                       "(GLVC's encode and decode of the default clip alone took 131 s on 2 cores: docs/results/bench)")
    add_bench_arguments(p)
    model_arg(p, engine=False)  # bench has its own --engine (the engine under test) and --baseline-engine
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "model", None) is not None:
            args.model = _check_model_argument(args.model)
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at the interpreter's exit
        return status
    except BrokenPipeError:
        # the reader left (`python -m glvc info x.glvc | head -3`): stop quietly, as Unix tools do.
        # Python's own flush of stdout at exit would fail again: stdout goes to /dev/null from here.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # the status of a process ended by SIGPIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BitstreamError, ValueError, OSError, RuntimeError) as err:
        # VideoError and ModelLoadError derive from ValueError / RuntimeError
        message = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
