"""Defaults and small helpers shared by the commands (CLI, eval, bench, train), the app and the scripts.

Below all of them: this module imports nothing from ``glvc`` and no torch, so any command can
use it without importing another command (``cli`` -> ``bench``/``evaluate`` -> ``defaults``).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
DEFAULT_MODEL = os.path.join(PACKAGE_DIR, "pretrained", "default")
"""The bundled model (``glvc/pretrained/default``)."""

RATE_TABLE_NAME = "rate_table.json"
"""A model folder's measured bits per pixel per quality index (``glvc.ratetable``)."""


def quiet_libraries() -> None:
    """Filter the notices of the libraries GLVC uses; call it before they are imported.

    The command line (``glvc/__main__.py``) and the app (``app.py``) print their results and their
    own messages, nothing else: Python warnings raised outside ``glvc`` (e.g. torch.jit's
    FutureWarning when compressai is imported) are ignored, and diffusers logs only errors (not
    "Cannot initialize model with low cpu memory usage because `accelerate` was not found").
    ``python -W ...`` / ``PYTHONWARNINGS`` and ``DIFFUSERS_VERBOSITY`` still take precedence.
    """
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", module=r"(?!glvc(\.|$))")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def default_model() -> str:
    """The model the commands use without ``--model``: ``$GLVC_MODEL`` or the bundled one."""
    return os.environ.get("GLVC_MODEL", DEFAULT_MODEL)


def repo_relative(path: str | None) -> str | None:
    """``path`` relative to the repository when it lies inside it (``glvc/pretrained/default``),
    else unchanged: what results files record, so that they do not name the machine that made them."""
    if not path or not os.path.exists(path):
        return path
    full = os.path.realpath(path)
    root = os.path.realpath(REPO_ROOT)
    if full == root or full.startswith(root + os.sep):
        return os.path.relpath(full, root).replace(os.sep, "/")
    return path


def local_max_quality(model: str) -> int | None:
    """The highest quality index of a model folder, read from ``codec/config.json`` without loading
    the model (so arguments are checked before the slow load); None for a Hub id or an unreadable config."""
    try:
        with open(os.path.join(model, "codec", "config.json")) as f:
            return int(json.load(f).get("quality_levels", 64)) - 1
    except (OSError, ValueError, TypeError):
        return None


def known_model_name(fingerprint: str) -> str | None:
    """A name for a model fingerprint (hex) when this installation knows it: the bundled model and
    ``$GLVC_MODEL``, through the fingerprint their ``rate_table.json`` records. None otherwise."""
    for folder in dict.fromkeys((DEFAULT_MODEL, default_model())):
        try:
            with open(os.path.join(folder, RATE_TABLE_NAME)) as f:
                recorded = json.load(f).get("model_fingerprint")
        except (OSError, ValueError, AttributeError):
            continue
        if recorded == fingerprint:
            name = repo_relative(folder)
            return f"the bundled model, {name}" if folder == DEFAULT_MODEL else name
    return None


def normal_file_modes(folder: str) -> None:
    """Give the files under ``folder`` the modes the process's umask gives new files (0644 under the
    usual 022). safetensors writes its files 0600 (through a private temporary file), which would
    make an exported model unreadable to other users of the machine or a server."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)
