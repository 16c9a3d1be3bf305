"""Strict configs: every config dataclass of the project refuses keys it does not know.

A typo in a YAML file or a --set override must fail loudly, naming the valid keys, rather than
fall back to a default silently (OrienterNet's strict configs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def check_known_keys(cls: type, values: Mapping[str, Any], *, error: type[Exception] = ValueError,
                     what: str | None = None) -> None:
    """Raise `error` naming the keys of `values` that are not fields of dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"unknown {what or cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
