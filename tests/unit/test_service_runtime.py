"""The service runtime stops the whole service when any of its tasks dies, and exits non-zero then; SIGTERM
stops every task and exits 0, unless a task ignores the stop past the grace period."""
import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

SERVICE = textwrap.dedent('''
    import sys, threading, time
    from libs.common.service import start_service
    from libs.common.settings import ServiceSettings

    runtime = start_service("demo", ServiceSettings(ops_port=0, shutdown_timeout_s=2))

    def steady(stop):
        while not stop.wait(0.05):
            pass

    def dies_after_a_moment(stop):
        stop.wait(float(sys.argv[2]))
        raise RuntimeError("the broker said no")

    def returns_early(stop):
        stop.wait(float(sys.argv[2]))

    def ignores_stop(stop):
        stop.wait()
        time.sleep(60)

    runtime.start_task("steady", steady)
    runtime.start_task(sys.argv[1], globals()[sys.argv[1]])
    runtime.on_stop("say goodbye", lambda: print("cleaned up", flush=True))
    print(runtime.ops.port, flush=True)
    sys.exit(runtime.run())
''')


# A start-up step that waits (for a topic to load, say) and never finishes.
SLOW_START = textwrap.dedent('''
    import sys, threading
    from libs.common.service import start_service
    from libs.common.settings import ServiceSettings

    runtime = start_service("demo", ServiceSettings(ops_port=0, shutdown_timeout_s=2))
    print(runtime.ops.port, flush=True)
    if not runtime.wait_until(threading.Event(), timeout_s=600):
        sys.exit(runtime.run() if runtime.stop.is_set() else 3)
''')


STARTED: list[subprocess.Popen] = []


def start(second_task: str, after_s: float = 0.5) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", SERVICE, second_task, str(after_s)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    return process, int(process.stdout.readline())


def test_a_task_that_raises_stops_the_service_with_a_non_zero_exit():
    process, _ = start("dies_after_a_moment")
    assert process.wait(timeout=30) == 1
    out, err = process.communicate()
    assert "cleaned up" in out
    failure = [json.loads(line) for line in err.splitlines() if '"task failed"' in line]
    assert failure and failure[0]["task"] == "dies_after_a_moment" and "the broker said no" in failure[0]["exception"]


def test_a_task_that_returns_while_the_service_runs_is_a_failure_too():
    process, _ = start("returns_early")
    assert process.wait(timeout=30) == 1
    assert "task ended while the service was running" in process.communicate()[1]


def test_sigterm_stops_every_task_runs_the_cleanups_and_exits_zero():
    process, port = start("returns_early", after_s=3600)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as response:
        checks = json.loads(response.read())["checks"]
    assert {"task:steady", "task:returns_early"} <= set(checks)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "cleaned up" in process.communicate()[0]


def test_a_task_that_ignores_the_stop_makes_the_exit_non_zero_after_the_grace_period():
    process, _ = start("ignores_stop")
    time.sleep(0.3)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 1
    assert time.monotonic() - started < 20  # the grace period is 2 s: it does not wait for the task's 60 s
    assert "tasks did not stop within the grace period" in process.communicate()[1]


def test_a_service_still_starting_is_not_ready_and_a_sigterm_then_stops_it_at_once():
    process = subprocess.Popen([sys.executable, "-c", SLOW_START], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    STARTED.append(process)
    port = int(process.stdout.readline())
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert not_ready.value.code == 503
    assert json.loads(not_ready.value.read())["checks"]["started"]["ok"] is False
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10  # not the 600 s the start-up step would have waited


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
