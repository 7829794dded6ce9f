"""``python -m glvc``: the command line's entry point (also under ``torchrun -m glvc train``).

A codec's command line prints its result and its errors, nothing else: the notices of the
libraries it uses are filtered before they are imported (:func:`glvc.defaults.quiet_libraries`,
which the app uses too).
"""

import sys

from .defaults import quiet_libraries

quiet_libraries()

from .cli import main  # noqa: E402  (after the filters: it imports the libraries)

sys.exit(main())
