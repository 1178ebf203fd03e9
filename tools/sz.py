"""Line counts per module of archc/, largest first; exits 1 when one passes the budget.

    python tools/sz.py [--max-lines 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-lines", type=int, default=400)
    args = ap.parse_args()
    rows = sorted(((len(p.read_text().splitlines()), p.relative_to(ROOT).as_posix())
                   for p in (ROOT / "archc").rglob("*.py")), reverse=True)
    for n, path in rows:
        print(f"{n:>6}  {path}")
    print(f"{sum(n for n, _ in rows):>6}  total")
    over = [p for n, p in rows if n > args.max_lines]
    if over:
        print(f"over {args.max_lines} lines: {', '.join(over)}", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
