"""Command-line flags for every field of a service's settings class.

Settings come from the environment (each class names its prefix); a flag
given on the command line wins. Built once in `main` and passed in.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def settings_from_cli(cls: type[S], argv: list[str] | None, prog: str, description: str) -> S:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, field in cls.model_fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{field.description or name} (default: {field.default!r})",
        )
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return cls(**given)
