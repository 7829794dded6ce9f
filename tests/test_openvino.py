"""The tokenizer's openvino engine: same outputs as PyTorch within float rounding for any batch and
size, bit-identical streams across processes, converted graphs cached on disk within a size bound,
a clean fallback."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from glvc import tokenizer_openvino
from glvc.pipeline import GLVC

pytestmark = pytest.mark.skipif(not tokenizer_openvino.available(), reason="openvino is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_model_dir):
    """A converted-graph cache for this module, filled once (one conversion of the tiny model)."""
    path = str(tmp_path_factory.mktemp("glvc_cache"))
    previous = os.environ.get(tokenizer_openvino.CACHE_ENV)
    os.environ[tokenizer_openvino.CACHE_ENV] = path
    yield path
    if previous is None:
        os.environ.pop(tokenizer_openvino.CACHE_ENV, None)
    else:
        os.environ[tokenizer_openvino.CACHE_ENV] = previous


@pytest.fixture(scope="module")
def models(cache_dir, tiny_model_dir):
    """(openvino, onednn) GLVC of the same tiny model; the openvino one compiled."""
    openvino = GLVC.from_pretrained(tiny_model_dir, engine="openvino")
    assert openvino.tokenizer.compiled is not None
    return openvino, openvino.with_tokenizer_engine("onednn")


def _clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("size", [(48, 64), (80, 48)])  # the graphs were traced at another size: dynamic
def test_streams_equal_pytorch_within_float_rounding(models, size):
    openvino, onednn = models
    pixels = _clip(13, *size)  # chunks 0, 1, 2 and a later one: every step
    latents = openvino.tokenizer.encode(pixels)
    reference = onednn.tokenizer.encode(pixels)
    assert latents.shape == reference.shape
    assert (latents - reference).abs().max().item() < 1e-4
    decoded = openvino.tokenizer.decode(reference)
    assert decoded.shape == (1, 3, 13, *size)
    assert (decoded - onednn.tokenizer.decode(reference)).abs().max().item() < 1e-4


@pytest.mark.parametrize("batch, frames, height, width", [
    (2, 9, 48, 64),  # the bug: graphs fixed at a batch of 1 (every step: chunks 0, 1 and 2)
    (3, 5, 40, 24),  # odd latent sizes (5x3)
    (2, 5, 8, 16),  # the smallest: latents 1x2
    (1, 5, 56, 72),  # odd latent sizes (7x9), one clip
])
def test_any_batch_and_size_equals_onednn(models, batch, frames, height, width):
    openvino, onednn = models
    pixels = torch.cat([_clip(frames, height, width, seed=i) for i in range(batch)])
    latents = openvino.tokenizer.encode(pixels)
    reference = onednn.tokenizer.encode(pixels)
    assert latents.shape == reference.shape == (batch, 16, 1 + (frames - 1) // 4, height // 8, width // 8)
    assert (latents - reference).abs().max().item() < 1e-4
    decoded = openvino.tokenizer.decode(reference)
    assert decoded.shape == (batch, 3, frames, height, width)
    assert (decoded - onednn.tokenizer.decode(reference)).abs().max().item() < 1e-4
    for i in range(batch):  # a clip's result does not depend on the others in its batch
        assert torch.equal(openvino.tokenizer.encode(pixels[i : i + 1]), latents[i : i + 1])
        assert torch.equal(openvino.tokenizer.decode(reference[i : i + 1]), decoded[i : i + 1])


def test_a_step_refuses_what_it_cannot_take(models):
    openvino, _ = models
    compiled = openvino.tokenizer.compiled
    with pytest.raises(ValueError, match=r"got \(1, 16, 1, 0, 4\)"):  # no zero-size output, ever
        compiled.step("decoder", 0, torch.zeros(1, 16, 1, 0, 4), [])
    with pytest.raises(ValueError, match="not a multiple of 4"):  # 30 patchified px: 7.5 latents
        compiled.step("encoder", 0, torch.zeros(1, 12, 1, 30, 32), [])
    _, cache = compiled.step("encoder", 0, torch.zeros(2, 12, 1, 16, 16), [])
    with pytest.raises(ValueError, match=r"batch of 3 with a cache for \[2\]"):
        compiled.step("encoder", 1, torch.zeros(3, 12, 4, 16, 16), cache)
    # a graph that disagrees with the config (here: the config says 16x, the graphs do 8x) is caught
    mismatched = copy.copy(compiled)
    mismatched.geometry = dataclasses.replace(compiled.geometry, spatial_stride=16)
    with pytest.raises(RuntimeError, match=r"returned \(2, 16, 1, 4, 4\) .* expected \(2, 16, 1, 2, 2\)"):
        mismatched.step("encoder", 0, torch.zeros(2, 12, 1, 16, 16), [])


def _entry(root: str, key: str, size: int, age_s: float) -> str:
    """A cache entry ``key`` holding ``size`` bytes, last used ``age_s`` seconds ago."""
    folder = os.path.join(root, key)
    os.makedirs(folder)
    with open(os.path.join(folder, "encoder0.bin"), "wb") as f:
        f.write(b"\0" * size)
    used = time.time() - age_s
    os.utime(folder, (used, used))
    return folder


def _hold_lock(root: str, key: str) -> subprocess.Popen:
    """Another process holding ``key``'s entry in use (a shared lock, as CompiledTokenizer takes)."""
    script = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
              "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script, os.path.join(root, f"{key}.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_pruning_keeps_the_most_recently_used_within_the_bound_and_what_is_in_use(tmp_path):
    root = str(tmp_path)
    keys = [f"{i:024x}" for i in range(5)]  # keys[0] is the oldest
    for i, key in enumerate(keys):
        _entry(root, key, 1000, age_s=100 - i)
    killed = os.path.join(root, f".converting-{keys[4]}-x1y2")  # a conversion killed midway
    converting = os.path.join(root, f".converting-{keys[3]}-z3")  # one under way (its key locked)
    for work in (killed, converting):
        os.makedirs(work)
    (tmp_path / "notes.txt").write_text("not ours")
    holders = [_hold_lock(root, keys[0]), _hold_lock(root, keys[3])]
    try:
        removed = tokenizer_openvino.prune(root, limit=3000)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    # 5000 bytes over a 3000 bound: keys[0] is the oldest but in use; keys[1] and keys[2] go
    assert removed == [keys[1], keys[2]]
    assert sorted(n for n in os.listdir(root) if not n.endswith(".lock")) == sorted(
        [keys[0], keys[3], keys[4], os.path.basename(converting), "notes.txt"])
    assert not os.path.exists(killed) and os.path.isdir(converting)
    assert not any(os.path.exists(os.path.join(root, f"{k}.lock")) for k in removed)
    assert sorted(tokenizer_openvino.prune(root, limit=0)) == [keys[0], keys[3], keys[4]]  # none in use now
    assert sorted(os.listdir(root)) == ["notes.txt"]


