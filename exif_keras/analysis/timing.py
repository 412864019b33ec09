"""Timing several things side by side in one process: interleaved rounds, medians, ratios.

The machine is usually shared and noisy, so a ratio of two figures taken at the same moment means
more than either figure alone: every measurement is warmed up untimed, then ``repeats`` rounds
each time every measurement once, in an order rotated from round to round, with the garbage
collector off. Reported: the median rate and its range, and ``ratio`` = median / median of the
baseline (``paired``: the median of the per-round ratios, robust to slow drifts of the load).
Used by the speed benchmark (:mod:`exif_keras.analysis.benchmarks`).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Callable, Mapping, Sequence

MODEL_WARMUP_CALLS = 1        # untimed calls of every model measurement before round 1 (traces)


@dataclasses.dataclass
class Measurement:
    """One thing to time. ``step()`` runs one timed iteration and returns the images it handled;
    ``start()``/``stop()`` run untimed around every measurement (fresh iterator and warm-up)."""

    name: str
    step: Callable[[], int]
    steps: int
    start: Callable[[], None] = lambda: None
    stop: Callable[[], None] = lambda: None
    warmup: int = MODEL_WARMUP_CALLS   # untimed calls before the first round (tracing)


@dataclasses.dataclass
class Sample:
    wall_s: float
    cpu_s: float
    images: int


def measure_interleaved(measurements: Sequence[Measurement], repeats: int,
                        log: Callable[[str], None] = lambda s: None) -> dict[str, list[Sample]]:
    """Warm every measurement up, then ``repeats`` rounds, each timing every measurement once
    (``steps`` iterations) in an order rotated from round to round."""
    for m in measurements:
        if m.warmup:
            start = time.perf_counter()
            m.start()
            for _ in range(m.warmup):
                m.step()
            m.stop()
            log(f"  warm-up {m.name}: {time.perf_counter() - start:.1f} s")
    samples = {m.name: [] for m in measurements}
    n = len(measurements)
    for r in range(repeats):
        order = list(measurements[r % n:]) + list(measurements[:r % n])
        for m in order:
            # Collect before start(): a pipeline would fill its buffers during the collection.
            gc.collect()
            gc.disable()
            try:
                m.start()
                images = 0
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(m.steps):
                    images += m.step()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            finally:
                gc.enable()
                m.stop()
            samples[m.name].append(Sample(wall, cpu, images))
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{m.name} {samples[m.name][-1].images / samples[m.name][-1].wall_s:.1f} img/s"
            for m in measurements))
    return samples


def summarise(samples: Sequence[Sample]) -> dict:
    """Median images/s (and range), ms per image, images per CPU-second, cores used."""
    rates = [s.images / s.wall_s for s in samples]
    cpu_rates = [s.images / s.cpu_s for s in samples if s.cpu_s > 0]
    median = statistics.median(rates)
    return {
        "images_per_s": median,
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "ms_per_image": 1000.0 / median,
        "images_per_cpu_s": statistics.median(cpu_rates) if cpu_rates else None,
        "cores_used": statistics.median(s.cpu_s / s.wall_s for s in samples),
        "rounds": len(samples),
        "images_per_round": samples[0].images,
        "samples": [dataclasses.asdict(s) for s in samples],
    }


def ratio(samples: Mapping[str, Sequence[Sample]], of: str, to: str) -> dict:
    """``of`` relative to ``to``: wall-clock rate and rate per CPU-second, as ratios of the medians
    and as medians of the per-round (paired) ratios."""

    def rates(name, per_cpu):
        return [s.images / (s.cpu_s if per_cpu else s.wall_s) for s in samples[name]]

    out = {"of": of, "to": to}
    for key, per_cpu in (("wall", False), ("per_cpu", True)):
        a, b = rates(of, per_cpu), rates(to, per_cpu)
        out[key] = statistics.median(a) / statistics.median(b)
        out[key + "_paired"] = statistics.median(x / y for x, y in zip(a, b))
    return out
