"""The tests' request helper (conftest.AppClient) ends a request that gets no reply: the guard
that keeps a stalled server or gradio_client from holding CI until its time limit."""

from __future__ import annotations

import os
import socket
import time

import pytest

from .conftest import AppClient, RequestFailed

pytest.importorskip("gradio_client")


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
