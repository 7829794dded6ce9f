"""Build the compact training set and the validation frames from the cached sources.

Usage::

    python -m glvc.data.prepare --out data/train_set --val-out data/val_set [--cache DIR]

Training set layout (must fit a copy cap, so it is budgeted; default 44 MiB counted in 4 KiB blocks)::

    <out>/photos/NNN.jpg             natural photos, long side <= 1280 px, JPEG q92, RGB
    <out>/clips/<name>/NNNNN.jpg     frames of the training videos, long side <= 640 px, JPEG q92;
                                     NNNNN is the frame's index in decode order in the source, so a
                                     gap in the numbers marks a gap between kept runs
    <out>/manifest.json              what each file is, where it came from and its licence

Only the videos with ``role == "train"`` in :data:`glvc.data.sources.VIDEOS` are used here. When the
clips do not fit the budget they are cut into evenly spaced runs of ``run_length`` consecutive
frames (at least ``MIN_RUN`` = 17, so 17-frame windows exist; the default 33 also leaves room for
17-frame windows at stride 2); the manifest lists the kept runs and ``frame_stride`` (1 inside runs).

Validation set layout (bikes and carphone, never in the training set)::

    <val-out>/<name>/NNNNN.png       the first ``val_frames`` (33) decoded frames, original size,
                                     lossless PNG of the RGB frames as PyAV converts them
    <val-out>/manifest.json

PNG was chosen over a lossless video file so the evaluation side needs only PIL, not PyAV.

``--examples-out examples`` writes the short H.264 demo clips (:data:`EXAMPLES`, never Megamind) and
``--tiny-out tests/data/tiny.mp4`` the few-KB test clip. Sources are fetched first if not cached.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from glvc.data import sources

MIN_RUN = 17
BLOCK = 4096  # filesystem block size used to count the budget conservatively (du-like)
MANIFEST_RESERVE = 128 * 1024  # bytes kept free in the budget for manifest.json


# ----------------------------------------------------------------------------------------------
# small helpers (tested without any downloaded data)


def fit_long_side(width: int, height: int, max_long: int, even: bool = False) -> tuple[int, int]:
    """Size ``(w, h)`` keeping the aspect ratio with ``max(w, h) <= max_long`` (never upscales).

    With ``even`` both sides are rounded to even numbers (H.264 4:2:0 friendly).
    """
    if width <= 0 or height <= 0 or max_long <= 0:
        raise ValueError(f"bad size {width}x{height} or max_long {max_long}")
    scale = min(1.0, max_long / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if even:
        w, h = max(2, w - w % 2), max(2, h - h % 2)
    return w, h


def downscale(img: Image.Image, max_long: int | None = None, size: tuple[int, int] | None = None,
              even: bool = False) -> Image.Image:
    """RGB copy of ``img`` resized to ``size`` (w, h), or to long side <= ``max_long`` (Lanczos).

    Applies the EXIF orientation and drops alpha. Exactly one of ``max_long``/``size`` is given.
    """
    if (max_long is None) == (size is None):
        raise ValueError(f"give exactly one of max_long={max_long} and size={size}")
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    target = size if size is not None else fit_long_side(img.width, img.height, max_long, even)
    if tuple(target) != img.size:
        img = img.resize(tuple(target), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def encode_jpeg(img: Image.Image, quality: int = 92, subsampling: str = "4:2:0") -> bytes:
    """JPEG bytes of an RGB PIL image (baseline, optimised Huffman tables)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=subsampling, optimize=True)
    return buf.getvalue()


