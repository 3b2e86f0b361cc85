"""``python -m scg``: the same as the ``scg`` command."""

import sys

from .cli import main

sys.exit(main())
