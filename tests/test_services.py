"""The throw-away servers the distributed parts are tested on really serve (and leave nothing)."""

from __future__ import annotations

from pathlib import Path

from engine.testing.services import PostgresServer, RedisServer


def test_redis_serves_streams(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.xadd("s", {"k": "v"})
        assert client.xlen("s") == 1


def test_each_postgres_database_is_fresh(postgres_url: str, postgres_server: PostgresServer) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k INT PRIMARY KEY)")
    with psycopg.connect(postgres_server.database(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() == (0,)


def test_a_stopped_server_leaves_no_folder() -> None:
    for server in (RedisServer(), PostgresServer()):
        if server.missing():
            continue
        with server:
            folder = server.dir
            assert isinstance(folder, Path) and folder.is_dir()
        assert not folder.exists()
        assert server.proc is not None and server.proc.poll() is not None
