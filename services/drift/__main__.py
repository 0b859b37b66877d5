"""The drift service: windowed input, output, embedding and sensor drift on faust-streaming, alerts on
vigil.monitoring, every window on vigil.drift.windows, references in the object store (faust_app.py)."""
from __future__ import annotations

import os

# One core's worth of work on one asyncio loop: BLAS threads would only spin against each other (an MMD took 3x
# longer with OpenBLAS's two threads than with one on a busy 2-core machine). Set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import faust  # noqa: E402 (after the thread settings above)

from libs.common.logs import configure_logging, get_logger, route_standard_logging
from libs.common.objectstore import object_store_client
from libs.common.ops import Health, OpsServer
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import ensure_topics
from services.drift.faust_app import SERVICE, build_app
from services.drift.monitor import DriftMonitor, DriftPolicy
from services.drift.processor import DriftProcessor
from services.drift.references import ReferenceStore, references_table
from services.drift.settings import DriftSettings
from services.drift.windows import ComparisonPolicy

log = get_logger(__name__)


class DriftWorker(faust.Worker):
    """faust's worker, with the service's JSON logs, and a hard stop when a graceful one hangs: a worker whose
    agent crashed has been seen to ignore SIGTERM, and a pod must not outlive its grace period."""

    def __init__(self, app: faust.App, log_level: str, grace_s: float) -> None:
        super().__init__(app, loglevel=log_level, quiet=True, override_logging=True, redirect_stdouts=False)
        self.log_level, self.grace_s = log_level, grace_s

    def on_setup_root_logger(self, logger, level: int) -> None:
        route_standard_logging(SERVICE, self.log_level)

    def _on_sigterm(self) -> None:
        def force_exit() -> None:
            log.error("not stopped within the grace period; exiting", grace_s=self.grace_s)
            os._exit(1)

        timer = threading.Timer(self.grace_s, force_exit)
        timer.daemon = True
        timer.start()
        super()._on_sigterm()

    _on_sigint = _on_sigterm


def policy(settings: DriftSettings) -> DriftPolicy:
    return DriftPolicy(window_s=settings.window_s, grace_s=settings.grace_s,
                       reference_windows=settings.reference_windows, raise_after=settings.raise_after,
                       clear_after=settings.clear_after, comparison=ComparisonPolicy(min_frames=settings.min_frames))


def main() -> None:
    settings = DriftSettings()
    kafka = KafkaSettings()
    object_store = ObjectStoreSettings()
    configure_logging(SERVICE, settings.log_level)
    if object_store.secret_key is None:
        raise SystemExit("drift keeps its reference profiles in the object store: set VIGIL_S3_SECRET_KEY")
    # Not ready until the state is restored (the check is replaced once the app exists): with no check at all,
    # /readyz answered 200 while the worker was still loading references and joining its group.
    health = Health(readiness={"state_restored": lambda: (False, "starting")})
    ops = OpsServer(settings.ops_host, settings.ops_port, health).start()
    log.info("starting", ops=f"http://{settings.ops_host}:{ops.port}")
    data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="vigil-drift-"))
    try:
        if kafka.create_topics:
            ensure_topics(kafka.client_config(), kafka.replication_factor)
        references = ReferenceStore(object_store_client(object_store), settings.reference_bucket)
        references.ensure_bucket()
        processor = DriftProcessor(DriftMonitor(policy(settings)))
        # References announced before this start (set by hand, or built by an earlier run).
        announced = references_table(kafka.client_config(), "drift-references").snapshot()
        for announcement in announced.values():
            processor.monitor.set_reference(references.get(announcement))
        log.info("references loaded", count=len(announced))
        drift = build_app(settings.model_copy(update={"data_dir": data_dir}), kafka, processor, references)
        health.liveness["drift_loop"] = drift.heartbeat.check
        health.readiness["state_restored"] = drift.ready
        code = 0
        try:
            DriftWorker(drift.app, settings.log_level, settings.shutdown_timeout_s).execute_from_commandline()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        log.info("stopped", failure=repr(drift.failure) if drift.failure else None)
        sys.exit(1 if drift.failure is not None else code)
    finally:
        ops.stop()
        if settings.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
