"""What every benchmark script shares: the records, the sizes and hooks, output, statistics."""

from __future__ import annotations

import gc
import itertools
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import records  # noqa: E402

HOOKS = records.HOOKS
TYPICAL = records.SIZES["typical"]
LARGE = records.SIZES["large"]
DEFAULT_SIZES = (TYPICAL, records.SIZES["1k"], records.SIZES["2k"], LARGE)
MODES = ("new", "repeat")
MODE_TEXT = {"new": "new patient each call", "repeat": "same request repeated"}

OUT = sys.stdout  # tables; switched to stderr with --json
_PATIENTS = itertools.count(1)


def say(text: str = "") -> None:
    print(text, file=OUT, flush=True)


def new_patient_body(body: bytes, tag: str = "n") -> bytes:
    """``body`` for a patient never seen before (and a new hookInstance)."""
    return records.patient_variant(body, f"{tag}{next(_PATIENTS):09d}", str(uuid.uuid4()))


# -- statistics -------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def summarize(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    if not s:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p90": nan, "p99": nan, "mean": nan, "max": nan}
    return {
        "n": len(s),
        "p50": round(percentile(s, 50), 3),
        "p90": round(percentile(s, 90), 3),
        "p99": round(percentile(s, 99), 3),
        "mean": round(sum(s) / len(s), 3),
        "max": round(s[-1], 3),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class GcWatch:
    """Time spent in the cyclic garbage collector (all generations) while active."""

    def __init__(self) -> None:
        self.total_ms = 0.0
        self.max_ms = 0.0
        self.full = 0
        self._t0 = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._t0) * 1000
            self.total_ms += ms
            self.max_ms = max(self.max_ms, ms)
            self.full += info.get("generation") == 2

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)