def test_compiling_prunes_the_cache_to_its_bound(models, cache_dir, monkeypatch, caplog):
    openvino, _ = models
    compiled = openvino.tokenizer.compiled
    root = os.path.join(cache_dir, "openvino")
    size = tokenizer_openvino._tree_size(compiled.folder)  # converted graphs and OpenVINO's compiled blobs
    assert os.listdir(os.path.join(compiled.folder, tokenizer_openvino.COMPILED_SUBFOLDER))
    older = [f"{i:024x}" for i in range(3)]
    for age, key in zip((300, 200, 100), older):  # earlier models' entries
        shutil.copytree(compiled.folder, os.path.join(root, key))
        os.utime(os.path.join(root, key), (time.time() - age,) * 2)
    monkeypatch.setenv(tokenizer_openvino.CACHE_LIMIT_ENV, str(2.5 * size / tokenizer_openvino.MB))
    again = tokenizer_openvino.CompiledTokenizer(openvino.tokenizer.vae, torch.get_num_threads())
    assert again.folder == compiled.folder
    assert sorted(n for n in os.listdir(root) if not n.endswith(".lock")) == sorted([compiled.key, older[2]])
    monkeypatch.setenv(tokenizer_openvino.CACHE_LIMIT_ENV, "0")
    with caplog.at_level("WARNING"):
        tokenizer_openvino.CompiledTokenizer(openvino.tokenizer.vae, torch.get_num_threads())
    assert sorted(os.listdir(root)) == [compiled.key, f"{compiled.key}.lock"]  # in use: kept
    assert "over its 0 MB bound" in caplog.text
    monkeypatch.setenv(tokenizer_openvino.CACHE_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="GLVC_OPENVINO_CACHE_MB='lots'"):
        tokenizer_openvino.cache_limit_bytes()


def test_a_stream_decodes_bit_identically_in_another_process(models, cache_dir, tiny_model_dir, real_frames, tmp_path):
    openvino, _ = models
    frames = np.concatenate([real_frames, real_frames[::-1]])  # 18 frames: two segments or more
    result = openvino.encode(frames, 25, quality=30)
    stream = tmp_path / "clip.glvc"
    stream.write_bytes(result.bitstream)
    folders = sorted(os.listdir(os.path.join(cache_dir, "openvino")))
    script = (
        f"import numpy as np, torch; torch.set_num_threads({torch.get_num_threads()});"
        "from glvc.pipeline import GLVC;"
        f"m = GLVC.from_pretrained({tiny_model_dir!r});"
        "assert m.tokenizer.engine == 'openvino' and m.tokenizer.compiled is not None;"
        f"np.save({str(tmp_path / 'out.npy')!r}, m.decode(open({str(stream)!r}, 'rb').read()).frames)"
    )
    env = {**os.environ, "GLVC_TOKENIZER_ENGINE": "openvino", tokenizer_openvino.CACHE_ENV: cache_dir}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "converting the tokenizer" not in done.stderr  # compiled from the graphs on disk
    assert sorted(os.listdir(os.path.join(cache_dir, "openvino"))) == folders
    assert np.array_equal(np.load(tmp_path / "out.npy"), result.reconstruction)


def test_the_cache_key_follows_the_weights(models):
    openvino, _ = models
    vae = openvino.tokenizer.vae
    key = tokenizer_openvino.CompiledTokenizer._key(vae, "v")
    assert key == tokenizer_openvino.CompiledTokenizer._key(vae, "v")
    assert key != tokenizer_openvino.CompiledTokenizer._key(vae, "w")
    weight = vae.decoder.conv_out.weight
    with torch.no_grad():
        weight[0, 0, 0, 0, 0] += 1.0
        try:
            assert key != tokenizer_openvino.CompiledTokenizer._key(vae, "v")
        finally:
            weight[0, 0, 0, 0, 0] -= 1.0


def test_a_vae_openvino_cannot_take_runs_as_onednn(tiny_model_dir, monkeypatch, caplog):
    def refuse(self, vae, threads):
        raise RuntimeError("no conversion rule")

    monkeypatch.setattr(tokenizer_openvino.CompiledTokenizer, "__init__", refuse)
    model = GLVC.from_pretrained(tiny_model_dir, engine="openvino")
    with caplog.at_level("WARNING"):
        assert model.tokenizer.compiled is None
    assert "no conversion rule" in caplog.text
    pixels = _clip(5, 48, 64)
    onednn = model.with_tokenizer_engine("onednn")
    assert torch.equal(model.tokenizer.encode(pixels), onednn.tokenizer.encode(pixels))
