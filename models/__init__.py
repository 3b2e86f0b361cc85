"""The model zoo: the architectures scg exists for, written with its public primitives.

Importing this package imports every module in it, and each registers its models with
:mod:`scg.zoo` (``scg models`` lists them): a new model is a new file, nothing else to edit.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
