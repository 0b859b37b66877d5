"""The training service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common import topics
from libs.common.service_declaration import Resources, ScratchDir, SecretSetting, ServiceDeclaration
from services.training.settings import TrainingSettings

SERVICE = ServiceDeclaration(
    name="training",
    summary="committed dataset versions of vigil.datasets trained on: candidates gated against the champion and "
            "imported into the model registry with their lineage, progress and outcome on vigil.training",
    settings=(("training", TrainingSettings),),
    start_rank=40,  # after datasets, whose versions it trains on
    local_ops_port=9107,
    # vigil.rollouts: written by the rollout controller, which runs in this service.
    owns_topics=(topics.TRAINING, topics.ROLLOUTS),
    # The dataset store read with its own read-only keys (Secret vigil-datasets-read), not the writer's.
    secret_settings=(SecretSetting("datasets_read_access_key", secret="vigil-datasets-read", key="access-key"),
                     SecretSetting("datasets_read_secret_key", secret="vigil-datasets-read", key="secret-key")),
    # Champions downloaded, candidates before their import, the base detector's proposals per image.
    scratch_dirs=(ScratchDir("work_dir", "/var/cache/vigil/training", "training-work"),),
    # A job runs the detector over every item once (OpenVINO on the CPU), then fits and evaluates in numpy.
    resources=Resources(cpu="1000m", memory="1Gi"),
    # One job at a time: a second replica would split nothing (vigil.datasets has one partition) and only wait.
    replicas=1,
)
