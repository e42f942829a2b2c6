"""Timing helpers: warm-up, repeated measurements, medians, and interleaved rounds.

Comparisons (plain vs FFS, ours vs sklearn, ...) are measured in interleaved rounds — one call of each
contender per round — so that a slow-down caused by other processes hits every contender alike; the ratio
of two contenders is the median of their per-round ratios.
"""
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["Timer", "summarize", "interleaved", "paired_ratio", "ratio_spread", "sync"]


def sync(device) -> None:
    """Wait for queued GPU work, so a wall-clock measurement covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; synchronizes ``device`` before and after."""

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Timer":
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self._start
        return False


def summarize(seconds: List[float]) -> Dict[str, float]:
    """Median, min, max and inter-quartile range of repeated timings (seconds), and their count."""
    s = sorted(seconds)
    if len(s) >= 4:
        q = statistics.quantiles(s, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = s[-1] - s[0]
    return {"median_s": statistics.median(s), "min_s": s[0], "max_s": s[-1], "iqr_s": iqr, "repeats": len(s)}


def interleaved(contenders: Dict[str, Callable[[], object]], warmup: int, repeats: int, device="cpu",
                setup: Optional[Callable[[str], None]] = None) -> Dict[str, List[float]]:
    """Time each contender ``repeats`` times after ``warmup`` untimed calls, one call of each per round.

    ``setup(name)``, when given, runs untimed before each timed call (e.g. to reset state).
    """
    times = {name: [] for name in contenders}
    for rnd in range(warmup + repeats):
        for name, fn in contenders.items():
            if setup is not None:
                setup(name)
            with Timer(device) as t:
                fn()
            if rnd >= warmup:
                times[name].append(t.seconds)
    return times


def paired_ratio(numerator: List[float], denominator: List[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def ratio_spread(ratios: List[float]) -> Dict[str, float]:
    """Median, inter-quartile range, min and max of per-round ratios, and the number of rounds."""
    s = summarize(list(ratios))
    return {"median": s["median_s"], "iqr": s["iqr_s"], "min": s["min_s"], "max": s["max_s"], "rounds": s["repeats"]}
