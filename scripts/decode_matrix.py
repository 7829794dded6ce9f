"""Decode the same .glvc streams as other machines would: other SIMD widths, kernel libraries, threads.

One x86 machine stands in for others through the switches that pick the CPU kernels:

* ``ATEN_CPU_CAPABILITY=default|avx2|avx512``: ATen's own vectorised ops (``default`` is what a CPU
  without AVX2 gets, and close to what a non-x86 CPU runs); a request above what the CPU has falls
  back to the CPU's best (the worker reports what ATen used).
* ``ONEDNN_MAX_CPU_ISA=SSE41|AVX2|AVX512_CORE``: the widest instructions oneDNN (the convolutions)
  may use; likewise capped by the CPU.
* ``MKL_CBWR=COMPATIBLE`` and ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``: MKL's GEMM, which ATen's own
  convolutions (``thnn_conv2d``, what the codec's small convolutions use) call: ``COMPATIBLE``
  takes a code path without FMA that sums differently (it changed the latents of format 1).
* ``torch.backends.mkldnn.enabled = False`` (ATen's own convolutions), and 1 and 2 intra-op threads.

Each setting decodes every stream in a fresh process to its latents (``GLVC.decode_latents``: the
entropy-decoded symbols through the codec) and to frames. The rule (docs/bitstream.md): the latents
are bit-identical under every setting (their sha256 is compared, and with ``--manifest`` also with
the stored golden value); the frames differ from the reference setting by at most the manifest's
``max_pixel_diff`` (the tokenizer's float sums may round differently).

Usage::

    python scripts/decode_matrix.py                     # the golden streams (tests/golden/*.json)
    python scripts/decode_matrix.py --manifest tests/golden/tiny.json --json out.json

The fast form is tests/test_golden.py::test_decode_matrix (tiny model's goldens, ~1 minute).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# name -> (environment, in-process switches); "reference" is the machine as it is
SETTINGS: dict[str, tuple[dict[str, str], dict]] = {
    "reference": ({}, {}),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, {}),
    "ATEN_CPU_CAPABILITY=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, {}),
    "ATEN_CPU_CAPABILITY=avx512": ({"ATEN_CPU_CAPABILITY": "avx512"}, {}),
    "ONEDNN_MAX_CPU_ISA=SSE41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "ONEDNN_MAX_CPU_ISA=AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "ONEDNN_MAX_CPU_ISA=AVX512_CORE": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {}),
    "MKL_CBWR=COMPATIBLE": ({"MKL_CBWR": "COMPATIBLE"}, {}),
    "MKL_ENABLE_INSTRUCTIONS=SSE4_2": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, {}),
    "mkldnn off": ({}, {"mkldnn": False}),
    "1 thread": ({}, {"threads": 1}),
    "2 threads": ({}, {"threads": 2}),
}
# ATen runs the kernels it is told to even where the CPU lacks them (a SIGILL): such settings are skipped
NEEDS_FLAGS = {"ATEN_CPU_CAPABILITY=avx2": ("avx2", "fma"),
               "ATEN_CPU_CAPABILITY=avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_VERBOSE", "OMP_NUM_THREADS",
              "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")

WORKER = r"""
import hashlib, json, sys, numpy as np, torch
spec = json.loads(sys.argv[1])
if spec["switches"].get("mkldnn") is False:
    torch.backends.mkldnn.enabled = False
if spec["switches"].get("threads"):
    torch.set_num_threads(spec["switches"]["threads"])
