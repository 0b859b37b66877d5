"""stage_cpu counts the thread's CPU time, so a stage that waits costs nothing and one that computes costs
what it computes, whatever else the process's threads do meanwhile."""
import threading
import time

from libs.common.stage_cpu import STAGE_CPU_SECONDS, STAGE_RUNS, stage_cpu


def counted(stage: str) -> tuple[float, float]:
    return STAGE_CPU_SECONDS.labels(stage)._value.get(), STAGE_RUNS.labels(stage)._value.get()


def busy(seconds_of_cpu: float) -> None:
    started = time.thread_time()
    while time.thread_time() - started < seconds_of_cpu:
        sum(range(1000))


def test_a_stage_that_waits_costs_no_cpu():
    with stage_cpu("test.waiting"):
        time.sleep(0.2)
    cpu, runs = counted("test.waiting")
    assert runs == 1 and cpu < 0.05


def test_a_stage_that_computes_costs_its_own_thread_cpu_only():
    # Another thread burning CPU at the same time must not be counted against the stage.
    other = threading.Thread(target=busy, args=(0.3,))
    other.start()
    with stage_cpu("test.computing"):
        busy(0.1)
    other.join()
    cpu, runs = counted("test.computing")
    assert runs == 1 and 0.1 <= cpu < 0.2


def test_a_stage_that_raises_is_still_counted():
    try:
        with stage_cpu("test.raising"):
            busy(0.02)
            raise ValueError("boom")
    except ValueError:
        pass
    cpu, runs = counted("test.raising")
    assert runs == 1 and cpu >= 0.02
