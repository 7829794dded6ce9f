"""``python -m glvc train`` end to end with a tiny config: the exported model is complete (like the
bundled one), loads and codes, and a rerun of the finished run says what it skips."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from glvc.train import changed_keys, tokenizer_segment
from tests.conftest import TINY_CLIP, TINY_CODEC, TINY_TOKENIZER
from tests.test_data import make_fake_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path) -> dict:
    return {
        "output_dir": str(tmp_path / "run"),
        "log_every": 1,
        "checkpoint_every": 1,
        "data": {"root": str(make_fake_set(tmp_path / "set")), "photo_fraction": 0.5},
        # mixed clip lengths and an EMA of the weights (the recipe options)
        "tokenizer": {"config": TINY_TOKENIZER, "steps": 2, "batch": 1, "frames": [5, 9], "size": 32, "warmup": 1,
                      "stats_batches": 1, "ema": 0.5, "lr_floor": 0.0},
        "codec": {"config": TINY_CODEC, "steps": 2, "batch": 1, "frames": 5, "size": 64, "warmup": 1},
        "tokenizer_segment": 3,
        # cheap: one tiny clip, two qualities
        "rate_table": {"clips": [TINY_CLIP], "qualities": [0, 63], "max_height": 48, "max_seconds": 0.4},
    }


def run_train(config_path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glvc", "train", "--config", str(config_path), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_training_exports_a_complete_model(tmp_path):
    from glvc.pipeline import GLVC
    from glvc.video_io import read_video

    cfg = tiny_config(tmp_path)
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(cfg))
    done = run_train(config_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # each stage says when it starts and how long it will run
    assert "tokenizer: starting; runs to step 2" in out and "codec: starting; runs to step 2" in out

    model_dir = tmp_path / "run" / "model"
    # everything the bundled model has: the same top-level files (docs and pictures aside)
    bundled = os.path.join(REPO, "glvc", "pretrained", "default")
    needed = {"tokenizer", "codec", "glvc.json", "rate_table.json"}
    assert needed <= set(os.listdir(bundled))
    assert needed <= set(os.listdir(model_dir))
    assert json.loads((model_dir / "glvc.json").read_text()) == {"tokenizer_segment": 3}
    model = GLVC.from_pretrained(str(model_dir))
    assert model.segment == 3
    table = json.loads((model_dir / "rate_table.json").read_text())
    assert table["model_fingerprint"] == model.fingerprint.hex()
    assert table["qualities"] == [0, 63] and len(table["clips"]) == 1
    assert table["mean_bpp"][0] <= table["mean_bpp"][1]

    # the app reads the table as it reads the bundled one
    from glvc.service import load_rate_table

    assert load_rate_table(model, str(model_dir)).qualities == (0, 63)

    # exported files follow the umask (safetensors alone writes 0600)
    mask = os.umask(0)
    os.umask(mask)
    for root, _, files in os.walk(model_dir):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o666 & ~mask, name

    # the exported model codes
    video = read_video(TINY_CLIP, max_frames=5)
    result = model.encode(video.frames, video.fps, quality=10)
    assert (model.decode(result.bitstream).frames == result.reconstruction).all()

    # logs: the seconds column is the stage's training time, so it never decreases
    for stage in ("tokenizer", "codec"):
        rows = (tmp_path / "run" / f"log_{stage}.csv").read_text().splitlines()[1:]
        seconds = [float(r.split(",")[2]) for r in rows]
        assert len(seconds) == 2 and seconds == sorted(seconds)

    # the clip lengths were cycled, and the exported tokenizer is the EMA of the weights, not the last step's
    rows = (tmp_path / "run" / "log_tokenizer.csv").read_text().splitlines()
    frames_column = rows[0].split(",").index("frames")
    assert [float(r.split(",")[frames_column]) for r in rows[1:]] == [5.0, 9.0]
    ckpt = torch.load(tmp_path / "run" / "tokenizer.pt", map_location="cpu", weights_only=False)
    exported = model.tokenizer.vae.state_dict()
    name = "decoder.conv_out.weight"
    assert name in exported
    assert torch.equal(exported[name], ckpt["ema"]["module." + name].half().float())  # saved as float16
    assert not torch.equal(exported[name], ckpt["model"][name].half().float())

    # a rerun of the finished run says what it skips; a changed config is named
    cfg["codec"]["lr"] = 1e-3
    config_path.write_text(json.dumps(cfg))
    again = run_train(config_path)
    assert again.returncode == 0, again.stderr
    assert "tokenizer: already trained and exported" in again.stdout
    assert "codec: already trained and exported" in again.stdout
    assert "(codec.lr)" in again.stdout and "already measured on this model: kept" in again.stdout

    # a checkpoint exports as the model that the run exported (the last checkpoint is the final model)
    from glvc.codec import LatentCodec
    from glvc.train import export_codec_checkpoint

    export_codec_checkpoint(str(tmp_path / "run"), str(tmp_path / "exported"))
    exported, final = (LatentCodec.from_pretrained(str(d)) for d in (tmp_path / "exported", model_dir / "codec"))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), final.state_dict().values()))

    # fine-tuning that codec with the quality-conditioned Gaussian hyperprior: no EntropyBottleneck, no aux optimiser
    tune = {**tiny_config(tmp_path), "output_dir": str(tmp_path / "tune"), "rate_table": None,
            "tokenizer": {"pretrained": {"name_or_path": str(model_dir / "tokenizer")}}}
    tune["codec"] = {**tune["codec"], "init_from": str(model_dir / "codec"),
                     "config": {"hyper_gain": True, "hyper_prior": "gaussian"}, "rate_lr": 1e-2}
    config_path.write_text(json.dumps(tune))
    tuned = run_train(config_path)
    assert tuned.returncode == 0, tuned.stderr
    codec = LatentCodec.from_pretrained(str(tmp_path / "tune" / "model" / "codec"))
    assert codec.config.hyper_prior == "gaussian" and codec.entropy_bottleneck is None
    assert not torch.equal(codec.log_hyper_scale, torch.zeros_like(codec.log_hyper_scale))  # trained at rate_lr
    tuned_model = GLVC(model.tokenizer, codec, segment=model.segment)
    result = tuned_model.encode(video.frames, video.fps, quality=0)
    assert (tuned_model.decode(result.bitstream).frames == result.reconstruction).all()


def test_changed_keys_and_segment():
    old = {"output_dir": "a", "max_minutes": 1, "codec": {"lr": 1, "config": {"channels": 8}}, "seed": 0}
    new = {"output_dir": "b", "max_minutes": None, "codec": {"lr": 2, "config": {"channels": 8}}, "seed": 0, "x": 1}
    assert changed_keys(old, new) == ["codec.lr", "x"]
    assert tokenizer_segment({"tokenizer_segment": None, "codec": {"latent_cache": {"segment": 3}}}) == 3
    assert tokenizer_segment({"tokenizer_segment": 0, "codec": {"latent_cache": {"segment": 3}}}) == 0
    assert tokenizer_segment({"tokenizer_segment": None, "codec": {}}) == 0


def test_rate_table_defaults_are_the_apps_cpu_defaults():
    from glvc import ratetable, train
    from glvc.service import CPU_LIMITS

    assert (ratetable.DEFAULT_MAX_HEIGHT, ratetable.DEFAULT_MAX_SECONDS) == (CPU_LIMITS.default_height, CPU_LIMITS.default_seconds)
    spec = train.DEFAULT_CONFIG["rate_table"]
    assert (spec["max_height"], spec["max_seconds"], tuple(spec["qualities"])) == (
        ratetable.DEFAULT_MAX_HEIGHT, ratetable.DEFAULT_MAX_SECONDS, ratetable.DEFAULT_QUALITIES)


def test_a_stage_of_zero_steps_is_done_at_once():
    from glvc.train import StageClock

    assert StageClock({"steps": 0}, 0).done  # e.g. a tokenizer-only recipe run: "codec": {"steps": 0}
    assert not StageClock({"steps": 3}, 2).done and StageClock({"steps": 3}, 3).done