from glvc.pipeline import GLVC
models, out = {}, {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                   "mkldnn": torch.backends.mkldnn.enabled, "streams": []}
for i, (model_dir, path) in enumerate(spec["streams"]):
    if model_dir not in models:
        models[model_dir] = GLVC.from_pretrained(model_dir)
    model, data = models[model_dir], open(path, "rb").read()
    latents = model.decode_latents(data).numpy()
    frames = model.decode(data).frames
    np.save(f"{spec['out']}/{i}.npy", frames)
    out["streams"].append({"latents_sha256": hashlib.sha256(latents.astype("<f4").tobytes()).hexdigest(),
                           "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest()})
json.dump(out, open(f"{spec['out']}/result.json", "w"))
"""


def decode_in_process(name: str, streams: list[tuple[str, str]], workdir: str, timeout: float = 600) -> dict:
    """Decode ``streams`` [(model dir, stream path)] in a fresh process under setting ``name``.
    Returns the worker's result with the frames loaded and the wall time."""
    env_extra, switches = SETTINGS[name]
    out = os.path.join(workdir, name.replace(" ", "_").replace("=", "-"))
    os.makedirs(out, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    env.update(env_extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    spec = {"switches": switches, "streams": streams, "out": out}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"decoding under {name} failed (status {done.returncode}): {done.stderr[-3000:]}")
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    for i, stream in enumerate(result["streams"]):
        stream["frames"] = np.load(os.path.join(out, f"{i}.npy"))
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def runnable(name: str) -> str | None:
    """None if setting ``name`` can run on this CPU, else why not."""
    missing = [flag for flag in NEEDS_FLAGS.get(name, ()) if flag not in _cpu_flags()]
    return f"this CPU lacks {' '.join(missing)}" if missing else None


def run_matrix(streams: list[tuple[str, str]], workdir: str, settings=tuple(SETTINGS), parallel: int = 2) -> dict:
    """Decode under every setting this CPU can run (``parallel`` processes at a time).
    Returns {setting: result, or {"skipped": why}}."""
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = {name: pool.submit(decode_in_process, name, streams, workdir) for name in settings if not runnable(name)}
        return {name: futures[name].result() if name in futures else {"skipped": runnable(name)} for name in settings}


def load_manifest(path: str) -> tuple[dict, list[dict]]:
    """A golden manifest (tests/golden/*.json) and its streams, with paths made absolute."""
    with open(path) as f:
        manifest = json.load(f)
    base = os.path.dirname(os.path.abspath(path))
    for entry in manifest["streams"]:
        entry["path"] = os.path.join(base, entry["file"])
        entry["model_dir"] = os.path.join(ROOT, manifest["model"])
    return manifest, manifest["streams"]


def compare(results: dict, entries: list[dict]) -> list[dict]:
    """One row per setting: are the latents the golden ones, how far are the frames from the reference."""
    reference = results["reference"]["streams"]
    rows = []
    for name, result in results.items():
        if "skipped" in result:
            rows.append({"setting": name, "skipped": result["skipped"]})
            continue
        row = {"setting": name, "aten_capability": result["capability"], "threads": result["threads"],
               "mkldnn": result["mkldnn"], "seconds": result["seconds"], "latents_identical": True,
               "max_pixel_diff": 0, "frames_identical": True}
        for entry, got, ref in zip(entries, result["streams"], reference):
            if got["latents_sha256"] != entry["latents_sha256"]:
                row["latents_identical"] = False
            diff = int(np.abs(got["frames"].astype(int) - ref["frames"].astype(int)).max())
            row["max_pixel_diff"] = max(row["max_pixel_diff"], diff)
            row["frames_identical"] &= got["frames_sha256"] == entry["frames_sha256"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", action="append", default=None,
                        help="golden manifest(s) (default: tests/golden/tiny.json and tests/golden/shipped.json)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    manifests = args.manifest or [os.path.join(ROOT, "tests", "golden", n) for n in ("tiny.json", "shipped.json")]
    entries = []
    for path in manifests:
        entries += [e for e in load_manifest(path)[1] if e["version"] == _format_version()]
    with tempfile.TemporaryDirectory(prefix="glvc-matrix-") as workdir:
        results = run_matrix([(e["model_dir"], e["path"]) for e in entries], workdir, parallel=args.parallel)
    rows = compare(results, entries)
    bound = max(e["max_pixel_diff"] for e in entries)
    ok = all(r["latents_identical"] and r["max_pixel_diff"] <= bound for r in rows if "skipped" not in r)
    report = {"streams": [os.path.relpath(e["path"], ROOT) for e in entries], "pixel_bound": bound, "rows": rows,
              "cpu": _cpu_name(), "passed": ok}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if ok else 1


def _format_version() -> int:
    from glvc import bitstream

    return bitstream.VERSION


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(field)), "")
    except OSError:
        return ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def _cpu_name() -> str:
    simd = [f for f in ("sse4_1", "avx2", "fma", "avx512f", "avx512_bf16") if f in _cpu_flags()]
    return f"{_cpuinfo('model name') or 'unknown'} ({' '.join(simd)})"


if __name__ == "__main__":
    sys.exit(main())
