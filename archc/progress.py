"""Progress bars for long work (checkpoint conversion, external-data export, generation), on
stderr and only when stderr is a terminal: pipes, CI logs and tests stay quiet.

The bars are tqdm's (the `progress` extra, also in `test`); without tqdm, or with
`ARCHC_PROGRESS=0`, or when `CI` is set, `bar` is a counter that prints nothing.
"""

from __future__ import annotations

import os
import sys


class Silent:
    def __init__(self, *_, **__):
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def enabled(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    if os.environ.get("ARCHC_PROGRESS", "1") == "0" or os.environ.get("CI"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(total: int | None, desc: str, unit: str = "it", stream=None):
    """A context manager with `update(n)`: a tqdm bar when `enabled`, else silent.
    `unit="B"` scales to kB/MB/GB."""
    stream = sys.stderr if stream is None else stream
    if not enabled(stream):
        return Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return Silent()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
                unit_divisor=1024 if unit == "B" else 1000, leave=False, file=stream,
                dynamic_ncols=True)
