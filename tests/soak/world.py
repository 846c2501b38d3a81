"""A scenario's tables made on the source, and the sessions that write them.

Every name is quoted with psycopg.sql.Identifier: the generated names are the
ones that break a tool which formats SQL with strings.
"""

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.types.json
from psycopg import sql

from cutover.plan import Server
from tests.soak.scenario import Kind, Scenario, Table

ENUM, SHARED_SEQUENCE = "mood", "shared ids"
COLUMNS = {
    "enum": sql.SQL("mood {}").format(sql.Identifier(ENUM)),
    "array": sql.SQL("tags text[]"),
    "json": sql.SQL("doc jsonb"),
    "bytea": sql.SQL("blob bytea"),
    "toast": sql.SQL("body text"),
    "numeric": sql.SQL("amount numeric(12,2)"),
    "timestamptz": sql.SQL("happened timestamptz"),
}
NAMES = {
    "enum": "mood",
    "array": "tags",
    "json": "doc",
    "bytea": "blob",
    "toast": "body",
    "numeric": "amount",
    "timestamptz": "happened",
}
KEYS = {
    Kind.IDENTITY: "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    Kind.SERIAL: "id bigserial PRIMARY KEY",
    Kind.SHARED: "id bigint PRIMARY KEY DEFAULT nextval({seq})",
    Kind.KEYLESS: "id bigint NOT NULL DEFAULT nextval({seq})",
    Kind.PARTITIONED: "id bigint NOT NULL DEFAULT nextval({seq}) PRIMARY KEY",
    Kind.CHILD: "id bigserial PRIMARY KEY, parent bigint REFERENCES {parent} (id) "
    "ON DELETE CASCADE",
}


def value(column: str, rng: random.Random) -> Any:
    """A value of a generated column (None now and then)."""
    if rng.random() < 0.1:
        return None
    if column == "enum":
        return rng.choice(("sad", "ok", "happy"))
    if column == "array":
        return [rng.choice(("a", "b c", 'd"e', "")) for _ in range(rng.randint(0, 4))]
    if column == "json":
        return psycopg.types.json.Jsonb({"n": rng.randint(0, 9), "s": "ü" * rng.randint(0, 3)})
    if column == "bytea":
        return rng.randbytes(rng.randint(0, 64))
    if column == "toast":  # now and then far over the 2 kB that TOAST takes out of line
        return "x" * rng.choice((1, 100, 5000, 70000))
    if column == "numeric":
        return round(rng.uniform(-1e6, 1e6), 2)
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:00:00+00"


def create(conn: psycopg.Connection[Any], scenario: Scenario, *, owner: str, writer: str) -> None:
    """The scenario's tables, type and sequence, owned by `owner`, written by `writer`."""
    rng = random.Random(scenario.seed)
    ident = sql.Identifier
    seq = sql.Literal(sql.Identifier(SHARED_SEQUENCE).as_string(conn))
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(ident(owner)))
        conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'ok', 'happy')").format(ident(ENUM)))
        conn.execute(sql.SQL("CREATE SEQUENCE {}").format(ident(SHARED_SEQUENCE)))
        parent = ident(scenario.tables[0].name)
        for table in scenario.tables:
            key = sql.SQL(KEYS[table.kind]).format(seq=seq, parent=parent)
            columns = sql.SQL(", ").join([key, *(COLUMNS[c] for c in table.columns)])
            tail = sql.SQL(" PARTITION BY HASH (id)" if table.kind is Kind.PARTITIONED else "")
            conn.execute(sql.SQL("CREATE TABLE {} ({}){}").format(ident(table.name), columns, tail))
            if table.kind is Kind.PARTITIONED:
                for i in range(2):
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE {} PARTITION OF {} "
                            "FOR VALUES WITH (MODULUS 2, REMAINDER {})"
                        ).format(ident(f"{table.name} p{i}"), ident(table.name), sql.Literal(i))
                    )
            insert(conn, table, rng, count=table.rows)
        if scenario.view:
            conn.execute(
                sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT count(*) AS n FROM {}").format(
                    ident(f"{scenario.tables[0].name} totals"), parent
                )
            )
        conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(ident(writer))
        )
        conn.execute(
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident(writer))
        )


