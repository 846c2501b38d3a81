"""What a Kubernetes writer was before the switch stopped it, as the ledger keeps it.

Recorded before anything changes, read back by the start (and by a stop or start
run again after a crash), so the counts restored are those from before the stop,
never the live ones (zero by then). Plain values only: the JSON of a ledger document.
The Jobs a stop ends (`end_running_jobs`) are added before they are deleted, so the
drain, in this run or the next, waits for their pods, whose Job is gone by then.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The workloads a Kubernetes writer scales."""

    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet and its replica count before the stop."""

    kind: Kind
    name: str
    replicas: int

    def describe(self) -> str:
        """`deployment/api`, as kubectl names it."""
        return f"{self.kind.value.lower()}/{self.name}"


@dataclass(frozen=True)
class Autoscaler:
    """A HorizontalPodAutoscaler of a workload, and the target it had before it was held."""

    name: str
    target_api_version: str
    target_kind: str
    target_name: str


@dataclass(frozen=True)
class CronJob:
    """A CronJob and whether it was suspended before the stop."""

    name: str
    suspended: bool


@dataclass(frozen=True)
class Recorded:
    """One writer's state before its stop; `started` once the start restored it.

    `ended_jobs`: the Jobs of the CronJobs the stop deleted, whose pods the drain waits for.
    """

    workloads: tuple[Workload, ...] = ()
    autoscalers: tuple[Autoscaler, ...] = ()
    cronjobs: tuple[CronJob, ...] = ()
    started: bool = False
    ended_jobs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ledger's JSON form."""
        return {
            "workloads": [
                {"kind": w.kind.value, "name": w.name, "replicas": w.replicas}
                for w in self.workloads
            ],
            "autoscalers": [
                {
                    "name": a.name,
                    "target": {
                        "apiVersion": a.target_api_version,
                        "kind": a.target_kind,
                        "name": a.target_name,
                    },
                }
                for a in self.autoscalers
            ],
            "cronjobs": [{"name": c.name, "suspended": c.suspended} for c in self.cronjobs],
            "started": self.started,
            "ended_jobs": list(self.ended_jobs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recorded":
        """Read back `to_dict`; raise ValueError on anything else."""
        try:
            return cls(
                workloads=tuple(
                    Workload(Kind(w["kind"]), str(w["name"]), _count(w["replicas"]))
                    for w in data["workloads"]
                ),
                autoscalers=tuple(
                    Autoscaler(
                        str(a["name"]),
                        str(a["target"]["apiVersion"]),
                        str(a["target"]["kind"]),
                        str(a["target"]["name"]),
                    )
                    for a in data["autoscalers"]
                ),
                cronjobs=tuple(
                    CronJob(str(c["name"]), _flag(c["suspended"])) for c in data["cronjobs"]
                ),
                started=_flag(data.get("started", False)),
                # a record written before the option had none
                ended_jobs=_names(data.get("ended_jobs", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a recorded writer state: {exc}") from None


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a replica count: {value!r}")
    return value


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a list of names: {value!r}")
    return tuple(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"not true or false: {value!r}")
    return value
