"""Parsing and printing of resource quantities (memory sizes, CPU counts)."""

from __future__ import annotations

import re

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_memory(value: str | int | float) -> int:
    """Bytes from "2G", "512M", "1.5G" or a plain number of bytes.

    >>> parse_memory("2G")
    2147483648
    """
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = _MEMORY.match(value)
    if not match:
        raise ValueError(f"not a memory size: {value!r} (use e.g. 512M, 4G)")
    number, unit = match.groups()
    return int(float(number) * _FACTORS[unit.upper()])


def format_memory(n_bytes: int) -> str:
    """Short human form: 2147483648 -> "2 GiB"."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if n_bytes >= factor:
            value = n_bytes / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n_bytes} B"


def format_cpu(cpus: float) -> str:
    return f"{cpus:g} CPU" if cpus == 1 else f"{cpus:g} CPUs"
