"""Latent codec: learned transforms, hyperprior and recurrent temporal memory (see ``model.py``)."""

from .model import CodecState, LatentCodec, deterministic_cpu

__all__ = ["CodecState", "LatentCodec", "deterministic_cpu"]
