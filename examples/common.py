"""Shared by the example scripts: a command line built from an ``Args`` dataclass."""

import argparse
from dataclasses import fields


def parse(cls, doc):
    """Parse ``--field value`` flags (``--flag`` for booleans) into a ``cls`` instance."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for f in fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type is bool or f.type == "bool":  # --flag / --no-flag, default as declared
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=kind, default=f.default)
    return cls(**vars(parser.parse_args()))
