"""The annotation service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common import topics
from libs.common.service_declaration import PeerAddress, Resources, ServiceDeclaration, ServicePort
from services.annotation.settings import AnnotationSettings

SERVICE = ServiceDeclaration(
    name="annotation",
    summary="frames worth a human look queued from the live streams, the review UI, labels on vigil.annotations",
    settings=(("annotation", AnnotationSettings),),
    start_rank=30,  # after inference (its results and its face model) and drift (its alerts)
    local_ops_port=9105,
    ports=(ServicePort("annotation_ui", "ui_port", local_port=8091, container_port=8091),),
    owns_topics=(topics.ANNOTATION_TASKS, topics.ANNOTATION_LABELS),
    peer_addresses=(PeerAddress("inference_grpc", service="inference", port="grpc"),),
    resources=Resources(cpu="500m", memory="512Mi"),
    # Replicas share the queue: every transition is a compare-and-swap on the task's object, so two replicas
    # never lease one task, and each follows the compacted task topic for the others' changes.
    replicas=2,
)
