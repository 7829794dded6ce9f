"""Four simultaneous clients against the app, run as its own process (``python app.py``).

The server runs with the tiny model (``GLVC_MODEL``), a private ``TMPDIR`` (the service's request
folders) and ``GRADIO_TEMP_DIR`` (gradio's cache of uploads and outputs), so that everything it
leaves behind can be seen. Checked:

- every client's output equals what a single client got for the same request (the decoded frames'
  sha256, computed by the server, and the .glvc bytes);
- no request folder is left once the requests are answered, nothing else appears in TMPDIR, and
  gradio's cache is emptied when the server stops;
- the server's RSS after the concurrent requests is near its level after the single-client ones
  (and does not grow from one concurrent batch to the next).
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

gradio_client = pytest.importorskip("gradio_client")
psutil = pytest.importorskip("psutil")
from gradio_client import Client, handle_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = [os.path.join(ROOT, "examples", name) for name in ("vtest_3s.mp4", "bikes_2s.mp4", "bigbuckbunny_3s.mp4")]
CLIENTS = 4
BATCHES = 3  # each: CLIENTS clients at once, each an encode and a decode
RSS_MARGIN_MB = 150  # growth allowed over the first concurrent batch (measured ~70-100 MB: docs/robustness.md)
RSS_LEAK_MB = 60  # growth allowed from the first batch to the last (measured within +-40 MB over 6 batches)
START_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(folder: str) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("server_tmp"))
    cache = os.path.join(tmp, "gradio")
    port = _free_port()
    env = {**os.environ, "GLVC_MODEL": tiny_model_dir, "TMPDIR": tmp, "GRADIO_TEMP_DIR": cache,
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log_path = str(tmp_path_factory.mktemp("server_log") / "server.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read(100)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start: {open(log_path).read()[-2000:]}")
            time.sleep(1)
    # gr.Examples copies the example clips into the cache at start and keeps them there
    info = {"proc": proc, "url": url, "tmp": tmp, "cache": cache, "log": log_path, "cache_at_start": _files(cache)}
    try:
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _client(server, tmp_path) -> Client:
    folder = tmp_path / f"client-{threading.get_ident()}-{time.monotonic_ns()}"
    folder.mkdir()
    return Client(server["url"], verbose=False, download_files=str(folder))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """The example clips cut to 12 frames at 72 px high (other files than the app's own examples)."""
    from glvc.video_io import read_video, write_video

    folder = tmp_path_factory.mktemp("clips")
    out = []
    for path in EXAMPLES:
        video = read_video(path, max_frames=12, max_height=72)
        out.append(str(folder / os.path.basename(path)))
        write_video(out[-1], video.frames, video.fps, preset="ultrafast")
    return out


def _encode(client, clip):
    # 64 px high, 0.9 s (9 frames at 10 fps, up to 12 at 25/30 fps); with x265 at the same size
    return client.predict(handle_file(clip), "default", "quality", 30, 150.0, 25.0, 64, 0.9, True, api_name="/encode")


def _decode(client, glvc_path):
    return client.predict(handle_file(glvc_path), "default", api_name="/decode")


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.slow
def test_four_clients_get_single_client_results(server, clips, tmp_path):
    pid = server["proc"].pid
    # single client: the reference outputs (this also warms the server up: model, metric networks)
    single = _client(server, tmp_path)
    reference = {}
    for clip in clips:
        status, *_, glvc_path, details = _encode(single, clip)
        reference[clip] = (details["decoded_sha256"], open(glvc_path, "rb").read())
    time.sleep(1)
    rss_before = _rss_mb(pid)
    tmp_before = _files(server["tmp"]) - _files(server["cache"])

    def batch(number: int) -> tuple[list, float]:
        results, errors = [], []

        def work(index: int) -> None:
            try:
                client = _client(server, tmp_path)
                clip = clips[(index + number) % len(clips)]
                status, *_, glvc_path, details = _encode(client, clip)
                data = open(glvc_path, "rb").read()
                d_status, _, d_details = _decode(client, glvc_path)
                results.append((clip, details["decoded_sha256"], data, d_details["decoded_sha256"], status, d_status))
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(f"client {index}: {err!r}")

        started = time.monotonic()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        assert len(results) == CLIENTS
        return results, time.monotonic() - started

    rss = [rss_before]
    print(f"\nafter {len(clips)} single-client requests: server RSS {rss_before:.0f} MB")
    for number in range(BATCHES):
        results, elapsed = batch(number)
        for clip, sha, data, decoded_sha, status, d_status in results:
            assert (sha, data) == reference[clip], f"{os.path.basename(clip)}: not what a single client got"
            assert decoded_sha == sha  # the .glvc decodes to the encoder's frames, bit for bit
            assert status.startswith("GLVC: ") and d_status.startswith("Decoded ")
        time.sleep(2)
        rss.append(_rss_mb(pid))
        print(f"\nbatch {number}: {CLIENTS} clients x (encode + decode) in {elapsed:.1f} s; server RSS {rss[-1]:.0f} MB")

    # files: no request folder left, nothing new in TMPDIR outside gradio's cache
    assert not glob.glob(os.path.join(server["tmp"], "glvc-app-*")), os.listdir(server["tmp"])
    assert _files(server["tmp"]) - _files(server["cache"]) == tmp_before

    # memory: near the single-client level after the first concurrent batch (the allocator keeps
    # what the concurrent requests used), and no growth from one batch to the next (no leak)
    assert rss[1] - rss[0] < RSS_MARGIN_MB, rss
    assert rss[-1] - rss[1] < RSS_LEAK_MB, rss

    # gradio's cache holds the uploads and outputs (each in a folder named by its hash) until the
    # server stops; then only the example clips it had at start
    cached = _files(server["cache"]) - server["cache_at_start"]
    assert cached and all(os.path.dirname(os.path.dirname(f)) == server["cache"] for f in cached), sorted(cached)
    server["proc"].send_signal(signal.SIGINT)
    server["proc"].wait(60)
    assert _files(server["cache"]) == server["cache_at_start"], sorted(_files(server["cache"]) - server["cache_at_start"])
    assert not glob.glob(os.path.join(server["tmp"], "glvc-app-*"))
