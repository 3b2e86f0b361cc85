"""The model zoo: the architectures scg exists for, written with its public primitives.

Importing this package registers every model with :mod:`scg.zoo` (``scg models`` lists them).
"""

from . import async_gridworld, signalling  # noqa: F401  (registration)
