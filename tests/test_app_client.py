"""The app as a program sees it, through gradio_client: the README's calls run against a launched
app, every public endpoint is named and documented, and a request the app cannot serve gets one
readable line. Also the tests' request helper (conftest.AppClient): it ends a request that gets no
reply, the guard that keeps a stalled server or gradio_client from holding CI until its time limit.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from .conftest import AppClient, AppError, RequestFailed, running_app

pytest.importorskip("gradio_client")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
README_URL = "http://127.0.0.1:7860/"  # `python app.py`'s address, as the README's block names it
VTEST = os.path.join(ROOT, "examples", "vtest_3s.mp4")
PUBLIC_ENDPOINTS = {"/encode", "/decode", "/rd_sweep", "/quality_hint"}


def readme_text() -> str:
    with open(README) as f:
        return f.read()


def readme_client_block() -> str:
    """The README's ```python block that calls the app with gradio_client (there is one)."""
    found = [b for b in re.findall(r"^```python\n(.*?)^```", readme_text(), flags=re.S | re.M) if "gradio_client" in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks using gradio_client, expected 1"
    return found[0]


def one_spaced(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def app_url():
    """The app on a loopback port with the bundled model, every clip cut to 9 frames at most 64 px
    high (``service.read_video`` wrapped, as tests/test_readme.py cuts the library's snippets), so
    the README's calls with the page's defaults take seconds."""
    from glvc import service

    read = service.read_video

    def small(path, *args, **kwargs):
        kwargs["max_frames"] = 9
        kwargs["max_height"] = min(kwargs.get("max_height") or 64, 64)
        return read(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "read_video", small)
        with running_app() as url:
            yield url


@pytest.mark.slow
def test_the_readme_calls_run_against_the_app(app_url, tmp_path):
    block = readme_client_block()
    assert README_URL in block
    script = tmp_path / "readme_client.py"
    script.write_text(block.replace(README_URL, app_url))
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "downloads"))  # the client's downloads, removed with tmp_path
    for attempt in range(2):  # gradio_client now and then ends a fast job with CancelledError (conftest.AppClient)
        try:
            done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0 or "CancelledError" not in done.stderr:
            break
    else:
        pytest.fail("the README's gradio_client block got no reply in 240 s, twice")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "/encode" in out and "/decode" in out  # client.view_api()
    assert re.search(r"^GLVC: 9 frames \d+x64 @ 25 fps, quality 32: [\d,]+ bytes", out, flags=re.M), out
    assert "['codec', 'setting', 'bytes', 'bpp', 'PSNR-RGB (dB)'] ['GLVC', 'q0'," in out
    assert re.search(r"^Quality 32: about \*\*[\d.]+ bpp\*\*", out, flags=re.M), out


@pytest.mark.slow
def test_every_public_endpoint_is_named_and_in_the_readme(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False, download_files=False)
    try:
        info = client.view_api(print_info=False, return_format="dict")
    finally:
        client.close()
    public = {name: e for name, e in info["named_endpoints"].items() if e.get("api_visibility", "public") == "public"}
    assert set(public) == PUBLIC_ENDPOINTS
    assert set(re.findall(r'api_name="(/\w+)"', readme_client_block())) == PUBLIC_ENDPOINTS  # one call each
    names = {name: [r["label"] for r in e["returns"]] for name, e in public.items()}
    for endpoint, labels in names.items():
        assert not [label for label in labels if re.fullmatch(r"value_\d+", label)], f"{endpoint} has unnamed outputs: {labels}"
    assert names["/encode"][:2] == ["Status", "GLVC decoded"] and names["/encode"][-1] == "Details"
    assert names["/decode"] == ["Status", "Decoded", "Details"]
    assert names["/rd_sweep"] == ["Sweep note", "Bits per pixel against PSNR", "RD points"]
    assert [p["parameter_name"] for p in public["/decode"]["parameters"]] == ["glvc_file", "model_key"]


@pytest.mark.slow
class TestReadableErrors:
    """What a program gets for a request the app cannot serve: one line naming the input, and no
    traceback in the server's log (the README quotes two of these messages)."""

    @pytest.fixture(scope="class")
    def client(self, app_url):
        with AppClient(app_url) as client:
            yield client

    def _error(self, call, capfd) -> str:
        capfd.readouterr()
        with pytest.raises(AppError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message.strip() and "verbose error reporting" not in message
        assert "Traceback" not in capfd.readouterr().err  # the server, in this process
        return message

    def test_a_path_without_handle_file(self, client, capfd):
        message = self._error(lambda: client.predict("examples/bikes_2s.mp4", api_name="/encode"), capfd)
        assert message == ("/encode: video: expected a file, got 'examples/bikes_2s.mp4' (a str): "
                           "send handle_file(path) (from gradio_client import handle_file)")
        assert one_spaced(f"`{message}`") in one_spaced(readme_text())
        message = self._error(lambda: client.predict("bikes.glvc", api_name="/decode"), capfd)
        assert message.startswith("/decode: glvc_file: expected a file, got 'bikes.glvc' (a str): send handle_file(path)")

    def test_a_number_out_of_range_or_not_a_number(self, client, capfd):
        from gradio_client import handle_file

        message = self._error(lambda: client.predict(handle_file(VTEST), "default", "quality", 99, api_name="/encode"), capfd)
        assert message == "/encode: quality: Value 99 is greater than maximum value 63."
        assert one_spaced(f"`{message}`") in one_spaced(readme_text())
        message = self._error(lambda: client.predict(handle_file(VTEST), "default", "quality", "high", api_name="/encode"), capfd)
        assert message == "/encode: quality: expected a number, got 'high' (a str)"

    def test_a_choice_that_is_not_offered(self, client, capfd):
        from gradio_client import handle_file

        message = self._error(lambda: client.predict(handle_file(VTEST), "default", "crf", api_name="/encode"), capfd)
        assert message.startswith("/encode: rate_mode: Value: 'crf'") and "['quality', 'kbps', 'kilobytes']" in message


def test_a_server_that_never_answers_ends_in_request_failed():
    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        stalls = []
        started = time.monotonic()
        with AppClient(url, timeout=4, retries=1, on_timeout=lambda: stalls.append(time.monotonic())) as client:
            with pytest.raises(RequestFailed, match=r"/encode: timeout: no reply in 4 s"):
                client.predict("x", api_name="/encode")
        assert time.monotonic() - started < 20
        assert len(stalls) == 2 and client.retried == ["/encode: no reply in 4 s"]


def test_no_server_is_a_failure_with_its_reason():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with AppClient(f"http://127.0.0.1:{port}/", timeout=30, retries=0) as client:
        with pytest.raises(RequestFailed, match=r"/decode: \w+"):
            client.predict(None, api_name="/decode")
    assert not os.path.exists(client.download_dir)
