"""The inference service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common import topics
from libs.common.service_declaration import Resources, ScratchDir, ServiceDeclaration, ServicePort
from services.inference.settings import InferenceSettings

SERVICE = ServiceDeclaration(
    name="inference",
    summary="OpenVINO models over gRPC (Open Inference Protocol) and on every frame and sensor reading",
    settings=(("inference", InferenceSettings),),
    start_rank=20,
    local_ops_port=9102,
    ports=(ServicePort("grpc", "grpc_port", local_port=8001, container_port=8001),),
    # vigil.models is written by the model registry (libs, `vigil models`) and followed here: inference owns it.
    owns_topics=(topics.INFERENCE, topics.INFERENCE_SHADOW, topics.INFERENCE_SENSORS, topics.MODELS),
    resources=Resources(cpu="2", memory="2Gi"),
    # Versions downloaded from the model registry (hot swap) land here; the root filesystem is read-only.
    scratch_dirs=(ScratchDir("registry_cache_dir", "/var/cache/vigil/registry", "registry-cache"),),
    start_timeout_s=300,  # loading and warming every model up on a busy machine (the install step builds them)
)
