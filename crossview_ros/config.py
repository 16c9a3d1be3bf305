"""Strict configs: every config dataclass of the project refuses keys it does not know.

A typo in a YAML file or a --set override must fail loudly, naming the valid keys, rather than
fall back to a default silently (OrienterNet's strict configs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def check_known_keys(cls: type, values: Mapping[str, Any], *, error: type[Exception] = ValueError,
                     what: str | None = None) -> None:
    """Raise `error` naming the keys of `values` that are not fields of dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"unknown {what or cls.__name__} keys {unknown}; valid keys: {sorted(known)}")


def read_yaml(path: str | Path, flag: str, error: type[Exception] = ValueError) -> Any:
    """A YAML file given on the command line as `flag PATH`; `error` with one line saying what is wrong."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {flag} {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{flag} {path} is not valid YAML: {' '.join(str(exc).split())}") from None
