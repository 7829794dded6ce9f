"""The tokenizer's openvino engine: same outputs as PyTorch within float rounding, bit-identical
streams across processes, converted graphs cached on disk, a clean fallback."""

from __future__ import annotations

import os
import subprocess
import sys

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
