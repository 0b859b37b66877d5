"""The datasets service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common import topics
from libs.common.service_declaration import Resources, SecretSetting, ServiceDeclaration, ServicePort
from services.datasets.settings import DatasetsSettings

SERVICE = ServiceDeclaration(
    name="datasets",
    summary="accepted labels of vigil.annotations committed as versions of a dataset in S3, announced on "
            "vigil.datasets",
    settings=(("datasets", DatasetsSettings),),
    start_rank=35,  # after annotation, whose labels (and their images) it takes
    local_ops_port=9106,
    ports=(ServicePort("datasets_commit", "commit_port", local_port=8094, container_port=8094),),
    owns_topics=(topics.DATASETS,),
    secret_settings=(SecretSetting("commit_token", secret="vigil-datasets", key="commit-token"),),
    resources=Resources(cpu="250m", memory="512Mi"),
    # One committer per dataset branch: the waiting labels live in this process until their version is
    # committed, and the offsets of vigil.annotations are held until then. A second replica would not lose
    # labels (the branch moves by compare-and-swap and append retries), but it would split the topic's
    # partitions and commit half-size versions racing the other on one branch.
    replicas=1,
)
