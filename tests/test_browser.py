"""The Gradio app in a real browser: Debian's chromium driven by npm ``playwright-core``.

Starts the app in-process, runs ``tests/browser/app.spec.mjs`` (upload a clip, encode, check
that the decoded video plays, the numbers show and the ``.glvc`` downloads, decode that file in
the second tab, no error in the page; then every picture: the per-frame chart, the frame
inspector, the bits map and an RD sweep, each rendered and screenshotted) and keeps its screenshots in the test's tmp_path. Skips, saying why, without chromium, node or ``tests/browser/node_modules``.
Setup (once)::

    apt-get update && apt-get install -y chromium nodejs npm
    (cd tests/browser && npm ci)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

from .conftest import running_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCRIPT_TIMEOUT_S = 420  # the script's own waits (TIMEOUT_S below plus page loads) end well before this


def _missing() -> str | None:
    if not os.path.isfile(CHROMIUM):
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium, or set $CHROMIUM)"
    if shutil.which("node") is None:
        return "no node on PATH (apt-get install -y nodejs npm)"
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        return "no tests/browser/node_modules/playwright-core (cd tests/browser && npm ci)"
    return None


pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


def test_upload_encode_download_in_chromium(tmp_path):
    with running_app() as url:
        env = {
            **os.environ,
            "APP_URL": url,
            "CLIP": os.path.join(ROOT, "examples", "vtest_3s.mp4"),
            "OUT_DIR": str(tmp_path),
            "MAX_HEIGHT": "96",
            "MAX_SECONDS": "0.9",
            "CHROMIUM": CHROMIUM,
            "TIMEOUT_S": "240",
        }
        # its own process group, so that a timeout ends chromium too, not only node
        proc = subprocess.Popen(["node", "app.spec.mjs"], cwd=BROWSER_DIR, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"the browser script ran over {SCRIPT_TIMEOUT_S} s: {stdout[-2000:]} {stderr[-2000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script (rc {proc.returncode}): {stdout[-2000:]} {stderr[-2000:]}"
    seen = json.loads(lines[-1])
    assert proc.returncode == 0 and seen["ok"], f"{seen.get('error')}\n{stderr[-2000:]}"
    assert seen["status"].startswith("GLVC: 9 frames")
    assert seen["download"]["name"].endswith(".glvc")
    assert seen["decode_status"].startswith("Decoded 9 frames")  # the second tab, from the download
    assert os.path.getsize(seen["screenshot"]) > 10_000
    # every picture: rendered, not blank, and a screenshot of it (docs/images/ holds the README's copies)
    assert set(seen["pictures"]) == {"per_frame", "inspector", "bits", "rd"}
    for name, picture in seen["pictures"].items():
        assert all(img["width"] > 0 and img["colours"] > 1 for img in picture["images"]), (name, picture)
        assert os.path.getsize(picture["screenshot"]) > 2_000, name
    assert seen["frame_note"].startswith("Frame 2 of 9")
    assert "about" in seen["sweep_estimate"] and seen["sweep_note"].startswith("RD sweep done")
