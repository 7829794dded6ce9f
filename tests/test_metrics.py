"""Tests for glvc.metrics (CPU, small frames, no network).

LPIPS/DISTS: the ImageNet backbones cannot be downloaded here, so the
reference package objects are built with random trunks and the *same* trunk
is injected into ours; equal outputs show the plumbing (value range, channel
order, layer mapping) is right.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import math
import os
import socket
import sys
import threading
import time
import types
import warnings

import numpy as np
import pytest
import torch

from glvc import metrics as M

_REAL_DOWNLOAD = torch.hub.download_url_to_file  # before the fixture below replaces it


def _clip(t=4, h=48, w=64, seed=0):
    """Smooth moving pattern + mild noise, uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for k in range(t):
        r = 128 + 100 * np.sin((x + 3 * k) / 7.0)
        g = 128 + 100 * np.cos((y - 2 * k) / 5.0)
        b = 128 + 60 * np.sin((x + y + 4 * k) / 9.0)
        f = np.stack([r, g, b], -1) + rng.normal(0, 3, (h, w, 3))
        frames.append(np.clip(f, 0, 255))
    return np.round(np.stack(frames)).astype(np.uint8)


def _blur(frames, sigma):
    from scipy.ndimage import gaussian_filter

    return np.stack(
        [np.clip(np.round(gaussian_filter(f.astype(np.float32), (sigma, sigma, 0))), 0, 255) for f in frames]
    ).astype(np.uint8)


