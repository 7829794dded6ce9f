"""Latent codec: learned transforms, hyperprior and recurrent temporal memory (see ``model.py``)."""

from .model import CodecState, LatentCodec

__all__ = ["CodecState", "LatentCodec"]