def parent_ids(conn: psycopg.Connection[Any], table: Table) -> list[int]:
    """Rows a child may reference, kept from being deleted until the transaction ends."""
    rows = conn.execute(
        sql.SQL("SELECT id FROM {} ORDER BY random() LIMIT 20 FOR KEY SHARE SKIP LOCKED").format(
            sql.Identifier(table.name)
        )
    ).fetchall()
    return [r[0] if isinstance(r, tuple) else r["id"] for r in rows]


def insert(
    conn: psycopg.Connection[Any],
    table: Table,
    rng: random.Random,
    *,
    count: int,
    parents: list[int] | None = None,
) -> None:
    """`count` rows of random values (a child's parent among `parents`, or none)."""
    names = [NAMES[c] for c in table.columns]
    if table.kind is Kind.CHILD:
        names.append("parent")
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    with conn.cursor() as cur:
        cur.executemany(
            statement,
            [
                [
                    *(value(c, rng) for c in table.columns),
                    *(
                        [rng.choice(parents) if parents else None]
                        if table.kind is Kind.CHILD
                        else []
                    ),
                ]
                for _ in range(count)
            ],
        )


@dataclass
class Churn:
    """Sessions that write the generated tables in transactions, until stopped."""

    server: Server
    db: str
    user: str
    password: str
    scenario: Scenario
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (time, SQLSTATE, text)
    transactions: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Churn":
        for i in range(self.scenario.churners):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.server.host,
            port=self.server.port,
            user=self.user,
            password=self.password,
            dbname=self.db,
            connect_timeout=5,
            autocommit=True,  # each transaction() a transaction of its own, not a savepoint
        )

    def _run(self, worker: int) -> None:
        rng = random.Random(self.scenario.seed * 100 + worker)
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                self._transaction(conn, rng)
                self.transactions += 1
            except psycopg.Error as exc:
                self.errors.append((time.time(), exc.sqlstate or "", str(exc).strip()[:200]))
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.2)
        if conn is not None:
            conn.close()

    def _transaction(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """A few tables written in one transaction; now and then one that stays open."""
        tables = rng.sample(self.scenario.tables, min(len(self.scenario.tables), rng.randint(1, 3)))
        with conn.transaction():
            # Rows are chosen SKIP LOCKED: the sessions never wait for one another, so
            # no deadlock and no vanished parent is theirs; any error is the move's.
            parents = parent_ids(conn, self.scenario.tables[0])
            for table in tables:
                what = rng.random()
                name = sql.Identifier(table.name)
                if what < 0.5:
                    insert(conn, table, rng, count=rng.randint(1, 5), parents=parents)
                elif what < 0.8 and table.columns:
                    column = table.columns[0]
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET {} = %s WHERE id IN (SELECT id FROM {} "
                            "ORDER BY random() LIMIT 3 FOR UPDATE SKIP LOCKED)"
                        ).format(name, sql.Identifier(NAMES[column]), name),
                        (value(column, rng),),
                    )
                else:  # not a parent this transaction's children are given
                    conn.execute(
                        sql.SQL(
                            "DELETE FROM {} WHERE id IN (SELECT id FROM {} WHERE id <> ALL (%s) "
                            "ORDER BY random() LIMIT 2 FOR UPDATE SKIP LOCKED)"
                        ).format(name, name),
                        (parents,),
                    )
            if self.scenario.long_transactions and rng.random() < 0.05:
                self.stop.wait(rng.uniform(0.5, 2.5))  # a transaction that stays open
        self.stop.wait(0.02)