def _noise(frames, std, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(frames + rng.normal(0, std, frames.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any attempt to download weights fails the test instead of hanging."""
    import torchvision

    def boom(*a, **k):
        raise AssertionError(f"download attempted: {a} {k}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", boom, raising=False)
    torch.manual_seed(0)
    yield


@pytest.fixture()
def no_weights(monkeypatch, tmp_path):
    """Hub cache pointed at an empty dir, env vars unset, downloads off, model cache empty."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    for name in ("GLVC_VGG16_WEIGHTS", "GLVC_ALEXNET_WEIGHTS", "GLVC_VGG16_URL", "GLVC_ALEXNET_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLVC_WEIGHTS_DOWNLOAD", "0")
    M.clear_model_cache()
    yield tmp_path
    M.clear_model_cache()


# ---------------------------------------------------------------- PSNR


def test_psnr_constant_error_one_level():
    ref = np.full((2, 8, 8, 3), 100, np.uint8)
    dist = ref + 1
    expected = 10 * math.log10(255**2 / 1.0)  # 48.1308 dB
    assert M.psnr_rgb(ref, dist).value == pytest.approx(expected, abs=1e-9)
    assert round(M.psnr_rgb(ref, dist).value, 2) == 48.13
    # Y = 0.299 R + 0.587 G + 0.114 B also moves by exactly 1
    assert M.psnr_y(ref, dist).value == pytest.approx(expected, abs=1e-4)


def test_psnr_hand_computed_per_frame_and_channel():
    ref = np.full((2, 4, 4, 3), 50, np.uint8)
    dist = ref.copy()
    dist[0, ..., 0] += 3  # frame 0: R off by 3 -> MSE_RGB = 9/3 = 3, dY = 0.897
    dist[1] += 2  # frame 1: all off by 2 -> MSE 4, dY = 2
    p = M.psnr_rgb(ref, dist)
    f0, f1 = 10 * math.log10(255**2 / 3), 10 * math.log10(255**2 / 4)
    assert p.per_frame == pytest.approx((f0, f1))
    assert p.value == pytest.approx((f0 + f1) / 2)
    py = M.psnr_y(ref, dist)
    assert py.per_frame == pytest.approx((10 * math.log10(255**2 / 0.897**2), f1), abs=1e-4)


def test_psnr_identical_is_capped_and_str():
    a = _clip(2, 16, 16)
    v = M.psnr_rgb(a, a)
    assert v.value == M.PSNR_MAX_DB
    assert str(v) == "100.0000"


def test_input_validation_messages():
    a = _clip(2, 16, 16)
    with pytest.raises(ValueError, match=r"\(2, 16, 16, 3\) vs \(1, 16, 16, 3\)"):
        M.psnr_rgb(a, a[:1])
    with pytest.raises(TypeError, match="float32"):
        M.psnr_rgb(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_all(a, a, metrics=("psnr", "nope"))


# ---------------------------------------------------------------- (MS-)SSIM


def test_ms_ssim_identical_and_degraded():
    a = _clip(2, 176, 176)
    same = M.ms_ssim(a, a, device="cpu")
    assert same.name == "MS-SSIM"
    assert same.value == pytest.approx(1.0, abs=1e-5)
    mild = M.ms_ssim(a, _noise(a, 4), device="cpu")
    strong = M.ms_ssim(a, _noise(_blur(a, 3.0), 15), device="cpu")
    assert mild.name == "MS-SSIM" and 1.0 > mild.value > strong.value


def test_small_frames_fall_back_to_ssim():
    a = _clip(3, 48, 64)
    same = M.ms_ssim(a, a, device="cpu", batch_frames=2)
    assert same.name.startswith("SSIM (frame too small for MS-SSIM")
    assert "48x64" in same.name
    assert same.value == pytest.approx(1.0, abs=1e-5)
    s1 = M.ms_ssim(a, _blur(a, 1.0), device="cpu").value
    s2 = M.ms_ssim(a, _blur(a, 2.5), device="cpu").value
    assert 1.0 > s1 > s2


# ---------------------------------------------------------------- VMAF


def test_vmaf_identical_is_100():
    a = _clip(5, 48, 64)
    v = M.vmaf(a, a, device="cpu")
    assert v.name == "VMAF"
    assert len(v.per_frame) == 5
    # frames with motion reach the 100 clip; the first frame has motion2 = 0 by
    # definition, for which the v0.6.1 model predicts 97.43 even on identical frames
    assert v.per_frame[1:] == pytest.approx([100.0] * 4, abs=1e-3)
    assert v.per_frame[0] == pytest.approx(97.43, abs=0.05)
    assert v.value > 99.4


def test_vmaf_ranks_blur_and_noise():
    a = _clip(5, 48, 64)
    blur = [M.vmaf(a, _blur(a, s), device="cpu").value for s in (0.6, 1.2, 2.5)]
    noise = [M.vmaf(a, _noise(a, s), device="cpu").value for s in (4, 12, 30)]
    assert 100.5 > blur[0] > blur[1] > blur[2], blur
    assert 100.5 > noise[0] > noise[1] > noise[2], noise


def test_vmaf_chunking_matches_whole_clip():
    a = _clip(7, 48, 64)
    d = _noise(_blur(a, 1.0), 5)
    whole = M.vmaf(a, d, device="cpu", batch_frames=100)
    chunked = M.vmaf(a, d, device="cpu", batch_frames=2)
    assert chunked.per_frame == pytest.approx(whole.per_frame, abs=1e-3)


def test_vmaf_too_small_is_unavailable():
    a = _clip(2, 16, 64)
    v = M.vmaf(a, a, device="cpu")
    assert v.value is None and "16x64" in v.unavailable_reason
    assert str(v).startswith("unavailable: ")


# ---------------------------------------------------------------- ColorVideoVDP


@pytest.mark.slow
def test_cvvdp_identical_is_10_jod_and_falls_with_degradation():
    a = _clip(3, 48, 64)
    same = M.cvvdp(a, a, fps=25)
    assert same.name == "ColorVideoVDP" and same.per_frame is None
    assert same.value == pytest.approx(10.0, abs=1e-4)
    noise = [M.cvvdp(a, _noise(a, s), fps=25).value for s in (4, 12, 30)]
    blur = [M.cvvdp(a, _blur(a, s), fps=25).value for s in (1.2, 2.5)]
    assert 10.0 > noise[0] > noise[1] > noise[2], noise
    assert 10.0 > blur[0] > blur[1], blur
    assert noise[2] < 8.0  # sigma 30 noise is plainly visible: far below "no difference"


def test_cvvdp_input_errors_are_clear():
    a = _clip(2, 16, 16)
    with pytest.raises(TypeError, match="uint8.*float32"):
        M.cvvdp(a, a.astype(np.float32), fps=25)
    with pytest.raises(ValueError, match=r"\(2, 16, 16, 3\) vs \(1, 16, 16, 3\)"):
        M.cvvdp(a, a[:1], fps=25)
    with pytest.raises(ValueError, match=r"shape \(T, H, W, 3\), got \(2, 16, 16, 4\)"):
        M.cvvdp(np.zeros((2, 16, 16, 4), np.uint8), np.zeros((2, 16, 16, 4), np.uint8), fps=25)
    for bad in (0, -25, float("nan")):
        with pytest.raises(ValueError, match="fps must be a positive number"):
            M.cvvdp(a, a, fps=bad)
    with pytest.raises(TypeError, match="fps must be a number"):
        M.cvvdp(a, a, fps="fast")
    thin = np.zeros((2, 1, 8, 3), np.uint8)
    v = M.cvvdp(thin, thin, fps=25)
    assert v.value is None and "1x8" in v.unavailable_reason


def test_cvvdp_in_compute_all_needs_fps():
    a = _clip(3, 32, 32)
    d = _noise(a, 12)
    without = M.compute_all(a, d, metrics=("psnr", "cvvdp"), device="cpu")
    assert without["cvvdp"].value is None and "frame rate" in without["cvvdp"].unavailable_reason
    res = M.compute_all(a, d, metrics=("psnr", "cvvdp"), device="cpu", fps=25)
    assert res["cvvdp"].value == pytest.approx(M.cvvdp(a, d, fps=25).value, abs=1e-5)
    assert 0 < res["cvvdp"].value < 10
    assert f"JOD ({M.CVVDP_DISPLAY} display)" in M.format_results(res)


@pytest.mark.slow
def test_cvvdp_agrees_with_the_packages_command_line(tmp_path):
    """Same frames through ``cvvdp --test ... --ref ... --display standard_fhd --fps 25`` (BMP frames:
    the package reads PNGs with FreeImage, which it would download)."""
    import subprocess

    from PIL import Image

    a = _clip(4, 48, 64)
    d = _noise(_blur(a, 1.0), 6)
    for k in range(a.shape[0]):
        Image.fromarray(a[k]).save(tmp_path / f"ref_{k:04d}.bmp")
        Image.fromarray(d[k]).save(tmp_path / f"test_{k:04d}.bmp")
    exe = os.path.join(os.path.dirname(sys.executable), "cvvdp")
    run = subprocess.run([exe, "--test", "test_%04d.bmp", "--ref", "ref_%04d.bmp", "--display", M.CVVDP_DISPLAY,
                          "--fps", "25", "--device", "cpu", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    cli = float(run.stdout.strip().splitlines()[-1])
    ours = M.cvvdp(a, d, fps=25, device="cpu").value
    assert ours == pytest.approx(cli, abs=0.01) and cli < 9.9


def test_cvvdp_display_model_is_the_one_documented():
    """CVVDP_DISPLAY's docstring (and the README) describe the package's standard_fhd entry."""
    import json

    import pycvvdp

    path = os.path.join(os.path.dirname(pycvvdp.__file__), "vvdp_data", "display_models.json")
    with open(path) as f:
        d = json.load(f)[M.CVVDP_DISPLAY]
    assert (d["resolution"], d["diagonal_size_inches"], d["max_luminance"], d["contrast"], d["E_ambient"], d["viewing_distance_meters"]) == (
        [1920, 1080], 24, 200, 1000, 250, 0.6)


# ---------------------------------------------------------------- LPIPS / DISTS plumbing


def _lpips_reference(net):
    import lpips as lpips_pkg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = lpips_pkg.LPIPS(net=net, pnet_rand=True, verbose=False)
    # torchvision-style keys: lpips' slice children are named by feature index
    sd = {}
    for sl in ref_model.net.children():
        for name, child in sl.named_children():
            if isinstance(child, torch.nn.Conv2d):
                sd[f"features.{name}.weight"] = child.weight.detach().clone()
                sd[f"features.{name}.bias"] = child.bias.detach().clone()
    return ref_model, sd


def _as_tensor01(frames):
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_reference_package(net):
    a = _clip(3, 64, 64)
    d = _noise(_blur(a, 1.0), 6)
    ref_model, sd = _lpips_reference(net)
    with torch.no_grad():
        expected = ref_model(_as_tensor01(a), _as_tensor01(d), normalize=True).reshape(-1)
    ours = M.lpips(a, d, net=net, device="cpu", batch_frames=2, backbone_state_dict=sd)
    assert ours.per_frame == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-6)
    assert ours.value == pytest.approx(expected.mean().item(), rel=1e-4)
    # passing the reference object itself gives the same numbers
    via_model = M.lpips(a, d, net=net, device="cpu", model=ref_model)
    assert via_model.per_frame == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-6)
    assert M.lpips(a, a, net=net, device="cpu", backbone_state_dict=sd).value == pytest.approx(0.0, abs=1e-6)


def _dists_reference(monkeypatch):
    import torchvision
    from DISTS_pytorch import DISTS_pt

    # the package hard-codes vgg16(pretrained=True) (a download): give it a random VGG16
    shim = types.SimpleNamespace(vgg16=lambda pretrained=True, **k: torchvision.models.vgg16(weights=None))
    monkeypatch.setattr(DISTS_pt, "models", shim)
    prefix_weights = os.path.join(sys.prefix, "weights.pt")  # where the package reads alpha/beta
    ref_model = DISTS_pt.DISTS(load_weights=os.path.isfile(prefix_weights)).eval()
    if not os.path.isfile(prefix_weights):
        pkg = torch.load(os.path.join(os.path.dirname(DISTS_pt.__file__), "weights.pt"), weights_only=True)
        ref_model.alpha.data, ref_model.beta.data = pkg["alpha"], pkg["beta"]
    sd = {}
    for st in (ref_model.stage1, ref_model.stage2, ref_model.stage3, ref_model.stage4, ref_model.stage5):
        for name, child in st.named_children():
            if isinstance(child, torch.nn.Conv2d):
                sd[f"features.{name}.weight"] = child.weight.detach().clone()
                sd[f"features.{name}.bias"] = child.bias.detach().clone()
    return ref_model, sd


def test_dists_matches_reference_package(monkeypatch):
    a = _clip(3, 64, 64)
    d = _noise(_blur(a, 1.2), 6)
    ref_model, sd = _dists_reference(monkeypatch)
    with torch.no_grad():
        expected = ref_model(_as_tensor01(a), _as_tensor01(d)).reshape(-1)
    ours = M.dists(a, d, device="cpu", batch_frames=2, backbone_state_dict=sd)
    assert ours.name == "DISTS"
    assert ours.per_frame == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-6)
    # our alpha/beta come from the file shipped inside DISTS_pytorch: same as the reference's
    ours_model = M._build_dists(sd, torch.device("cpu"))
    assert torch.equal(ours_model.alpha, ref_model.alpha) and torch.equal(ours_model.beta, ref_model.beta)
    assert M.dists(a, a, device="cpu", model=ours_model).value == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- unavailable


def test_unavailable_without_backbone_weights(no_weights):
    a = _clip(2, 64, 64)
    for v in (M.lpips(a, a, net="alex", device="cpu"), M.lpips(a, a, net="vgg", device="cpu"), M.dists(a, a, device="cpu")):
        assert v.value is None and not v.available
        assert str(no_weights) in v.unavailable_reason
        assert str(v).startswith("unavailable: ")
        with pytest.raises(ValueError, match="unavailable"):
            float(v)
    assert "alexnet-owt-7be5be79.pth" in M.lpips(a, a, device="cpu").unavailable_reason


def test_env_var_to_missing_file_is_unavailable(no_weights, monkeypatch):
    missing = str(no_weights / "nope.pth")
    monkeypatch.setenv("GLVC_VGG16_WEIGHTS", missing)
    v = M.dists(_clip(1, 32, 32), _clip(1, 32, 32), device="cpu")
    assert v.value is None and "GLVC_VGG16_WEIGHTS" in v.unavailable_reason and missing in v.unavailable_reason


def test_weights_loaded_from_env_var_and_hash_checked(no_weights, monkeypatch):
    a = _clip(2, 64, 64)
    d = _noise(a, 8)
    ref_model, sd = _lpips_reference("alex")
    # a file from the env var (any name) is loaded and used
    path = no_weights / "my_alexnet.pth"
    torch.save(sd, path)
    monkeypatch.setenv("GLVC_ALEXNET_WEIGHTS", str(path))
    v = M.lpips(a, d, net="alex", device="cpu")
    w = M.lpips(a, d, net="alex", device="cpu", backbone_state_dict=sd)
    assert v.value is not None and v.value == pytest.approx(w.value, rel=1e-6)
    # a file under torchvision's canonical name must match the sha256 prefix in the name
    monkeypatch.delenv("GLVC_ALEXNET_WEIGHTS")
    ckpt = no_weights / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(sd, ckpt / "alexnet-owt-7be5be79.pth")
    assert M.backbone_weights_path("alexnet")[0] == str(ckpt / "alexnet-owt-7be5be79.pth")
    bad = M.lpips(a, d, net="alex", device="cpu")
    assert bad.value is None and "7be5be79" in bad.unavailable_reason


def test_compute_all_cpu(no_weights):
    a = _clip(5, 48, 64)
    d = _noise(_blur(a, 1.0), 4)
    res = M.compute_all(a, d, device="cpu", batch_frames=2, fps=25)
    assert list(res) == list(M.ALL_METRICS)
    assert 25 < res["psnr"].value < 45 and 25 < res["psnr_y"].value < 50
    assert 0.5 < res["ms_ssim"].value < 1.0
    assert 0 <= res["vmaf"].value < 100
    assert res["lpips"].value is None and res["dists"].value is None
    assert "downloads are off" in res["lpips"].unavailable_reason
    assert 0 < res["cvvdp"].value < 10
    assert res["psnr"].value == pytest.approx(M.psnr_rgb(a, d).value)
    assert "unavailable" in M.format_results(res)


# ---------------------------------------------------------------- backbone downloads (loopback only)


@contextlib.contextmanager
def _weights_server(folder):
    """HTTP server on 127.0.0.1 serving ``folder``; yields (base URL, list of requested paths)."""
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", hits
    finally:
        server.shutdown()
        server.server_close()


def _hub_named(state_dict, folder, stem, corrupt=False):
    """Save ``state_dict`` as ``<stem>-<sha256[:8]>.pth`` (torch hub's naming); with ``corrupt``
    one byte is changed after naming, so the content no longer matches the name."""
    tmp = folder / f"{stem}.tmp"
    torch.save(state_dict, tmp)
    data = bytearray(tmp.read_bytes())
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    if corrupt:
        data[len(data) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    tmp.unlink()
    return name


@pytest.fixture()
def downloads(no_weights, monkeypatch):
    """Downloads on (conftest turns them off), with torch hub's real downloader."""
    monkeypatch.setenv("GLVC_WEIGHTS_DOWNLOAD", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _REAL_DOWNLOAD)
    yield no_weights / "torch_home" / "hub" / "checkpoints"


def test_default_urls_are_torchvisions_and_match_the_cache_names(monkeypatch):
    import torchvision.models as tvm

    monkeypatch.delenv("GLVC_VGG16_URL", raising=False)
    monkeypatch.delenv("GLVC_ALEXNET_URL", raising=False)
    assert M.weights_url("vgg16") == tvm.VGG16_Weights.IMAGENET1K_V1.url
    assert M.weights_url("alexnet") == tvm.AlexNet_Weights.IMAGENET1K_V1.url
    assert M.weights_url("vgg16").endswith("/vgg16-397923af.pth")
    assert M.weights_url("alexnet").endswith("/alexnet-owt-7be5be79.pth")


@pytest.mark.slow
def test_lpips_and_dists_download_their_backbones(downloads, tmp_path, monkeypatch):
    a = _clip(1, 64, 64)
    d = _noise(_blur(a, 1.0), 6)
    _, alex = _lpips_reference("alex")
    _, vgg = _lpips_reference("vgg")
    vgg = {k: v.half() for k, v in vgg.items()}  # 29 MB instead of 59 MB; loaded into float32 layers
    served = tmp_path / "served"
    served.mkdir()
    names = {"alexnet": _hub_named(alex, served, "alexnet"), "vgg16": _hub_named(vgg, served, "vgg16")}
    with _weights_server(served) as (base, hits):
        monkeypatch.setenv("GLVC_ALEXNET_URL", base + names["alexnet"])
        monkeypatch.setenv("GLVC_VGG16_URL", base + names["vgg16"])
        got = {
            "alex": M.lpips(a, d, net="alex", device="cpu"),
            "vgg": M.lpips(a, d, net="vgg", device="cpu"),
            "dists": M.dists(a, d, device="cpu"),
        }
        assert sorted(hits) == sorted("/" + n for n in names.values())  # one request per file
        # the cached files serve later calls without asking the server again
        M.clear_model_cache()
        assert M.lpips(a, d, net="alex", device="cpu").value == pytest.approx(got["alex"].value, rel=1e-6)
        assert len(hits) == 2
    for name in names.values():
        assert (downloads / name).read_bytes() == (served / name).read_bytes()
    # the numbers are those of the served weights (not of a random trunk)
    assert got["alex"].value == pytest.approx(M.lpips(a, d, net="alex", device="cpu", backbone_state_dict=alex).value, rel=1e-6)
    assert got["vgg"].value == pytest.approx(M.lpips(a, d, net="vgg", device="cpu", backbone_state_dict=vgg).value, rel=1e-6)
    assert got["dists"].value == pytest.approx(M.dists(a, d, device="cpu", backbone_state_dict=vgg).value, rel=1e-6)
    assert all(v.value > 0 for v in got.values())


def test_download_with_wrong_hash_is_refused_and_remembered(downloads, tmp_path, monkeypatch):
    a = _clip(2, 64, 64)
    _, alex = _lpips_reference("alex")
    served = tmp_path / "served"
    served.mkdir()
    name = _hub_named(alex, served, "alexnet", corrupt=True)
    with _weights_server(served) as (base, hits):
        monkeypatch.setenv("GLVC_ALEXNET_URL", base + name)
        v = M.lpips(a, a, net="alex", device="cpu")
        assert v.value is None and "invalid hash value" in v.unavailable_reason and name in v.unavailable_reason
        assert hits == ["/" + name]
        assert not downloads.exists() or not list(downloads.iterdir())  # nothing kept, not even a .partial
        again = M.lpips(a, a, net="alex", device="cpu")  # remembered: no second request
        assert again.value is None and "no new try" in again.unavailable_reason and hits == ["/" + name]


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_download_is_unavailable_within_seconds(downloads, monkeypatch):
    a = _clip(1, 32, 32)
    monkeypatch.setenv("GLVC_VGG16_URL", f"http://127.0.0.1:{_closed_port()}/vgg16-397923af.pth")
    start = time.perf_counter()
    v = M.dists(a, a, device="cpu")
    first = time.perf_counter() - start
    assert v.value is None and "download from" in v.unavailable_reason and "refused" in v.unavailable_reason.lower()
    assert first < 5.0, first
    start = time.perf_counter()
    again = M.lpips(a, a, net="vgg", device="cpu")  # same file: the failure is remembered
    assert again.value is None and "no new try" in again.unavailable_reason
    assert time.perf_counter() - start < 1.0


def test_download_from_a_server_that_never_answers_gives_up(downloads, monkeypatch):
    """A listener that accepts the connection (the kernel does) but never replies: the request
    stops waiting after WEIGHTS_STALL_S without data."""
    monkeypatch.setattr(M, "WEIGHTS_STALL_S", 1.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        monkeypatch.setenv("GLVC_ALEXNET_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/alexnet-owt-7be5be79.pth")
        start = time.perf_counter()
        v = M.lpips(_clip(1, 32, 32), _clip(1, 32, 32), device="cpu")
        assert time.perf_counter() - start < 5.0
        assert v.value is None and "no data for 1 s" in v.unavailable_reason
