"""Smoke tests of ``python -m glvc eval`` and ``python -m glvc bench`` on a tiny random model."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from glvc import cli
from glvc.eval_clips import discover_clips
from glvc.evaluate import EvalConfig, run_eval, span_crfs
from glvc.rd import bd_pair, pareto_front

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MP4 = os.path.join(ROOT, "tests", "data", "tiny.mp4")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    from glvc.codec import LatentCodec
    from glvc.pipeline import GLVC
    from glvc.tokenizer import Tokenizer

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True],
        patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=8,
    )
    codec = LatentCodec(channels=16, y_channels=16, hyper_channels=8, memory_channels=8)
    path = tmp_path_factory.mktemp("model") / "tiny"
    GLVC(Tokenizer(vae), codec).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def frame_clip(tmp_path_factory):
    """A folder of 9 PNG frames, 64x64: a moving gradient with texture, plus a manifest giving 30 fps."""
    root = tmp_path_factory.mktemp("clips")
    folder = root / "ramp"
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    for k in range(9):
        f = np.stack([(x * 3 + 5 * k) % 256, (y * 4 + 2 * k) % 256, 128 + 90 * np.sin((x + y + 3 * k) / 9.0)], -1)
        f = np.clip(np.round(f + rng.normal(0, 4, f.shape)), 0, 255).astype(np.uint8)
        Image.fromarray(f).save(folder / f"{k:05d}.png")
    (root / "manifest.json").write_text(json.dumps({"clips": [{"name": "ramp", "dir": "ramp", "fps": 30.0}]}))
    return str(root)


@pytest.fixture(autouse=True)
def no_backbones(monkeypatch, tmp_path):
    """LPIPS/DISTS must come back unavailable (with a reason), whatever this machine holds."""
    missing = str(tmp_path / "missing.pth")
    monkeypatch.setenv("GLVC_VGG16_WEIGHTS", missing)
    monkeypatch.setenv("GLVC_ALEXNET_WEIGHTS", missing)
    from glvc import metrics

    metrics.clear_model_cache()


def test_discover_clips(frame_clip):
    srcs = discover_clips([frame_clip, TINY_MP4])
    assert [(s.name, s.kind) for s in srcs] == [("ramp", "frames"), ("tiny", "video")]
    assert float(srcs[0].fps) == 30.0
    with pytest.raises(ValueError):
        discover_clips([os.path.join(frame_clip, "nope")])


def test_span_crfs_and_pareto():
    assert span_crfs(20, 28, 5, 0, 51) == [20, 22, 24, 26, 28]
    assert span_crfs(30, 31, 5, 0, 51) == [28, 29, 30, 31, 32]  # widened to 5 distinct CRFs
    assert span_crfs(50, 51, 3, 0, 51) == [49, 50, 51]
    r, v, dropped = pareto_front([0.1, 0.2, 0.3, 0.4], [30.0, 29.0, 33.0, 35.0])
    assert r.tolist() == [0.1, 0.3, 0.4] and dropped == 1


def test_bd_pair_sign_conventions():
    rates = np.array([0.01, 0.02, 0.04, 0.08])
    psnr = np.array([30.0, 33.0, 36.0, 39.0])
    lp = np.array([0.4, 0.3, 0.2, 0.1])
    # the test codec reaches the same quality with half the bits: BD-rate -50 %
    a = list(zip(rates, psnr))
    t = list(zip(rates / 2, psnr))
    assert bd_pair(a, t, False)["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert bd_pair(a, t, False)["bd_metric"] == pytest.approx(3.0, abs=0.05)
    # lower-is-better metric: same sign for BD-rate, BD-metric negative = better
    out = bd_pair(list(zip(rates, lp)), list(zip(rates / 2, lp)), True)
    assert out["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert out["bd_metric"] < 0
    # no overlap in quality: no number, a reason
    far = bd_pair(a, list(zip(rates, psnr - 20)), False)
    assert far["bd_rate"] is None and "no quality overlap" in far["bd_rate_note"]
    assert far["bd_metric"] == pytest.approx(-20.0, abs=1e-6)


@pytest.mark.slow
def test_eval_smoke(tiny_model_dir, frame_clip, tmp_path):
    out = tmp_path / "eval"
    cfg = EvalConfig(
        codecs=("glvc", "x264", "x265"),
        glvc_rates=(0, 63),
        baseline_points=3,
        metrics=("psnr", "ms_ssim", "vmaf", "lpips", "dists", "cvvdp"),
        max_frames=9,
        progress=False,
    )
    result = run_eval([frame_clip], str(out), cfg, model=tiny_model_dir, command="test")
    rows = result.rows
    by_codec = {c: [r for r in rows if r["codec"] == c] for c in ("glvc", "x264", "x265")}
    assert [r["rate"] for r in by_codec["glvc"]] == [0, 63]
    assert len(by_codec["x264"]) == 3 and len(by_codec["x265"]) == 3
    for codec, rs in by_codec.items():
        for r in rs:
            assert r["frames"] == 9 and (r["width"], r["height"]) == (64, 64) and r["fps"] == 30.0
            assert r["bytes"] > 0 and r["bpp"] == pytest.approx(8 * r["bytes"] / (9 * 64 * 64))
            assert r["kbps"] == pytest.approx(8 * r["bytes"] * 30.0 / 9 / 1000)
            assert r["encode_fps"] > 0 and r["decode_fps"] > 0
            assert isinstance(r["psnr"], float) and isinstance(r["vmaf"], float)
            assert isinstance(r["cvvdp"], float) and r["cvvdp"] < 10 and r["cvvdp_unavailable"] is None  # JOD (may go below 0)
            assert r["ms_ssim"] is not None and r["ms_ssim_variant"].startswith("SSIM")  # 64 px < 161 px
            for m in ("lpips", "dists"):
                assert r[m] is None and "missing.pth" in r[f"{m}_unavailable"]
    # bpp rises with the rate (GLVC quality up, baseline CRF down)
    g = by_codec["glvc"]
    assert g[1]["bpp"] > g[0]["bpp"]
    for codec in ("x264", "x265"):
        rs = sorted(by_codec[codec], key=lambda r: r["rate"])
        assert len({r["rate"] for r in rs}) == 3
        # (at the top of the CRF range sizes need not fall monotonically on a 9-frame 64 px clip)
        assert rs[0]["bpp"] > rs[-1]["bpp"]
        # span mode: the sweep brackets GLVC's bytes (or hits the end of the CRF range)
        assert rs[0]["bytes"] >= g[1]["bytes"] or rs[0]["rate"] == 0
        assert rs[-1]["bytes"] <= g[0]["bytes"] or rs[-1]["rate"] == 51
    assert "stage_seconds" in g[0] and "tokenizer_encode" in g[0]["stage_seconds"]["encode"]

    # files
    with open(out / "eval.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 8
    lp = [t for t in table if t["codec"] == "x264"][0]
    assert lp["lpips"] == "" and lp["lpips_unavailable"] and float(lp["psnr"]) > 0
    data = json.loads((out / "eval.json").read_text())
    assert len(data["rows"]) == 8 and data["config"]["glvc_rates"] == [0, 63]
    assert "lpips" in data["unavailable_metrics"] and "dists" in data["unavailable_metrics"]
    md = (out / "bd_rate.md").read_text()
    assert "BD-rate vs x265" in md and "BD-rate vs x264" in md
    # x264 against x265 has a finite BD-rate on PSNR (both sweeps cover the same bpp range)
    e = [b for b in result.bd if b["anchor"] == "x265" and b["test"] == "x264" and b["metric"] == "psnr"][0]
    assert e["bd_rate"] is not None and np.isfinite(e["bd_rate"])
    assert f"{e['bd_rate']:+.1f} %" in md
    lp_entry = [b for b in result.bd if b["metric"] == "lpips"][0]
    assert lp_entry["bd_rate"] is None and lp_entry["bd_rate_note"].startswith("unavailable:")
    # ColorVideoVDP is higher-is-better: BD entries like PSNR's, its own RD plot
    from glvc.report import METRIC_LABELS
    from glvc.metrics import CVVDP_DISPLAY

    cv = [b for b in result.bd if b["metric"] == "cvvdp"]
    assert cv and not any(b["lower_is_better"] or b["unavailable"] for b in cv)
    assert data["config"]["cvvdp_display"] == CVVDP_DISPLAY and CVVDP_DISPLAY in METRIC_LABELS["cvvdp"]
    assert METRIC_LABELS["cvvdp"] in md
    for m in ("psnr", "ms_ssim", "vmaf", "cvvdp"):
        png = out / f"rd_{m}.png"
        assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "rd_lpips.png").exists()
    assert "## Rate points" in (out / "results.md").read_text()
    assert not (out / "rows.partial.jsonl").exists()


def test_eval_cli_baselines_only_on_video(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli.main([
        "eval", TINY_MP4, "--codecs", "x264", "x265", "--crf", "x264=24,34,44", "--crf", "x265=26,36,46",
        "--metrics", "psnr", "lpips", "--out", str(out), "--quiet",
    ])
    assert rc == 0
    data = json.loads((out / "eval.json").read_text())
    assert [(r["codec"], r["rate"]) for r in data["rows"]] == [
        ("x264", 24), ("x264", 34), ("x264", 44), ("x265", 26), ("x265", 36), ("x265", 46)
    ]
    assert (out / "rd_psnr.png").exists()
    printed = capsys.readouterr().out
    # a short summary and the paths, not the whole of bd_rate.md
    bd = {(e["anchor"], e["test"]): "n/a" if e["bd_rate"] is None else f"{e['bd_rate']:+.1f} %"
          for e in data["bd"] if e["metric"] == "psnr"}
    assert printed.splitlines()[:4] == [
        "6 rate points (1 clip(s): tiny; codecs: x264, x265) in " + printed.splitlines()[0].split(" in ")[-1],
        f"BD-rate vs x265 on PSNR-RGB (negative = fewer bits): x264 tiny {bd['x265', 'x264']}",
        f"BD-rate vs x264 on PSNR-RGB (negative = fewer bits): x265 tiny {bd['x264', 'x265']}",
        f"all BD tables and their notes: {out / 'bd_rate.md'}; wrote:",
    ]
    assert "###" not in printed and "Notes:" not in printed and f"  {out / 'eval.json'}" in printed.splitlines()
    assert cli.main(["eval", str(tmp_path / "missing.mp4"), "--codecs", "x264", "--out", str(out), "--quiet"]) == 2


def test_eval_says_how_to_build_the_validation_set(tmp_path, capsys):
    missing = str(tmp_path / "data" / "val_set")
    assert cli.main(["eval", missing, "--codecs", "x264", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no such clip or folder: {missing}; the validation set is not in the repository: "
                          f"`python -m glvc.data.prepare --val-out {missing}` builds it")
    assert "downloads" in err and not (tmp_path / "out").exists()


def test_unavailable_reasons_are_portable_and_one_footnote(monkeypatch, tmp_path):
    """The same missing backbone, asked at different moments, reads the same on every row: one
    footnote, with the home folder as ~ and no "N s ago" (they made 6 different footnotes per table)."""
    from glvc.evaluate import _metric_fields
    from glvc.metrics import MetricValue
    from glvc.rd import compute_bd
    from glvc.report import bd_markdown, portable_note

    monkeypatch.setenv("HOME", str(tmp_path))
    hub = f"{tmp_path}/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth"
    rows = []
    for k, (codec, bpp, psnr) in enumerate([("x264", 0.01, 30.0), ("x264", 0.02, 33.0), ("x264", 0.04, 36.0),
                                             ("x265", 0.008, 30.5), ("x265", 0.016, 33.5), ("x265", 0.032, 36.5)]):
        why = (f"ImageNet alexnet weights not found: no {hub} and $GLVC_ALEXNET_WEIGHTS unset; download from "
               f"https://download.pytorch.org/models/alexnet-owt-7be5be79.pth failed {200 + 11 * k} s ago "
               f"(gaierror: [Errno -2] Name or service not known); no new try for {400 - 11 * k} s")
        results = {"psnr": MetricValue("PSNR", psnr), "lpips": MetricValue("LPIPS", None, unavailable_reason=why)}
        rows.append({"clip": "bikes", "codec": codec, "bpp": bpp, **_metric_fields(results, ["psnr", "lpips"])})
    assert {r["lpips_unavailable"] for r in rows} == {
        "ImageNet alexnet weights not found: no ~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth and "
        "$GLVC_ALEXNET_WEIGHTS unset; download from https://download.pytorch.org/models/alexnet-owt-7be5be79.pth "
        "failed (gaierror: [Errno -2] Name or service not known)"
    }
    md = bd_markdown(compute_bd(rows, ["psnr", "lpips"], anchors=["x265"]), ["psnr", "lpips"])
    notes = [line for line in md.splitlines() if "unavailable:" in line]
    assert len(notes) == 1 and notes[0].count("ImageNet alexnet") == 1, notes
    # paths inside the repository are written relative to it; "(started N s ago)" goes too
    inside = os.path.join(ROOT, "weights", "vgg.pth")
    assert portable_note(f"no {inside}; still downloading x (started 3 s ago)") == "no weights/vgg.pth; still downloading x"


def _rows(clip: str, width: int, height: int, variant: str) -> list[dict]:
    """RD rows shaped like docs/results' bikes/carphone: bpp from 0.0023 to 0.06."""
    rows = []
    for codec, points in (("glvc", [0.0023, 0.0053, 0.0109, 0.0227, 0.0404]), ("x265", [0.0037, 0.0057, 0.0092, 0.018, 0.0598])):
        for i, bpp in enumerate(points):
            rows.append({"clip": clip, "codec": codec, "rate_param": "quality" if codec == "glvc" else "crf", "rate": i,
                         "frames": 33, "width": width, "height": height, "bytes": 100 + i, "bpp": bpp, "kbps": 1.0 + i,
                         "psnr": 20.0 + 3 * i, "ms_ssim": 0.5 + 0.1 * i, "ms_ssim_variant": variant,
                         "encode_fps": 1.0, "decode_fps": 1.0})
    return rows


