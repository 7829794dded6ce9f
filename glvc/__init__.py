"""GLVC: generative latent video compression (see README.md; ``python -m glvc --help``)."""

__version__ = "0.1.0"
