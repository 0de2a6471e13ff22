"""Command-line flags for every field of a service's settings class.

Settings come from the environment (each class names its prefix); a flag
given on the command line wins. Built once in `main` and passed in.

Secrets (SecretStr fields: API keys, the internal token, passwords) have no
flag: a command line is readable by every user of the host (`ps`, /proc), so
`--keys` and its kind are refused with the environment variables to use.
"""

from __future__ import annotations

import argparse
import typing
from typing import TypeVar

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def env_name(cls: type[BaseSettings], name: str) -> str:
    field = cls.model_fields[name]
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return (cls.model_config.get("env_prefix") or "") + name.upper()


def secret_flag_refusal(cls: type[BaseSettings], name: str) -> str:
    ways = [env_name(cls, name)]
    if name + "_file" in cls.model_fields:
        ways.insert(0, env_name(cls, name + "_file") + " (a file holding it)")
    return (
        f"--{name.replace('_', '-')} is not taken on the command line, where every user of this host can read it: "
        f"set {' or '.join(ways)}"
    )


def settings_from_cli(cls: type[S], argv: list[str] | None, prog: str, description: str) -> S:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    secrets = {name for name, field in cls.model_fields.items() if is_secret(field)}
    for name, field in cls.model_fields.items():
        # A secret is listed too, so --help names where it goes; it is refused when given.
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=secret_flag_refusal(cls, name)
            if name in secrets
            else f"{field.description or name} (default: {field.default!r})",
        )
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    for name in secrets & set(given):
        parser.error(secret_flag_refusal(cls, name))
    return cls(**given)