SSIM_VARIANT = "SSIM (frame too small for MS-SSIM: 144x176, needs >= 161 px per side)"


def test_rate_table_names_what_was_computed():
    from glvc.report import points_markdown

    mixed = points_markdown(_rows("bikes", 640, 272, "MS-SSIM") + _rows("carphone", 176, 144, SSIM_VARIANT), ["psnr", "ms_ssim"])
    header, _, *lines = mixed.splitlines()
    assert "| MS-SSIM (SSIM where marked) |" in header
    assert all(line.split(" | ")[7].endswith("(SSIM)") == line.startswith("| carphone") for line in lines)
    only_ssim = points_markdown(_rows("carphone", 176, 144, SSIM_VARIANT), ["ms_ssim"])
    assert "| SSIM |" in only_ssim.splitlines()[0] and "(SSIM)" not in only_ssim
    assert "| MS-SSIM |" in points_markdown(_rows("bikes", 640, 272, "MS-SSIM"), ["ms_ssim"]).splitlines()[0]


def test_rd_plot_tick_labels_do_not_overlap():
    """At low bpp a decade is narrow: every minor tick's label (0.003, 0.004, ...) ran into the next."""
    import matplotlib.pyplot as plt

    from glvc.report import rd_figure

    narrow = [dict(r, clip="narrow", bpp=0.006 + 0.0005 * r["rate"]) for r in _rows("bikes", 640, 272, "MS-SSIM")]
    fig = rd_figure(_rows("bikes", 640, 272, "MS-SSIM") + _rows("carphone", 176, 144, SSIM_VARIANT) + narrow, "psnr")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = sorted((label.get_window_extent(renderer) for label in ax.xaxis.get_ticklabels(which="both")
                            if label.get_visible() and label.get_text()), key=lambda b: b.x0)
            assert len(boxes) >= 3
            gaps = [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])]
            assert min(gaps) > 0, [label.get_text() for label in ax.xaxis.get_ticklabels(which="both")]
    finally:
        plt.close(fig)


