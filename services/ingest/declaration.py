"""The ingest service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common import topics
from libs.common.service_declaration import Resources, ServiceDeclaration, ServicePort
from libs.common.settings import ObjectStoreSettings
from services.ingest.sensors.settings import SensorSettings
from services.ingest.settings import IngestSettings

SERVICE = ServiceDeclaration(
    name="ingest",
    summary="cameras (RTSP, MJPEG, files) and sensor readings in, frame and sensor events out",
    settings=(("ingest", IngestSettings), ("ingest: sensors", SensorSettings)),
    start_rank=30,
    local_ops_port=9101,
    ports=(ServicePort("sensors_http", "http_port", local_port=8090, container_port=8090),),
    owns_topics=(topics.FRAMES, topics.CAMERAS, topics.SENSORS_RAW, topics.SENSORS, topics.SENSORS_REGISTRY),
    resources=Resources(cpu="500m", memory="512Mi"),
    # Each replica names itself after its pod: the name shows in camera status and the consumer group.
    pod_name_settings=("replica_id",),
    replicas=2,  # cameras spread over both through the registry's consumer group; one takes over if the other dies
)
