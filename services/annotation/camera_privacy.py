"""Which cameras opted out of face blurring, followed from the camera registry (vigil.cameras).

A camera opts out with the registry label `privacy.blur_faces=false` (for instance a camera that only ever sees
a loading dock), set with `vigil cameras add ... --label privacy.blur_faces=false` or by any registry writer. Every
other camera, known or not, is blurred: the safe default."""
from __future__ import annotations

import threading

from libs.common.compacted import Change, CompactedTable
from libs.common.topics import CAMERAS
from protos import events_pb2

OPT_OUT_LABEL = "privacy.blur_faces"


class BlurOptOuts:
    """The cameras opted out, from the registry's changes (thread-safe: read by the intake, written by the
    follower)."""

    def __init__(self) -> None:
        self._cameras: set[str] = set()
        self._lock = threading.Lock()

    def opted_out(self, camera_id: str) -> bool:
        with self._lock:
            return camera_id in self._cameras

    def apply(self, changes: list[Change]) -> None:
        with self._lock:
            for change in changes:
                if change.value is not None and change.value.labels.get(OPT_OUT_LABEL, "").lower() == "false":
                    self._cameras.add(change.key)
                elif not change.problem:
                    self._cameras.discard(change.key)


class CameraPrivacy(BlurOptOuts):
    """BlurOptOuts kept current by a follower of the camera registry (`run` as a service task)."""

    def __init__(self, client_config: dict[str, str]) -> None:
        super().__init__()
        table = CompactedTable(client_config, CAMERAS, client_id="annotation", message=events_pb2.CameraConfig)
        self._follower = table.follower(self.apply)
        self.run = self._follower.run
        self.ready = self._follower.ready
        self.heartbeat = self._follower.heartbeat
