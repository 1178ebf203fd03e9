"""Seeded mutation fuzzing of every input boundary, through the CLI (tools/fuzz.py): spec text
(`check`), config.json (`import-hf`), safetensors bytes (`run --weights`) and npz inputs
(`run --inputs`, both backends). Every case must end with exit 0, or a diagnostic and exit 1
(argparse: 2), within the per-case timeout: no internal error, no traceback, no hang.

The default run is a small fixed sample (a few seconds); ARCHC_FUZZ_CASES=N runs N per target,
and `python tools/fuzz.py --cases 100000` is the long run."""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("archc_fuzz", ROOT / "tools" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

CASES = int(os.environ.get("ARCHC_FUZZ_CASES", "25"))


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_fuzzed_inputs_end_in_a_diagnostic_or_success(target, monkeypatch):
    monkeypatch.setenv("ARCHC_MAX_BYTES", "1G")
    monkeypatch.delenv("ARCHC_DEBUG", raising=False)
    tally, findings = fuzz.fuzz(CASES, seed=1, targets=(target,), jobs=1, timeout=20.0)
    assert sum(tally.values()) == CASES
    assert not findings, "\n".join(f"seed {s}: {line}" for line, (s, _) in findings.items())