def disk_bytes(n: int, block: int = BLOCK) -> int:
    """Bytes a file of ``n`` bytes occupies, rounded up to whole blocks (as ``du`` counts)."""
    return -(-n // block) * block


def dir_size(path: Path, block: int = BLOCK) -> tuple[int, int, int]:
    """``(files, apparent bytes, block bytes)`` of every file under ``path``."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    sizes = [p.stat().st_size for p in files]
    return len(files), sum(sizes), sum(disk_bytes(s, block) for s in sizes)


def write_manifest(path: Path, manifest: dict) -> Path:
    """Write ``manifest`` as indented UTF-8 JSON (sorted keys inside entries are not forced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def allocate_budget(totals: dict[str, int], budget: int) -> dict[str, int]:
    """Water-filling: each item gets ``min(total, fair share)``; what small items leave over is
    shared by the bigger ones. ``sum(result) <= budget``."""
    if budget < 0:
        raise ValueError(f"negative budget {budget}")
    alloc: dict[str, int] = {}
    left, pending = budget, sorted(totals, key=lambda k: totals[k])
    while pending:
        share = left // len(pending)
        name = pending[0]
        if totals[name] <= share:
            alloc[name] = totals[name]
            left -= totals[name]
            pending.pop(0)
        else:
            for name in pending:
                alloc[name] = share
            break
    return alloc


def select_runs(frame_bytes: list[int], budget: int, run_length: int = 33) -> list[tuple[int, int]]:
    """Pick evenly spaced runs ``(start, length)`` of consecutive frames whose total size fits.

    All frames are kept (one run) when they fit. Otherwise about ``k`` frames fit; they are split
    into ``r`` equal runs of ``k // r >= run_length`` frames, with ``r`` as large as allowed while
    the gaps between runs stay at least ``run_length`` long (so a clip that nearly fits loses one
    stretch, not many 1-frame gaps). ``k`` shrinks until the real byte count fits.
    """
    n = len(frame_bytes)
    if run_length < MIN_RUN:
        raise ValueError(f"run_length {run_length} < {MIN_RUN}: the sampler needs 17-frame runs")
    total = sum(frame_bytes)
    if total <= budget:
        return [(0, n)] if n else []
    cum = np.concatenate([[0], np.cumsum(frame_bytes)])
    k = min(n, int(budget // (total / n)))
    while k >= run_length:
        r = max(1, min(k // run_length, (n - k) // run_length + 1))
        length = k // r
        starts = [int(x) for x in np.round(np.linspace(0, n - length, r))]
        runs = [(st, length) for st in starts]
        if sum(int(cum[st + length] - cum[st]) for st in starts) <= budget:
            assert all(a[0] + a[1] <= b[0] for a, b in zip(runs, runs[1:])), runs
            return runs
        k -= max(1, k // 50)
    raise ValueError(f"budget {budget} B is smaller than one run of {run_length} frames of a "
                     f"{n}-frame clip ({total} B in all)")


# ----------------------------------------------------------------------------------------------
# video decoding


@dataclass
class DecodedVideo:
    """Frames as (H, W, 3) uint8 RGB arrays in decode order, with container facts."""

    frames: list[np.ndarray]
    fps: float  # the stream's average rate from the header
    fps_effective: float  # frames per second of presentation time actually covered
    header_frames: int
    codec: str
    size: tuple[int, int]  # (w, h)
    notes: list[str] = field(default_factory=list)


def decode_video(path: Path, max_frames: int | None = None) -> DecodedVideo:
    """Decode a video to (H, W, 3) uint8 RGB frames by index in decode order, stopping at
    ``max_frames`` or when the decoder stops (timestamps are ignored for that: some files have
    irregular ones, e.g. tree.avi codes 68 of the 444 frames its header announces). Also returns the
    header rate, the rate the timestamps actually cover, and the size."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        header_frames, codec, tb = int(stream.frames), stream.codec_context.name, stream.time_base
        pts, frames = [], []
        for i, frame in enumerate(container.decode(stream)):
            if max_frames is not None and i >= max_frames:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
            if frame.pts is not None:
                pts.append(frame.pts)
    if not frames:
        raise RuntimeError(f"{path}: no frames decoded")
    notes = []
    fps_eff = float(rate)
    if len(pts) > 1 and tb:
        span = float((max(pts) - min(pts)) * tb)
        if span > 0:
            fps_eff = (len(pts) - 1) / span
    if header_frames and header_frames != len(frames):
        notes.append(f"header says {header_frames} frames, {len(frames)} decoded")
    h, w = frames[0].shape[:2]
    return DecodedVideo(frames, float(rate), fps_eff, header_frames, codec, (w, h), notes)


# ----------------------------------------------------------------------------------------------
# training set


@dataclass
class PrepareConfig:
    budget_mib: float = 44.0  # whole train set, counted in 4 KiB blocks
    photo_long_side: int = 1280
    clip_long_side: int = 640
    clip_sizes: dict[str, tuple[int, int]] = field(default_factory=lambda: {"vtest": (384, 288)})
    quality: int = 92
    run_length: int = 33
    val_frames: int = 33


def _staging_dir(out: Path) -> Path:
    """Fresh ``.<name>.partial`` sibling of ``out`` to build into (moved over ``out`` at the end,
    so a failed build never leaves a half-written set). ``out`` must be absent, empty, or a
    previous build (holding manifest.json)."""
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise FileExistsError(f"{out} is not empty and has no manifest.json; not overwriting it")
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _commit_dir(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def build_photos(cache: Path | None, cfg: PrepareConfig, log=print) -> list[tuple[dict, bytes]]:
    """Encode every natural photo; returns ``[(manifest entry without file name, jpeg bytes)]``."""
    out = []
    for src in sources.PHOTOS:
        candidates = sources.photo_candidates(src, cache)
        log(f"photos: encoding {len(candidates)} from {src.package}")
        for path in candidates:
            with Image.open(path) as im:
                src_size = im.size
                img = downscale(im, max_long=cfg.photo_long_side)
            data = encode_jpeg(img, cfg.quality)
            stem = path.parts[-4] if src.package == "plasma-workspace-wallpapers" else path.stem
            per_file = sources.deb_file_copyright(src.package, path.name, cache)
            entry = {"name": stem, "size": list(img.size), "source_size": list(src_size),
                     "package": f"deb:{src.package}", "source_file": str(path.relative_to(
                         sources.package_root(f"deb:{src.package}", cache))),
                     "licence": per_file["licence"] if per_file else src.licence}
            if per_file and per_file["copyright"]:
                entry["copyright"] = per_file["copyright"]
            out.append((entry, data))
    return out


def build_train_set(out: Path, cache: Path | None = None, cfg: PrepareConfig | None = None,
                    log=print) -> dict:
    """Write the training set to ``out`` (see module docstring); returns the manifest."""
    cfg = cfg or PrepareConfig()
    out = Path(out)
    budget = int(cfg.budget_mib * 2**20)
    final, out = out, _staging_dir(out)

    photos = build_photos(cache, cfg, log)
    photo_bytes = sum(disk_bytes(len(d)) for _, d in photos)
    log(f"photos: {len(photos)} encoded, {photo_bytes / 2**20:.1f} MiB")
    clip_budget = budget - photo_bytes - MANIFEST_RESERVE
    if clip_budget <= 0:
        raise ValueError(f"photos alone take {photo_bytes} B of the {budget} B budget")

    encoded: dict[str, tuple[sources.VideoSource, DecodedVideo, list[bytes]]] = {}
    for src in sources.VIDEOS:
        if src.role != "train":
            continue
        log(f"clip {src.name}: decoding and encoding its frames")
        video = decode_video(sources.video_path(src, cache), src.max_frames)
        size = cfg.clip_sizes.get(src.name) or fit_long_side(*video.size, cfg.clip_long_side, even=True)
        jpegs = [encode_jpeg(downscale(Image.fromarray(f), size=size), cfg.quality) for f in video.frames]
        video.frames = []  # free the raw frames
        encoded[src.name] = (src, video, jpegs)
        log(f"clip {src.name}: {len(jpegs)} frames {video.size[0]}x{video.size[1]} -> "
            f"{size[0]}x{size[1]}, {sum(map(disk_bytes, map(len, jpegs))) / 2**20:.1f} MiB")

    totals = {k: sum(disk_bytes(len(j)) for j in v[2]) for k, v in encoded.items()}
    alloc = allocate_budget(totals, clip_budget)

    manifest = {"format": "glvc-train-set/1", "config": {
        "budget_mib": cfg.budget_mib, "photo_long_side": cfg.photo_long_side,
        "clip_long_side": cfg.clip_long_side, "jpeg_quality": cfg.quality,
        "run_length": cfg.run_length}, "photos": [], "clips": []}
    (out / "photos").mkdir()
    for i, (entry, data) in enumerate(photos):
        fname = f"photos/{i:03d}.jpg"
        (out / fname).write_bytes(data)
        manifest["photos"].append({"file": fname, **entry})

    for name, (src, video, jpegs) in encoded.items():
        runs = select_runs([disk_bytes(len(j)) for j in jpegs], alloc[name], cfg.run_length)
        d = out / "clips" / name
        d.mkdir(parents=True)
        kept = 0
        for start, length in runs:
            for idx in range(start, start + length):
                (d / f"{idx:05d}.jpg").write_bytes(jpegs[idx])
                kept += 1
        with Image.open(io.BytesIO(jpegs[0])) as im:
            size = im.size
        manifest["clips"].append({
            "name": name, "dir": f"clips/{name}", "frames": kept, "source_frames": len(jpegs),
            "runs": [list(r) for r in runs], "frame_stride": 1, "fps": round(video.fps, 4),
            "fps_effective": round(video.fps_effective, 4), "size": list(size),
            "source_size": list(video.size), "codec": video.codec,
            "package": src.package, "source_file": src.relpath, "licence": src.licence,
            "shippable": src.shippable, "notes": video.notes})
        log(f"clip {name}: kept {kept}/{len(jpegs)} frames in {len(runs)} run(s)")

    write_manifest(out / "manifest.json", manifest)
    n, apparent, blocks = dir_size(out)
    summary = f"{n} files, {apparent / 2**20:.2f} MiB apparent, {blocks / 2**20:.2f} MiB in blocks"
    if blocks > budget:
        raise RuntimeError(f"{out}: {summary} exceeds the budget of {cfg.budget_mib} MiB")
    _commit_dir(out, final)
    log(f"train set {final}: {summary}")
    return manifest


def build_val_set(out: Path, cache: Path | None = None, cfg: PrepareConfig | None = None,
                  log=print) -> dict:
    """Write the first ``cfg.val_frames`` frames of every validation video as PNG (original size)."""
    cfg = cfg or PrepareConfig()
    final, out = Path(out), _staging_dir(Path(out))
    manifest = {"format": "glvc-val-set/1", "clips": []}
    for src in sources.VIDEOS:
        if src.role != "val":
            continue
        video = decode_video(sources.video_path(src, cache), cfg.val_frames)
        if len(video.frames) < cfg.val_frames:
            raise RuntimeError(f"{src.name}: only {len(video.frames)} frames, need {cfg.val_frames}")
        d = out / src.name
        d.mkdir(parents=True)
        for i, f in enumerate(video.frames):
            Image.fromarray(f).save(d / f"{i:05d}.png", optimize=False, compress_level=6)
        manifest["clips"].append({
            "name": src.name, "dir": src.name, "frames": len(video.frames), "format": "png",
            "fps": round(video.fps, 4), "size": list(video.size), "codec": video.codec,
            "package": src.package, "source_file": src.relpath, "licence": src.licence})
        log(f"val {src.name}: {len(video.frames)} frames {video.size[0]}x{video.size[1]}")
    write_manifest(out / "manifest.json", manifest)
    n, apparent, blocks = dir_size(out)
    _commit_dir(out, final)
    log(f"val set {final}: {n} files, {apparent / 2**20:.2f} MiB apparent")
    return manifest


# ----------------------------------------------------------------------------------------------
# demo examples and the tiny test clip


@dataclass(frozen=True)
class ExampleClip:
    """A cut of a source video shipped for the web demo (never Megamind)."""

    name: str  # output file stem
    source: str  # VideoSource.name
    start: int  # first frame index (decode order)
    seconds: float
    max_long: int = 640


EXAMPLES: tuple[ExampleClip, ...] = (
    ExampleClip("bigbuckbunny_3s", "bigbuckbunny", 0, 3.0),
    ExampleClip("vtest_3s", "vtest", 0, 3.0, max_long=384),
    ExampleClip("bikes_2s", "bikes", 0, 2.0),
)


def write_h264(path: Path, frames: list[np.ndarray], fps: float, crf: int = 23,
               preset: str = "slow") -> int:
    """Write (H, W, 3) uint8 RGB frames as browser-playable H.264 yuv420p mp4 (faststart).

    H and W must be even. Returns the file size in bytes.
    """
    import av

    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.stat().st_size


def write_h264_max_bytes(path: Path, frames: list[np.ndarray], fps: float, max_bytes: int,
                         crf: int = 23, crf_step: int = 2, max_crf: int = 40) -> tuple[int, int]:
    """:func:`write_h264` raising the CRF by ``crf_step`` until the file is <= ``max_bytes``.
    Returns ``(bytes, crf)``."""
    while True:
        size = write_h264(path, frames, fps, crf)
        if size <= max_bytes:
            return size, crf
        if crf + crf_step > max_crf:
            raise RuntimeError(f"{path}: {size} B at crf {crf} still exceeds {max_bytes} B")
        crf += crf_step


def center_crop_to_aspect(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Largest centred crop of an (H, W, C) frame with aspect ``width:height``."""
    h, w = frame.shape[:2]
    if w * height > h * width:  # too wide
        cw = round(h * width / height)
        x0 = (w - cw) // 2
        return frame[:, x0:x0 + cw]
    ch = round(w * height / width)
    y0 = (h - ch) // 2
    return frame[y0:y0 + ch]


def build_examples(out: Path, cache: Path | None = None, max_bytes: int = 400_000, crf: int = 18,
                   examples: tuple[ExampleClip, ...] = EXAMPLES, log=print) -> list[dict]:
    """Write the demo clips ``<out>/<name>.mp4`` (H.264, even sizes, each <= ``max_bytes``)."""
    by_name = {v.name: v for v in sources.VIDEOS}
    info = []
    for ex in examples:
        src = by_name[ex.source]
        if not src.shippable:
            raise ValueError(f"{src.name} may not be shipped ({src.licence})")
        probe = decode_video(sources.video_path(src, cache), max_frames=1)
        n = int(round(ex.seconds * probe.fps))
        video = decode_video(sources.video_path(src, cache), ex.start + n)
        clip = video.frames[ex.start:ex.start + n]
        if len(clip) < n:
            raise RuntimeError(f"{src.name}: wanted {n} frames from {ex.start}, got {len(clip)}")
        size = fit_long_side(*video.size, ex.max_long, even=True)
        clip = [np.asarray(downscale(Image.fromarray(f), size=size)) for f in clip]
        nbytes, used_crf = write_h264_max_bytes(Path(out) / f"{ex.name}.mp4", clip, video.fps,
                                               max_bytes, crf)
        info.append({"file": f"{ex.name}.mp4", "source": src.name, "frames": len(clip),
                     "fps": video.fps, "size": list(size), "bytes": nbytes, "crf": used_crf,
                     "licence": src.licence})
        log(f"example {ex.name}.mp4: {len(clip)} frames {size[0]}x{size[1]} crf {used_crf}, {nbytes} B")
    return info


def build_tiny_clip(path: Path, cache: Path | None = None, source: str = "bikes", frames: int = 9,
                    size: tuple[int, int] = (64, 48), crf: int = 23, max_bytes: int = 30_000) -> int:
    """A few-KB test clip: the first ``frames`` frames of ``source``, centre-cropped to the
    aspect of ``size`` and resized to it, H.264 yuv420p. Returns its size in bytes."""
    src = {v.name: v for v in sources.VIDEOS}[source]
    video = decode_video(sources.video_path(src, cache), frames)
    clip = [np.asarray(downscale(Image.fromarray(center_crop_to_aspect(f, *size)), size=size))
            for f in video.frames]
    nbytes, _ = write_h264_max_bytes(path, clip, video.fps, max_bytes, crf)
    return nbytes


def build_parser() -> argparse.ArgumentParser:
    d = PrepareConfig()
    ap = argparse.ArgumentParser(prog="python -m glvc.data.prepare", description="Build the GLVC training set, validation frames, "
                                 "demo examples and the tiny test clip from the cached sources.")
    ap.add_argument("--out", type=Path, default=None, help="training set directory, e.g. data/train_set")
    ap.add_argument("--val-out", type=Path, default=None, help="validation frames directory, e.g. data/val_set")
    ap.add_argument("--examples-out", type=Path, default=None, help="demo clips directory, e.g. examples")
    ap.add_argument("--tiny-out", type=Path, default=None, help="tiny test clip, e.g. tests/data/tiny.mp4")
    ap.add_argument("--cache", type=Path, default=None, help="source cache (default $GLVC_CACHE or ~/.cache/glvc)")
    ap.add_argument("--budget-mib", type=float, default=d.budget_mib,
                    help=f"size cap of the whole training set in MiB, counted in 4 KiB blocks (default {d.budget_mib:g}); "
                    "clips that do not fit are cut into evenly spaced runs")
    ap.add_argument("--photo-long-side", type=int, default=d.photo_long_side,
                    help=f"downscale photos to at most this long side in pixels (default {d.photo_long_side})")
    ap.add_argument("--clip-long-side", type=int, default=d.clip_long_side,
                    help=f"downscale training clips to at most this long side in pixels (default {d.clip_long_side})")
    ap.add_argument("--quality", type=int, default=d.quality,
                    help=f"JPEG quality of the stored photos and frames (default {d.quality})")
    ap.add_argument("--run-length", type=int, default=d.run_length,
                    help=f"frames per kept run of a clip cut to fit the budget, at least {MIN_RUN} (default {d.run_length})")
    ap.add_argument("--val-frames", type=int, default=d.val_frames,
                    help=f"first frames of each validation clip written as PNG (default {d.val_frames})")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not any([args.out, args.val_out, args.examples_out, args.tiny_out]):
        ap.error("nothing to do: give --out and/or --val-out, --examples-out, --tiny-out")
    cfg = PrepareConfig(budget_mib=args.budget_mib, photo_long_side=args.photo_long_side,
                        clip_long_side=args.clip_long_side, quality=args.quality,
                        run_length=args.run_length, val_frames=args.val_frames)
    sources.fetch_all(args.cache, log=lambda line: print(line, flush=True))
    if args.out is not None:
        build_train_set(args.out, args.cache, cfg)
    if args.val_out is not None:
        build_val_set(args.val_out, args.cache, cfg)
    if args.examples_out is not None:
        build_examples(args.examples_out, args.cache)
    if args.tiny_out is not None:
        print(f"tiny clip {args.tiny_out}: {build_tiny_clip(args.tiny_out, args.cache)} B")


if __name__ == "__main__":
    main()
