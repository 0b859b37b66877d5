"""The metrics service as the stack, `vigil config`, the topic catalog and the manifests see it."""
from libs.common.service_declaration import DataVolume, Resources, SecretSetting, ServiceDeclaration, ServicePort
from services.metrics.settings import MetricsSettings

SERVICE = ServiceDeclaration(
    name="metrics",
    summary="every reporting topic into ClickHouse, the query API and the dashboard",
    settings=(("metrics", MetricsSettings),),
    start_rank=10,
    local_ops_port=9103,
    ports=(ServicePort("query_api", "api_port", local_port=8088, container_port=8088),),
    # In a pod the API binds every interface, where it refuses to serve without a token: the operator's Secret.
    secret_settings=(SecretSetting("api_token", secret="vigil-metrics-api", key="token"),),
    resources=Resources(cpu="1", memory="2Gi"),
    # The embedded store allows one process per data directory: one replica, its data on a volume of its own.
    data_volume=DataVolume("store_path", mount_path="/data", path="/data/clickhouse", size="20Gi"),
)
