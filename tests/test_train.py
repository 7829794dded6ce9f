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


# ---------------------------------------------------------------------------- stopping, resuming, checking
def small_run(tmp_path, name: str = "run", **changes) -> dict:
    """The tiny config, complete (DEFAULT_CONFIG merged), no rate table, checkpoints every 2 steps."""
    from glvc.train import DEFAULT_CONFIG, merge

    cfg = {**tiny_config(tmp_path), "output_dir": str(tmp_path / name), "rate_table": None, "checkpoint_every": 2}
    cfg["tokenizer"] = {**cfg["tokenizer"], "steps": 4, "frames": 5, "size": 16}
    # the codec on a latent cache: its windows are drawn with python's random and torch's generator
    cfg["codec"] = {**cfg["codec"], "steps": 3, "latent_cache": {"samples": 2, "batch": 2, "frames": 5, "size": 32, "crop": 4}}
    return merge(DEFAULT_CONFIG, {**cfg, **changes})


def log_rows(run_dir, stage: str) -> list[dict]:
    import csv

    with open(os.path.join(run_dir, f"log_{stage}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_step(run_dir, stage: str) -> int:
    return torch.load(os.path.join(run_dir, f"{stage}.pt"), map_location="cpu", weights_only=False)["step"]


def test_a_stopped_run_resumes_as_if_it_had_not_stopped(tmp_path, monkeypatch, capsys):
    """A crash after the last checkpoint, Ctrl-C in a forward pass, SIGTERM while logging: the resumed
    run logs each step once, its clock never goes back, and it draws the same samples (same losses)
    as a run that was never stopped."""
    import signal

    from glvc import train as T
    from glvc.data.dataset import TrainSet

    assert T.train(small_run(tmp_path, "reference")) is not None
    cfg = small_run(tmp_path)
    run = cfg["output_dir"]
    sample = TrainSet.sample

    def sampling(on_call: int, action):
        calls = {"n": 0}

        def patched(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == on_call:
                action()
            return sample(self, *args, **kwargs)

        monkeypatch.setattr(TrainSet, "sample", patched)

    def crash():
        raise RuntimeError("simulated crash")

    # 1. dies in step 4 with no signal: checkpoint at step 2, the log has step 3 too
    sampling(4, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train(cfg)
    assert checkpoint_step(run, "tokenizer") == 2 and [r["step"] for r in log_rows(run, "tokenizer")] == ["1", "2", "3"]

    # 2. resumed: the log is cut back to step 2; Ctrl-C while step 4 samples abandons that step at once
    sampling(2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(T.TrainingInterrupted):
        T.train(cfg)
    out = capsys.readouterr().out
    assert "1 rows after step 2 removed" in out
    assert "tokenizer: stopped by SIGINT at step 3" in out and "run the same command to resume" in out
    assert checkpoint_step(run, "tokenizer") == 3

    # 3. SIGTERM while the codec logs step 1 (no checkpoint due there): the step finishes, then a checkpoint
    monkeypatch.setattr(TrainSet, "sample", sample)
    log = T.Logger.log

    def logging(self, stage, step, *args, **kwargs):
        log(self, stage, step, *args, **kwargs)
        if stage == "codec" and step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(T.Logger, "log", logging)
    with pytest.raises(T.TrainingInterrupted):
        T.train(cfg)
    assert "codec: stopped by SIGTERM at step 1" in capsys.readouterr().out
    assert checkpoint_step(run, "codec") == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back

    # 4. to the end
    monkeypatch.setattr(T.Logger, "log", log)
    assert T.train(cfg) is not None
    for stage in ("tokenizer", "codec"):
        got, want = log_rows(run, stage), log_rows(tmp_path / "reference", stage)
        assert [r["step"] for r in got] == [r["step"] for r in want] == [str(i) for i in range(1, len(want) + 1)]
        seconds = [float(r["seconds"]) for r in got]
        assert seconds == sorted(seconds)
        for a, b in zip(got, want):  # the same samples: the same losses (float rounding aside)
            for key in b:
                if key not in ("stage", "seconds") and b[key] != "nan":
                    assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3, abs=1e-6), (stage, a["step"], key)


def test_ctrl_c_saves_a_checkpoint_and_exits_at_once(tmp_path):
    """The command line under Ctrl-C: a checkpoint at the last finished step, a line saying how to
    resume, exit status 130, within seconds (a step of this tiny config takes about one)."""
    import selectors
    import signal
    import time

    cfg = {**tiny_config(tmp_path), "rate_table": None, "checkpoint_every": 1000}
    cfg["tokenizer"] = {**cfg["tokenizer"], "steps": 1000}
    config_path = tmp_path / "long.json"
    config_path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "glvc", "train", "--config", str(config_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + 300
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not any(line.startswith("stage=tokenizer step=2 ") for line in lines):
                assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
                if sel.select(timeout=1):
                    lines.append(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        rest, _ = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    step = checkpoint_step(tmp_path / "run", "tokenizer")
    assert step >= 2 and f"tokenizer: stopped by SIGINT at step {step}" in out and "resume" in out
    assert [r["step"] for r in log_rows(tmp_path / "run", "tokenizer")] == [str(i) for i in range(1, step + 1)]
    assert took < 30, f"{took:.1f} s from SIGINT to exit"


def test_missing_training_set_says_how_to_make_it_and_writes_nothing(tmp_path):
    from glvc.train import train

    cfg = small_run(tmp_path, data={"root": str(tmp_path / "absent"), "photo_fraction": 0.5})
    with pytest.raises(FileNotFoundError, match=r"training set .*absent does not exist\. Make it with `python -m glvc\.data"
                                                r"\.prepare --out .*absent`.* downloads about 290 MB"):
        train(cfg)
    assert not os.path.exists(cfg["output_dir"])


def test_a_failed_run_removes_the_folder_it_made_when_nothing_can_resume(tmp_path, monkeypatch, capsys):
    from glvc.data.dataset import TrainSet
    from glvc.train import train

    def broken(self, *args, **kwargs):
        raise RuntimeError("no samples today")

    monkeypatch.setattr(TrainSet, "sample", broken)
    cfg = small_run(tmp_path)
    with pytest.raises(RuntimeError, match="no samples today"):
        train(cfg)
    assert not os.path.exists(cfg["output_dir"]) and "held nothing to resume" in capsys.readouterr().out
    os.makedirs(cfg["output_dir"])  # a folder the user made is kept
    with pytest.raises(RuntimeError, match="no samples today"):
        train(cfg)
    assert os.listdir(cfg["output_dir"]) == ["config.json"]


def test_diverged_weights_are_never_checkpointed(tmp_path, monkeypatch, capsys):
    from glvc.data.dataset import TrainSet
    from glvc.train import train

    sample = TrainSet.sample
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        x = sample(self, *args, **kwargs)
        return x * float("nan") if calls["n"] == 2 else x

    monkeypatch.setattr(TrainSet, "sample", poisoned)
    cfg = small_run(tmp_path, checkpoint_every=1, log_every=5, progress_seconds=0)
    with pytest.raises(RuntimeError, match=r"tokenizer: the weights are not finite at step 2 .* the last checkpoint .*tokenizer\.pt is kept"):
        train(cfg)
    assert checkpoint_step(cfg["output_dir"], "tokenizer") == 1
    assert "tokenizer: step 1 of 4 (" in capsys.readouterr().out  # a progress line between log lines


def test_an_unusable_export_is_refused_on_rerun(tmp_path):
    from diffusers import AutoencoderKLWan

    from glvc.train import tokenizer_export_problems, train

    vae = AutoencoderKLWan(**TINY_TOKENIZER)
    vae.register_to_config(latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    assert tokenizer_export_problems(vae) == []
    vae.register_to_config(latents_std=[float("nan")] * 16)
    cfg = small_run(tmp_path)
    vae.save_pretrained(os.path.join(cfg["output_dir"], "model", "tokenizer"))
    with pytest.raises(RuntimeError, match=r"tokenizer: the export .*model/tokenizer is not usable \(latents_std has 16 of "
                                           r"16 values not finite.*\): delete it to train the stage again"):
        train(cfg)
    vae.register_to_config(latents_std=[1.0] * 15)
    assert tokenizer_export_problems(vae) == ["latents_std has 15 values for 16 latent channels"]


def test_the_latent_cache_is_reused_only_when_this_run_would_make_it(tmp_path):
    from glvc.data.dataset import TrainSet
    from glvc.train import LatentCache, Runtime
    from tests.conftest import build_tiny_model

    tok = build_tiny_model().tokenizer
    data = TrainSet(str(make_fake_set(tmp_path / "set")))
    spec = {"samples": 2, "batch": 2, "frames": 5, "size": 32, "crop": 2}
    path = str(tmp_path / "latents.pt")
    rt = Runtime()
    made = LatentCache.build(spec, tok, data, path, rt).latents
    assert made.shape == (2, 16, 2, 4, 4)
    assert torch.equal(LatentCache.build(spec, tok, data, path, rt).latents, made)  # reused
    refusals = {
        "engine": (spec, tok.with_engine("reference" if tok.engine != "reference" else "onednn")),
        "another tokenizer": (spec, build_tiny_model(seed=1).tokenizer),
        r"shape is \(2, 16, 2, 4, 4\), .* give \(3, 16, 2, 4, 4\)": ({**spec, "samples": 3}, tok),
    }
    for message, (other_spec, other_tok) in refusals.items():
        with pytest.raises(RuntimeError, match=f"latent cache .*latents.pt does not fit this run: .*{message}.*: delete "):
            LatentCache.build(other_spec, other_tok, data, path, rt)
    # bare tensors (as caches were saved before): used when well-formed, refused when not
    torch.save(made, path)
    assert torch.equal(LatentCache.build(spec, tok, data, path, rt).latents, made)
    torch.save(made * float("nan"), path)
    with pytest.raises(RuntimeError, match="1024 of 1024 latents are not finite"):
        LatentCache.build(spec, tok, data, path, rt)
    torch.save(made[:1], path)
    with pytest.raises(RuntimeError, match=r"its shape is \(1, 16, 2, 4, 4\)"):
        LatentCache.build(spec, tok, data, path, rt)
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="latents.pt cannot be read .*delete .*latents.pt and run again"):
        LatentCache.build(spec, tok, data, path, rt)


def test_a_model_folder_without_glvc_json_is_refused(tiny_model_dir, tmp_path):
    import shutil

    from glvc.pipeline import GLVC, ModelLoadError

    for folder in ("glvc/pretrained/default", "tests/golden/tiny_model"):
        assert os.path.isfile(os.path.join(REPO, folder, "glvc.json")), folder
    assert os.path.isfile(os.path.join(tiny_model_dir, "glvc.json"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("glvc.json"))
    with pytest.raises(ModelLoadError, match=r"bare/glvc.json is missing: add one with the tokenizer_segment"):
        GLVC.from_pretrained(str(bare))


def test_configs_say_what_they_are_for():
    from glvc.train import LatentCache, load_config

    folder = os.path.join(REPO, "configs")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    assert {"default.json", "cpu.json"} <= set(names)
    for name in names:
        cfg = load_config(os.path.join(folder, name))  # a description is just carried along
        spec = cfg["codec"].get("latent_cache")
        if spec and cfg["tokenizer"].get("config"):
            tok = type("Tok", (), {"temporal_stride": 4, "latent_channels": cfg["tokenizer"]["config"]["z_dim"],
                                   "spatial_stride": cfg["tokenizer"]["config"]["scale_factor_spatial"]})
            LatentCache.layout(spec, tok)
    default, cpu = (load_config(os.path.join(folder, n)) for n in ("default.json", "cpu.json"))
    assert default["description"].startswith("GPU-sized") and "configs/cpu.json" in default["description"]
    assert cpu["description"].startswith("CPU-sized")
    with open(os.path.join(REPO, "glvc", "pretrained", "default", "glvc.json")) as f:
        assert default["tokenizer_segment"] == json.load(f)["tokenizer_segment"] == tokenizer_segment(cpu)


def gpu_train(config: dict, tmp_path, seconds: int = 300) -> subprocess.CompletedProcess:
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", "scripts/gpu_train.sh", str(path), str(seconds)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_gpu_train_script_exits_with_the_training_status(tmp_path):
    """The script pipes the training's output through grep and tee: its exit status is the training's."""
    cfg = {**tiny_config(tmp_path), "data": {"root": str(tmp_path / "absent")}}
    done = gpu_train(cfg, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "training failed with exit status 2" in done.stdout
    assert "python -m glvc.data.prepare --out" in (tmp_path / "out" / "train.log").read_text()
    assert not (tmp_path / "run").exists()  # the config's output_dir (not a fixed folder), never made


@pytest.mark.slow
def test_gpu_train_script_returns_a_loadable_model(tmp_path):
    from glvc.pipeline import GLVC

    done = gpu_train(tiny_config(tmp_path), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    model = GLVC.from_pretrained(str(tmp_path / "out"))  # glvc.json came back with the weights
    assert model.segment == 3
    again = gpu_train(tiny_config(tmp_path), tmp_path)
    assert again.returncode == 0 and f"note: the run folder {tmp_path / 'run'} exists: this run resumes it" in again.stdout


def test_a_codec_moves_to_a_tokenizer_of_another_latent_width(tmp_path):
    """init_from with another latent width (e.g. the bundled codec onto TAEF2's 32 channels): every
    tensor of the same name and shape comes from the exported codec, the two that touch the latent are new."""
    from glvc.codec import LatentCodec
    from glvc.train import build_codec

    torch.manual_seed(0)
    old = LatentCodec(latent_channels=16, hyper_gain=True, hyper_prior="gaussian", **TINY_CODEC)
    old.prepare_entropy_coders()
    old.save_pretrained(str(tmp_path / "old"))
    new = build_codec({"init_from": str(tmp_path / "old"), "config": {"anchor_lambdas": [1.0, 2.0, 3.0, 4.0]}}, 32)
    assert new.config.latent_channels == 32 and list(new.config.anchor_lambdas) == [1.0, 2.0, 3.0, 4.0]
    assert new.config.hyper_prior == "gaussian" and new.training
    before, after = old.state_dict(), new.state_dict()
    fresh = sorted(k for k in after if k in before and before[k].shape != after[k].shape)
    assert fresh == ["analysis.0.weight", "synthesis_out.bias", "synthesis_out.weight"]
    for key in ("log_quant_scale", "context_net.0.weight", "entropy_parameters.4.weight", "memory_update.2.weight"):
        assert torch.equal(after[key], before[key]), key
    x = torch.randn(1, 32, 16, 16)
    assert new(x, new.initial_state(), torch.tensor([10.0]))["z_hat"].shape == x.shape
