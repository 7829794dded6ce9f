"""One gradio_client request in a process of its own: the runner behind ``tests.conftest.AppClient``.

Reads a JSON request ``{"url", "api_name", "args", "download_dir", "reply"}`` from stdin, sends it
with ``gradio_client.Client.predict`` and writes ``{"result": ...}`` or ``{"error": <exception
class name>, "message": ...}`` as JSON to the ``reply`` file (not stdout, where gradio_client may
print). It then leaves with ``os._exit``: after a CancelledError, gradio_client's worker thread
can be left polling for a message that never comes, and a normal exit would wait for it forever.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    request = json.load(sys.stdin)
    try:
        from gradio_client import Client
        from gradio_client.exceptions import AppError

        client = Client(request["url"], verbose=False, download_files=request["download_dir"])
        try:
            reply = {"result": client.predict(*request["args"], api_name=request["api_name"])}
        finally:
            client.close()
    except AppError as err:
        reply = {"error": "AppError", "message": err.message}
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the test as data
        reply = {"error": type(err).__name__, "message": str(err)}
    with open(request["reply"], "w") as f:
        json.dump(reply, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
