"""The configuration error and the range checks that every config dataclass uses.

Each check raises :class:`ConfigError` with a message naming the key and the allowed values,
so a bad YAML file or keyword argument fails once, clearly, before any work starts.
"""
from __future__ import annotations

from typing import Optional


class ConfigError(ValueError):
    """A configuration key is unknown, ill-typed or out of range."""


def one_of(value, allowed: tuple, key: str):
    """``value`` if it is in ``allowed``, else a ConfigError naming ``key`` and the allowed values."""
    if value not in allowed:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def at_least(value, low, key: str, what: str = "a number"):
    """``value`` if it is ``None`` or ``>= low``, else a ConfigError naming ``key``."""
    if value is not None and value < low:
        raise ConfigError(f"config key '{key}' must be {what} >= {low}; got {value!r}")
    return value


def positive(value, key: str):
    """``value`` if it is ``None`` or ``> 0``, else a ConfigError naming ``key``."""
    if value is not None and value <= 0:
        raise ConfigError(f"config key '{key}' must be positive; got {value!r}")
    return value


def fraction(value, key: str, low_open: bool = False, high_open: bool = False) -> Optional[float]:
    """``value`` if it is ``None`` or in [0, 1] (ends open as asked), else a ConfigError naming ``key``."""
    if value is None:
        return None
    bad = value < 0 or value > 1 or (low_open and value == 0) or (high_open and value == 1)
    if bad:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"config key '{key}' must be in {interval}; got {value!r}")
    return value


def require(module: str, extra: str, what: str) -> None:
    """Stop with one clear line when an optional package is missing: ``what`` needs ``module``, from ``extra``."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the package '{module}', which is not installed: "
                          f"pip install -e \".[{extra}]\" (or pip install {module})")
