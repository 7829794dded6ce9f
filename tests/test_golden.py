"""Golden streams (tests/golden): every decoder decodes them bit-exactly, on every machine, or refuses
them by format version. Written by scripts/make_golden.py; the rules are in docs/bitstream.md."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glvc import bitstream
from glvc.bitstream import BitstreamError
from glvc.codec.model import WEIGHTS_NAME, exact_exp_float32, scale_table
from glvc.pipeline import GLVC
from scripts.decode_matrix import SETTINGS, compare, load_manifest, run_matrix
from scripts.make_golden import latents_sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
MANIFESTS = ("tiny.json", "shipped.json")
ENTRIES = [(name, entry) for name in MANIFESTS for entry in load_manifest(os.path.join(GOLDEN, name))[1]]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(model_dir: str) -> GLVC:
        if model_dir not in cache:
            cache[model_dir] = GLVC.from_pretrained(model_dir)
        return cache[model_dir]

    return get


def _read(entry: dict) -> bytes:
    with open(entry["path"], "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{entry['file']} was modified"
    return data


@pytest.mark.parametrize("manifest,entry", ENTRIES, ids=[e["file"] for _, e in ENTRIES])
def test_golden_stream_decodes_bit_exactly_or_is_refused_by_version(models, manifest, entry):
    data = _read(entry)
    model = models(entry["model_dir"])
    if entry["version"] != bitstream.VERSION:
        # an older format: a clear refusal, never noise
        with pytest.raises(BitstreamError, match=f"format version {entry['version']}"):
            model.decode(data)
        return
    assert latents_sha256(model.decode_latents(data).numpy()) == entry["latents_sha256"], (
        f"{entry['file']} decodes to other latents: a change to the decoder broke streams of format version "
        f"{bitstream.VERSION}; undo it, or raise glvc.bitstream.VERSION (docs/bitstream.md)")
    frames = model.decode(data).frames
    reference = np.load(os.path.join(GOLDEN, entry["reference_frames"]))["frames"]
    assert frames.shape == reference.shape
    diff = np.abs(frames.astype(int) - reference.astype(int))
    assert diff.max() <= entry["max_pixel_diff"], (entry["file"], int(diff.max()))


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_is_for_the_model_as_it_is_now(models, manifest):
    """The shipped model changed without its goldens: run ``python scripts/make_golden.py``."""
    info, _ = load_manifest(os.path.join(GOLDEN, manifest))
    model = models(os.path.join(ROOT, info["model"]))
    assert model.fingerprint.hex() == info["fingerprint"], (
        f"{info['model']} is now model {model.fingerprint.hex()}, its golden streams are of model "
        f"{info['fingerprint']}: run `python scripts/make_golden.py` and commit the result with the model")


def test_stream_of_another_model_is_refused_saying_what_to_do(models):
    tiny = next(e for name, e in ENTRIES if name == "tiny.json" and e["version"] == bitstream.VERSION)
    shipped = next(e for name, e in ENTRIES if name == "shipped.json")
    with pytest.raises(BitstreamError, match="stream was made by model .*decode it with the model that made it"):
        models(shipped["model_dir"]).decode(_read(tiny))


def test_newer_format_version_is_refused_saying_what_to_do(models):
    entry = next(e for _, e in ENTRIES if e["version"] == bitstream.VERSION)
    body = bytearray(_read(entry)[:-4])
    body[4] = bitstream.VERSION + 1
    forged = bytes(body) + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    with pytest.raises(BitstreamError, match=f"format version {bitstream.VERSION + 1}.*newer GLVC"):
        models(entry["model_dir"]).decode(forged)


@pytest.mark.parametrize("model_dir", ["tests/golden/tiny_model", "glvc/pretrained/default"])
def test_loaded_model_is_the_stored_model(model_dir):
    """No table is derived at load: the codec's every tensor is the stored one, bit for bit, and the
    stored scale table is the machine-independent one."""
    folder = os.path.join(ROOT, model_dir, "codec")
    stored = load_file(os.path.join(folder, WEIGHTS_NAME))
    loaded = GLVC.from_pretrained(os.path.join(ROOT, model_dir)).codec.state_dict()
    assert sorted(stored) == sorted(loaded)
    for key, tensor in stored.items():
        assert torch.equal(loaded[key], tensor), key
    assert torch.equal(stored["gaussian_conditional.scale_table"], scale_table())


def test_exact_exp_is_correctly_rounded_and_needs_no_torch_exp():
    values = (0.0, 1.0, -2.2072749, 5.545177, -20.0, 88.0)
    got = exact_exp_float32(values)
    assert got[0] == 1.0 and got[1] == float(np.float32(np.e))
    for v, g in zip(values, got):  # within half a float32 step of the float64 exp
        assert abs(g - np.exp(v)) <= 0.5 * np.spacing(np.float32(g)) * 1.0001, v


# ------------------------------------------------------------------------------ other machines
ISA_CHECK = """
import torch, json
from glvc.codec.model import scale_table
from compressai.models.base import get_scale_table
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "ours": scale_table().numpy().tobytes().hex(), "compressai": get_scale_table().numpy().tobytes().hex()}))
"""


def test_scale_table_is_the_same_where_compressais_is_not():
    """The failure of issue 12, kept as a test: compressai's table depends on ATen's capability
    (its ``linspace`` rounds 13 of 64 points differently under ``default`` on AVX2), ours does not."""
    out = {}
    for capability in ("default", "avx2"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": ROOT}
        done = subprocess.run([sys.executable, "-c", ISA_CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        out[capability] = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["default"]["ours"] == out["avx2"]["ours"] == scale_table().numpy().tobytes().hex()
    if out["avx2"]["capability"] == "DEFAULT":  # a CPU without AVX2: nothing to compare against
        pytest.skip("this CPU has no AVX2")
    assert out["default"]["compressai"] != out["avx2"]["compressai"]


@pytest.mark.slow
def test_decode_matrix(tmp_path):
    """Decoding the tiny model's goldens under every kernel setting (scripts/decode_matrix.py):
    the same latents everywhere, frames within the stated bound."""
    _, entries = load_manifest(os.path.join(GOLDEN, "tiny.json"))
    entries = [e for e in entries if e["version"] == bitstream.VERSION]
    results = run_matrix([(e["model_dir"], e["path"]) for e in entries], str(tmp_path))
    rows = compare(results, entries)
    assert [r["setting"] for r in rows] == list(SETTINGS)
    assert sum("skipped" not in r for r in rows) >= len(SETTINGS) - 2, rows  # at most the AVX2/AVX-512 ones
    for row in rows:
        if "skipped" in row:
            continue
        assert row["latents_identical"], row
        assert row["max_pixel_diff"] <= min(e["max_pixel_diff"] for e in entries), row
    assert results["ATEN_CPU_CAPABILITY=default"]["capability"] == "DEFAULT"
    assert not results["mkldnn off"]["mkldnn"] and results["2 threads"]["threads"] == 2
