"""The private servers the restart and disk-full scenarios use: they start, restart and
stop by PID, a restarted Redis comes back empty, a restarted PostgreSQL keeps its data,
and the size-limited folder fails a write with the kernel's ENOSPC."""
from __future__ import annotations

import errno
import os
import socket

import psycopg
import pytest
import redis

from tests import helpers
from tests.faults.servers import PostgresCluster, RedisServer, SizeLimitedFolder, pid_alive
from tests.helpers import free_port


def test_redis_restarts_by_pid_and_comes_back_empty(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        first = server.pid
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.rpush("queue", *range(50))
        assert server.dbsize() == 2
        server.restart()
        assert server.pid != first and not pid_alive(first)
        assert server.dbsize() == 0  # no persistence: the keys are gone
        assert not list((tmp_path / "redis").glob("*.rdb"))
    finally:
        server.stop()
    assert server.pid is None and server.proc.returncode is not None
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_timeout=1).ping()


def test_postgres_cluster_restarts_by_pg_ctl_and_keeps_its_data():
    cluster = PostgresCluster().start()
    try:
        first = cluster.pid
        assert first and cluster.port != 5432
        url = cluster.create_database("faults_check")
        conninfo = dict(host="127.0.0.1", port=cluster.port, user="postgres", dbname="faults_check")
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute("create table t (n int)")
            conn.execute("insert into t select generate_series(1, 100)")
        held = psycopg.connect(**conninfo)
        cluster.restart("immediate")
        assert cluster.pid not in (None, first)
        with pytest.raises(psycopg.OperationalError):
            held.execute("select 1")  # a connection from before the restart is cut
        held.close()
        with psycopg.connect(**conninfo) as conn:
            assert conn.execute("select count(*) from t").fetchone() == (100,)
        assert url.endswith(f":{cluster.port}/faults_check")
        cluster.stop()
        assert cluster.pid is None and not pid_alive(first)
    finally:
        cluster.destroy()
    assert not cluster.root.exists()


def test_size_limited_folder_fails_writes_with_enospc(tmp_path):
    with SizeLimitedFolder(tmp_path / "small", size_mb=2) as folder:
        assert folder.kind in {"tmpfs", "ext4-loop"}
        assert 0 < folder.free_bytes() <= 2 * 1024 * 1024
        with pytest.raises(OSError) as raised:
            with open(folder.path / "big", "wb") as f:
                for _ in range(64):
                    f.write(os.urandom(65536))
                    f.flush()
                    os.fsync(f.fileno())
        assert raised.value.errno == errno.ENOSPC
        (folder.path / "big").unlink()
        folder.fill(leave_bytes=100_000)
        assert folder.free_bytes() < 300_000
        folder.make_room()
        assert folder.free_bytes() > 1024 * 1024
    assert not os.path.ismount(tmp_path / "small")


def test_free_ports_do_not_collide_with_the_shared_servers():
    assert {free_port() for _ in range(5)}.isdisjoint({5432, 6379})


def test_free_ports_lie_outside_the_range_outgoing_connections_take():
    # an outgoing connection's local port comes from this range; a server told to listen on
    # a port from it can find the port held by some pooled connection for minutes
    floor = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert max(ports) < floor and min(ports) >= 10000


def test_a_port_someone_listens_on_is_passed_over():
    upcoming = helpers._next_port[0]
    with socket.socket() as held:
        held.bind(("127.0.0.1", upcoming))
        held.listen()
        assert free_port() != upcoming


def test_each_test_process_hands_out_ports_of_its_own(monkeypatch):
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(set(helpers._port_slice()))
    assert all(len(s) > 1000 for s in slices)
    assert not (slices[0] & slices[1] or slices[1] & slices[2] or slices[0] & slices[2])


def test_free_ports_are_ports_a_browser_opens():
    # Chromium refuses pages on its restricted ports (ERR_UNSAFE_PORT); the highest is 10080
    assert helpers._PORTS.start > 10080