def test_bench_smoke(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = cli.main(["bench", "--clip", TINY_MP4, "--model", tiny_model_dir, "--quality", "40", "--repeat", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    r = json.loads((out / "bench.json").read_text())
    g, x = r["glvc"], r["x265"]
    assert r["clip"]["frames"] == 9 and (r["clip"]["width"], r["clip"]["height"]) == (64, 48)
    assert g["encode_fps"] > 0 and g["decode_fps"] > 0 and x["encode_fps"] > 0 and x["decode_fps"] > 0
    assert r["ratios_glvc_over_x265"]["encode_fps"] == pytest.approx(g["encode_fps"] / x["encode_fps"])
    assert r["ratios_glvc_over_x265"]["decode_fps"] == pytest.approx(g["decode_fps"] / x["decode_fps"])
    enc, dec = g["encode_stages"], g["decode_stages"]
    assert {"tokenizer_encode", "latent_coding.latent_transforms", "latent_coding.entropy_coding"} <= set(enc)
    assert {"tokenizer_decode", "latent_decoding.latent_transforms", "latent_decoding.entropy_coding"} <= set(dec)
    assert enc["latent_coding.entropy_coding"] > 0 and dec["latent_decoding.entropy_coding"] > 0
    assert sum(enc.values()) <= g["encode_seconds"] * 1.01 and sum(dec.values()) <= g["decode_seconds"] * 1.01
    assert g["encode_memory"]["peak_rss_mib"] > 50 and r["process_peak_rss_mib"] >= g["encode_memory"]["peak_rss_mib"] * 0.99
    assert x["crf"] in range(0, 52) and "matched" in x["crf_choice"]
    assert r["repeat"] == 2 and len(g["encode_seconds_all_runs"]) == 2 and g["encode_seconds"] == min(g["encode_seconds_all_runs"])
    assert len(x["decode_seconds_all_runs"]) == 2 and x["decode_seconds"] == min(x["decode_seconds_all_runs"])
    md = (out / "bench.md").read_text()
    assert "GLVC / x265" in md and "entropy coding" in md and "tokenizer" in md
    for side in (g, x):
        assert side["cvvdp_jod"]["value"] <= 10 and side["cvvdp_jod"]["seconds"] > 0
        assert f"{side['cvvdp_jod']['value']:.2f} JOD" in md
    # today's tokenizer engine timed beside the default one, in the same run
    e = r["engines"]
    assert (e["baseline_engine"], e["engine"], g["tokenizer_engine"]) == ("reference", "onednn", "onednn")
    assert len(e["baseline_encode_seconds_all_runs"]) == 2 and e["decode_speedup"] > 0
    assert e["bytes"] > 0 and e["cross_decode_max_abs_diff"] <= 2 and "reference engine, latent codec on 1 thread(s) (before)" in md
    assert e["baseline_codec_threads"] == 1 and e["codec_threads"] == torch.get_num_threads()
    assert r["model"] == tiny_model_dir or not os.path.isabs(r["model"])
    assert "GLVC / x265" in capsys.readouterr().out


def test_eval_match_mode_and_max_height(tiny_model_dir, frame_clip, tmp_path):
    cfg = EvalConfig(
        codecs=("glvc", "x264"), glvc_rates=(0, 63), baseline_mode="match", metrics=("psnr",),
        max_frames=5, max_height=32, progress=False, warmup=False, engine="reference",
    )
    result = run_eval([frame_clip], str(tmp_path / "match"), cfg, model=tiny_model_dir)
    assert result.config["tokenizer_engine"] == "reference"
    glvc = [r for r in result.rows if r["codec"] == "glvc"]
    x264 = [r for r in result.rows if r["codec"] == "x264"]
    assert all((r["width"], r["height"], r["frames"]) == (32, 32, 5) for r in result.rows)
    assert 1 <= len(x264) <= 2 and all("matched to GLVC" in r["notes"] for r in x264)
    for r in x264:  # each matched stream is the largest not above its GLVC target, or the smallest reachable
        targets = [g["bytes"] for g in glvc]
        assert any(r["bytes"] <= t for t in targets) or r["rate"] == 51
    assert [e for e in result.bd if e["anchor"] == "x264" and e["test"] == "glvc"]
