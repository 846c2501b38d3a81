"""Cloud Monitoring (monitoring v3): the replication lag DMS and Cloud SQL report.

DMS has no lag field in its API; the lag is a metric, sampled every 60 s and
visible up to about 3 minutes later. So a point says how far behind the
target was at its end time, not now: "zero lag" means several zero points
after the writers stopped, which is the engine's to decide.
"""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from cutover.cloud.client import Clients
from cutover.cloud.resources import Api, Series, format_time, series_from

# From Google's metrics list (cloud.google.com/monitoring/api/metrics_gcp).
DMS_LAG_SECONDS = "datamigration.googleapis.com/migration_job/max_replica_sec_lag"
DMS_LAG_BYTES = "datamigration.googleapis.com/migration_job/max_replica_bytes_lag"
DMS_RESOURCE = "datamigration.googleapis.com/MigrationJob"  # label: migration_job_id
# The destination instance's view, labelled resource.labels.database_id=project:instance.
CLOUDSQL_LAG_BYTES = (
    "cloudsql.googleapis.com/database/postgresql/external_sync/max_replica_byte_lag"
)
CLOUDSQL_RESOURCE = "cloudsql_database"


def quoted(value: str) -> str:
    """A string literal of the Monitoring filter language."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def series_filter(metric: str, *, resource: str | None, labels: Mapping[str, str]) -> str:
    """`metric.type="M" AND resource.type="R" AND resource.labels.K="V"...`."""
    parts = [f"metric.type = {quoted(metric)}"]
    if resource is not None:
        parts.append(f"resource.type = {quoted(resource)}")
    parts += [f"resource.labels.{key} = {quoted(value)}" for key, value in sorted(labels.items())]
    return " AND ".join(parts)


def _page(query: Mapping[str, Any], token: str | None) -> Callable[[Any], Any]:
    def make(service: Any) -> Any:
        return service.projects().timeSeries().list(**query, pageToken=token)

    return make


class Monitoring:
    """The Monitoring calls of one project."""

    def __init__(self, clients: Clients, *, project: str) -> None:
        self.clients = clients
        self.project = project

    def series(
        self,
        metric: str,
        *,
        start: datetime,
        end: datetime,
        resource: str | None = None,
        labels: Mapping[str, str] | None = None,
        align_seconds: int = 60,
    ) -> list[Series]:
        """Each series of one metric between two moments, aligned to its max per period."""
        query: dict[str, Any] = {
            "name": f"projects/{self.project}",
            "filter": series_filter(metric, resource=resource, labels=labels or {}),
            "interval_startTime": format_time(start),
            "interval_endTime": format_time(end),
            "aggregation_alignmentPeriod": f"{align_seconds}s",
            "aggregation_perSeriesAligner": "ALIGN_MAX",
            "view": "FULL",
        }
        found: list[Series] = []
        token: str | None = None
        while True:
            page = self.clients.execute(
                self.clients.call(Api.MONITORING, _page(query, token), dict)
            )
            found.extend(series_from(item) for item in page.get("timeSeries", []))
            token = page.get("nextPageToken") or None
            if token is None:
                return found
