"""`python -m bench.loop` (part of `make bench`): the whole feedback loop on a fresh local stack, timed from the drift's
start to the promoted model, split by stage (detection, labelling and commit, training with its evaluation, shadow,
canary), with the test-split mAP@0.5 of champion and candidate, and the two worse candidates (refused by the gate;
forced past it and rolled back). Target: drift to promoted within 15 minutes, the candidate better than the
champion on the site's test split. Figures to bench/results/loop.json."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench.common import machine_description, say
from cli.stack.local import LocalStack, StackPorts, install_stack
from libs.common.cache_dir import default_cache_dir

TARGET_S = 15 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop.json"))
    args = parser.parse_args()
    cache = default_cache_dir()
    install_stack(cache)
    state = Path(tempfile.mkdtemp(prefix="vigil-bench-loop-"))
    stack = LocalStack(state=state, cache=cache, ports=StackPorts.free())
    summary_file = state / "loop.json"
    try:
        stack.up(progress=say)
        started = datetime.now(timezone.utc)
        done = subprocess.run([sys.executable, "-m", "cli", "--state-dir", str(state), "demo", "loop",
                               "--json", str(summary_file)], timeout=3600)
        if done.returncode != 0:
            say(f"the loop did not close (exit {done.returncode}); logs under {stack.paths.logs()}")
            return 1
        loop = json.loads(summary_file.read_text())
    finally:
        stack.supervisor.down(progress=say)
    result = {
        "date": started.strftime("%Y-%m-%d"), "machine": machine_description(),
        "drift_to_promoted_s": loop["drift_to_promoted_s"], "target_s": TARGET_S,
        "within_target": loop["drift_to_promoted_s"] is not None and loop["drift_to_promoted_s"] <= TARGET_S,
        **loop,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
