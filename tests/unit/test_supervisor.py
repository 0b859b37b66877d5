"""The supervisor stops exactly what it started: whole process groups, and never a stranger's pid."""
import json
import subprocess
import sys
import time

from cli.stack.component import ComponentSpec, StackPaths
from cli.stack.supervisor import Supervisor


def sleeper_with_child(name: str) -> ComponentSpec:
    # A parent that starts a grandchild, as `java` or `weed` do: both must stop.
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    return ComponentSpec(name, [sys.executable, "-c", script], healthy=lambda: True, start_timeout_s=5)


def group_members(pgid: int) -> list[int]:
    """Live members of the process group (zombies have exited; only their reaping is pending)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split() and not line.split()[1].startswith("Z")]


def test_down_stops_the_whole_process_group(tmp_path):
    supervisor = Supervisor(StackPaths(tmp_path / "state", tmp_path / "cache"), [sleeper_with_child("a")])
    supervisor.up(progress=lambda *_: None)
    pid = supervisor.running_pid("a")
    # The grandchild is there once the parent's interpreter has started it: polled, as a loaded box takes a while.
    deadline = time.monotonic() + 30
    while len(group_members(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(pid)) == 2
    assert supervisor.status()[0].running
    supervisor.down(timeout_s=5, progress=lambda *_: None)
    assert group_members(pid) == []
    assert not supervisor.status()[0].running


def test_a_recycled_pid_is_not_ours_and_is_left_alone(tmp_path):
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        supervisor = Supervisor(StackPaths(tmp_path / "state", tmp_path / "cache"), [sleeper_with_child("a")])
        # A record left by an earlier run whose pid now belongs to someone else (other start time).
        (tmp_path / "state" / "pids" / "a.json").write_text(json.dumps({"pid": stranger.pid, "start_ticks": 1, "argv": []}))
        assert supervisor.status()[0].running is False
        supervisor.down(timeout_s=2, progress=lambda *_: None)
        assert stranger.poll() is None, "the stranger must survive"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_component_that_exits_during_start_is_reported_with_its_log(tmp_path):
    spec = ComponentSpec("broken", [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
                         healthy=lambda: False, start_timeout_s=10)
    supervisor = Supervisor(StackPaths(tmp_path / "state", tmp_path / "cache"), [spec])
    try:
        supervisor.up(progress=lambda *_: None)
        raise AssertionError("up should have failed")
    except RuntimeError as error:
        assert "broken exited during start" in str(error) and "bad config" in str(error)


def test_up_twice_does_not_start_a_second_copy(tmp_path):
    supervisor = Supervisor(StackPaths(tmp_path / "state", tmp_path / "cache"), [sleeper_with_child("a")])
    try:
        supervisor.up(progress=lambda *_: None)
        first = supervisor.running_pid("a")
        supervisor.up(progress=lambda *_: None)
        assert supervisor.running_pid("a") == first
    finally:
        supervisor.down(timeout_s=5, progress=lambda *_: None)
