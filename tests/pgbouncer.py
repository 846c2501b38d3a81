"""A real PgBouncer for a test: in front of one lab server, the product's (cutover.pooler)."""

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cutover.lab import RUN_AS, free_port
from cutover.plan import Server
from cutover.pooler import Bouncer, entry


@contextmanager
def running(
    server: Server, db: str, users: Mapping[str, str], *, entry_name: str = "app", force: str = ""
) -> Iterator[Bouncer]:
    """PgBouncer in transaction pooling; `[databases] entry_name` is `db` on `server`.

    `users` log in with their passwords (auth_type plain); `force` is a `user=...
    password=...` the entry logs into the server as, if given. Another entry,
    `other`, is there to be left alone.
    """
    run_as = RUN_AS if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="cutover-pgbouncer-"))
    bouncer = Bouncer(folder, free_port())
    bouncer.configure(
        {entry_name: entry(server, db, force), "other": "host=127.0.0.1 port=1 dbname=untouched"},
        users,
        run_as=run_as,
    )
    bouncer.start(run_as=run_as)
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(folder, ignore_errors=True)
