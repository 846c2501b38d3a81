"""Objects for the stand-in API server: workloads whose pods are local processes."""

import sys
from typing import Any

# A replica: sleeps until SIGTERM, then lingers `linger` seconds (a writer finishing its work).
REPLICA = (
    "import signal, sys, time\n"
    "linger = float(sys.argv[1])\n"
    "def stop(*_):\n"
    "    time.sleep(linger)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "while True:\n"
    "    time.sleep(0.05)\n"
)


def pod_template(
    app: str,
    *,
    linger: float = 0.0,
    grace: int = 30,
    argv: list[str] | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod template whose one container is a local Python process."""
    container: dict[str, Any] = {
        "name": app,
        "image": "local",
        "command": argv or [sys.executable, "-c", REPLICA, str(linger)],
    }
    if env:
        container["env"] = env
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": grace},
    }


def deployment(name: str, replicas: int, **template: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name, "part-of": "shop"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, **template),
        },
    }


def stateful_set(name: str, replicas: int, **template: Any) -> dict[str, Any]:
    body = deployment(name, replicas, **template)
    body["spec"]["serviceName"] = name
    return body


def autoscaler(name: str, target: str, *, low: int, high: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": low,
            "maxReplicas": high,
        },
    }


def cron_job(name: str, *, suspended: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"part-of": "shop"}},
        "spec": {
            "schedule": "*/5 * * * *",
            "suspend": suspended,
            "jobTemplate": {"spec": {"template": pod_template(name)}},
        },
    }


# A Job's pod: works `seconds`, then succeeds; on SIGTERM lingers `linger` seconds, then fails.
JOB = (
    "import signal, sys, time\n"
    "seconds, linger = map(float, sys.argv[1:3])\n"
    "def stop(*_):\n"
    "    time.sleep(linger)\n"
    "    sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "time.sleep(seconds)\n"
)


def job_of(
    cron: dict[str, Any], name: str, seconds: float, *, linger: float = 0.0, grace: int = 30
) -> dict[str, Any]:
    """A Job the CronJob started: runs `seconds`, then succeeds."""
    return {
        "metadata": {
            "name": name,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cron["metadata"]["name"],
                    "uid": cron["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "template": pod_template(
                name, argv=[sys.executable, "-c", JOB, str(seconds), str(linger)], grace=grace
            )
        },
    }
