"""Budgets: refuse, before allocating, what a spec or an input size would make too big.

One limit bounds every allocation whose size a spec or an input size controls (the random init
of the parameters, random inputs, the activations a run would hold): `ARCHC_MAX_BYTES`, a
number of bytes with an optional unit (`512M`, `64G`, `1T`), default 16 GiB. Sizes are
computed with Python integers, so a spec with `vocab = 10 ** 12` is refused by arithmetic,
not by a failed (or, worse, a successful) 8 TB allocation.
"""

from __future__ import annotations

import math
import os

from archc.diagnostics import ArchcError, Diagnostic

ENV = "ARCHC_MAX_BYTES"
DEFAULT = 16 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def max_bytes() -> int:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT
    text = raw.upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit():
        raise ArchcError([Diagnostic("E0330", f"`{ENV}={raw}` is not a size",
                                     help=f"write bytes or a size with a unit: {ENV}=64G")])
    return int(number) * _UNITS[unit]


def fmt_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
    return f"{n} bytes"


def check_bytes(nbytes: int, what: str) -> None:
    """Refuse `what` if it would take more than the limit."""
    limit = max_bytes()
    if nbytes > limit:
        raise ArchcError([Diagnostic(
            "E0331", f"{what} would take {fmt_bytes(nbytes)}, over the limit of "
            f"{fmt_bytes(limit)}", help=f"set {ENV} to raise the limit (e.g. {ENV}="
            f"{max(1, math.ceil(nbytes / 2**30))}G)")])


def nbytes(shape, itemsize: int) -> int:
    return math.prod(int(d) for d in shape) * itemsize
