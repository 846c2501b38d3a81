"""The one way cutover builds a Kubernetes client: for its writers, repoints and ledger."""

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from cutover.errors import UsageError
from cutover.plan import KubernetesCluster


def api_client(spec: KubernetesCluster, *, what: str, hint: str = "") -> client.ApiClient:
    """A client of the cluster the plan names: its kubeconfig, or the pod's service account."""
    try:
        if spec.kubeconfig is None:
            configuration = client.Configuration()
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            return client.ApiClient(configuration)
        built: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(spec.kubeconfig.expanduser()), context=spec.context
        )
        return built
    except (ConfigException, OSError) as exc:
        raise UsageError(
            f"{what}: cannot configure the Kubernetes client: {exc}",
            hint=hint
            or "give kubeconfig (and context) in the plan, or run cutover in a pod "
            "with a service account",
        ) from None
