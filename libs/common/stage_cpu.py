"""CPU time each stage of a frame's path costs (decode, scale, encode, produce...), as the Prometheus counter
`vigil_stage_cpu_seconds_total{stage}`: the figure that says where the cameras a box can watch are lost.

It is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time: a stage that waits for the GIL,
a lock or the network costs nothing here, and one that runs while the machine is loaded costs what it costs.
Work a library hands to threads of its own (librdkafka's, OpenVINO's) is not counted; `bench.cameras_per_box`
reads those from /proc. Reading the thread clock twice costs about a microsecond."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter

STAGE_CPU_SECONDS = Counter("vigil_stage_cpu_seconds_total",
                            "CPU seconds the calling thread spent in each stage of a frame's path", ["stage"])
STAGE_RUNS = Counter("vigil_stage_runs_total", "Times each stage of a frame's path ran", ["stage"])


@contextmanager
def stage_cpu(stage: str) -> Iterator[None]:
    """Counts the thread CPU time of the block under `stage` (also when it raises)."""
    started = time.thread_time()
    try:
        yield
    finally:
        STAGE_CPU_SECONDS.labels(stage).inc(time.thread_time() - started)
        STAGE_RUNS.labels(stage).inc()
