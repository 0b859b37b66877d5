"""The drift service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common import topics
from libs.common.service_declaration import Resources, ServiceDeclaration
from services.drift.settings import DriftSettings

SERVICE = ServiceDeclaration(
    name="drift",
    summary="input, output, embedding and sensor drift per camera, model version and sensor, on faust-streaming",
    settings=(("drift", DriftSettings),),
    start_rank=25,  # after inference, whose outputs it watches; before ingest, whose frames it watches
    local_ops_port=9104,
    owns_topics=(topics.DRIFT_WINDOWS, topics.DRIFT_REFERENCES),
    resources=Resources(cpu="1", memory="1Gi"),
    # One worker holds every subject's windows: its tables are keyed by subject across source topics whose
    # partitions do not line up, so they are not split over workers (README: Drift).
    replicas=1,
)
