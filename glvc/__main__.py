"""``python -m glvc``: the command line's entry point (also under ``torchrun -m glvc train``).

A codec's command line prints its result and its errors, nothing else. The notices of the
libraries it uses are filtered here, before they are imported: Python warnings raised outside
``glvc`` (e.g. torch.jit's FutureWarning when compressai is imported) and diffusers' log below
errors (e.g. "Cannot initialize model with low cpu memory usage because `accelerate` was not
found"). ``python -W ...`` / ``PYTHONWARNINGS`` and ``DIFFUSERS_VERBOSITY`` still take precedence.
"""

import os
import sys
import warnings

if not sys.warnoptions:
    warnings.filterwarnings("ignore", module=r"(?!glvc(\.|$))")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from .cli import main  # noqa: E402  (after the filters: it imports the libraries)

sys.exit(main())
