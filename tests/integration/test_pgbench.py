"""A pgbench database owned by its application, moved while pgbench writes.

The layout applications have: the database and its tables belong to the
application's role (`shop`), pgbench writes as that role, and
`pgbench_history`, the table without a key, belongs to another role and `shop`
inserts into it by grant only. prepare gives it a key while pgbench writes.
pgbench is the writer tier: stopped before the fence, started again on the
target once the switch has repointed its connection string. Nothing pgbench
committed may be missing, its balances must add up, and pgbench must print no
error, whether cutover reaches the source as a superuser or as a managed
service's admin that is none.
"""

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cutover.lab import Lab
from cutover.pg import load as load_sql
from cutover.pg import tools
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import managed_controller

pytestmark = pytest.mark.integration

SCALE = 2
CLIENTS = 4

# The writer tier: pgbench started from the env file's URL, stopped by SIGTERM
# (a background job of a script ignores SIGINT).
WRITER = """#!/bin/bash
set -euo pipefail
dir=$(dirname "$0")
case $1 in
start)
    url=$(sed -n 's/^DATABASE_URL=//p' "$dir/app.env")
    n=$(find "$dir" -maxdepth 1 -name 'pgbench.*.log' | wc -l)
    setsid "$PGBENCH" -n -c {clients} -T 600 -P 1 "$url" >"$dir/pgbench.$n.log" 2>&1 &
    echo $! >"$dir/pgbench.pid" ;;
stop)
    kill -TERM "$(cat "$dir/pgbench.pid")" 2>/dev/null || true ;;
status)
    ! kill -0 "$(cat "$dir/pgbench.pid")" 2>/dev/null ;;
esac
"""


def invariants(conn: psycopg.Connection) -> dict[str, int]:  # type: ignore[type-arg]
    """pgbench's TPC-B balances: every sum equals the sum of the history's deltas."""
    row = conn.execute(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) AS accounts, "
        "(SELECT sum(bbalance) FROM pgbench_branches) AS branches, "
        "(SELECT sum(tbalance) FROM pgbench_tellers) AS tellers, "
        "(SELECT coalesce(sum(delta), 0) FROM pgbench_history) AS history, "
        "(SELECT count(*) FROM pgbench_history) AS transactions"
    ).fetchone()
    assert row is not None
    return {k: int(v) for k, v in row.items()}


@pytest.mark.parametrize("controller", ["superuser", "managed"])
def test_pgbench_writes_through_the_whole_move_and_sees_no_error(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
    controller: str,
) -> None:
    db, tag, password = databases.create(), uuid.uuid4().hex[:6], uuid.uuid4().hex
    shop, keeper = f"shop_{tag}", f"keeper_{tag}"
    for side in ("source", "target"):
        with connect(lab.server(side)) as conn:
            for role in (shop, keeper):
                load_sql.ensure_login_role(conn, role, password)  # type: ignore[arg-type]
    with connect(lab.server("source")) as conn:
        conn.execute(f'ALTER DATABASE "{db.replace(chr(34), chr(34) * 2)}" OWNER TO {shop}')
    port = lab.server("source").port
    quoted = db.replace('"', "%22").replace(" ", "%20")
    url = f"postgresql://{shop}:{password}@127.0.0.1:{port}/{quoted}"
    pgbench = str(tools.bindir() / "pgbench")
    subprocess.run([pgbench, "-i", "-q", "-s", str(SCALE), url], check=True, capture_output=True)
    with connect(lab.server("source"), db) as conn:
        # The keyless table is another role's; the application inserts into it by grant.
        conn.execute(f"ALTER TABLE pgbench_history OWNER TO {keeper}")
        conn.execute(f"GRANT SELECT, INSERT ON pgbench_history TO {shop}")
    (tmp_path / "app.env").write_text(f"DATABASE_URL={url}\n")
    writer = tmp_path / "writer.sh"
    writer.write_text(WRITER.replace("{clients}", str(CLIENTS)))
    writer.chmod(0o755)
    source: dict[str, str] = {}
    if controller == "managed":
        source = managed_controller(lab, shop, tmp_path)
        with connect(lab.server("source")) as conn:
            conn.execute(f"GRANT {keeper} TO {source['user']}")
    plan = str(
        write_plan(
            [db],
            move=f"t{tag}",
            source=source,
            writers=[
                {
                    "name": "pgbench",
                    "command": {
                        "start": [str(writer), "start"],
                        "stop": [str(writer), "stop"],
                        "status": [str(writer), "status"],
                    },
                }
            ],
            repoint=[
                {"name": "env", "file": {"path": str(tmp_path / "app.env"), "key": "DATABASE_URL"}}
            ],
            fence={"roles": [shop, keeper]},
            thresholds={"lag_window": "1s", "switch_timeout": "10s"},
        )
    )
    env = {"PGBENCH": pgbench}  # the writer commands inherit cutover's environment
    subprocess.run([str(writer), "start"], check=True, env={**os.environ, **env})
    try:
        time.sleep(1)
        for command in (["prepare"], ["start", "--wait"], ["switch", "--yes"]):
            result = cutover(*command, "-p", plan, env=env)
            assert result.code == 0, result.stdout + result.stderr
        time.sleep(2)  # pgbench writes on the target
    finally:
        subprocess.run([str(writer), "stop"], check=False)
    deadline = time.monotonic() + 10
    while subprocess.run([str(writer), "status"], check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    logs = sorted(tmp_path.glob("pgbench.*.log"))
    assert len(logs) == 2  # started on the source, then again on the target
    for log in logs:
        text = log.read_text()
        assert "progress:" in text, text
        assert "error" not in text.lower() and "abort" not in text.lower(), text

    with (
        connect(lab.server("source"), db) as source_conn,
        connect(lab.server("target"), db) as target_conn,
    ):
        before, after = invariants(source_conn), invariants(target_conn)
        # The source froze at the fence: everything it committed is on the target.
        frozen = source_conn.execute(
            "SELECT max(cutover_id) AS last, count(*) AS n, sum(delta) AS delta "
            "FROM pgbench_history"
        ).fetchone()
        moved = target_conn.execute(
            "SELECT count(*) AS n, sum(delta) AS delta FROM pgbench_history WHERE cutover_id <= %s",
            (frozen["last"],),  # type: ignore[index]
        ).fetchone()
    assert before["accounts"] == before["history"] == before["branches"] == before["tellers"]
    assert after["accounts"] == after["history"] == after["branches"] == after["tellers"]
    assert moved == {"n": frozen["n"], "delta": frozen["delta"]}  # type: ignore[index]
    assert before["transactions"] > 100
    assert after["transactions"] > before["transactions"]  # writes resumed on the target
    report = {"source": before, "target": after}
    print(json.dumps(report))
