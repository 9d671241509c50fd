"""The mesh's own store: one redis-server on loopback that keeps acknowledged writes
across a kill (its append-only file), as a game day's kill and restart leave it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from services.config.mesh import MeshConfig
from services.supervisor import up
from services.supervisor.launcher import ROOT, Mesh, isolated

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Mesh]:
    config = isolated(MeshConfig.load(ROOT / "config" / "mesh.yaml"), tmp_path)
    with Mesh(config, planes=("redis",)) as running:
        yield running


def _client(mesh: Mesh) -> redis.Redis:
    return redis.Redis.from_url(mesh.config.control.store_url(), socket_timeout=2)


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net writes them) of the sockets listening on `port`."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_store_is_one_loopback_redis_with_an_append_only_file(store: Mesh, tmp_path: Path):
    assert [name for name in store.processes] == ["redis"]
    assert _listeners(store.config.control.redis_port) == {"0100007F"}  # 127.0.0.1 only
    with closing(_client(store)) as client:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("save") == {"save": ""}
    assert (tmp_path / "redis" / "appendonlydir").is_dir()


def test_acknowledged_write_survives_a_kill(store: Mesh):
    with closing(_client(store)) as client:
        client.set("tenant:demo:quota", 42)
        assert client.incr("tenant:demo:used") == 1
        # appendfsync everysec: past one fsync, the write is on disk, not only in the page
        # cache (which a killed process's writes would outlive anyway, unlike a lost machine).
        time.sleep(1.2)
    store.kill("redis")
    assert not store.processes["redis"].alive()
    store.restart("redis")
    with closing(_client(store)) as client:
        assert client.get("tenant:demo:quota") == b"42"
        assert client.get("tenant:demo:used") == b"1"


def test_make_up_starts_a_dead_process_again_up_to_its_limit(store: Mesh):
    """`make up` starts a process that dies again (here the store: gateways go on under the
    offline rule meanwhile), RESTARTS times; one that dies more often stops the mesh."""
    restarts: Counter[str] = Counter()
    store.kill("redis")
    assert up._dead(store, restarts) == []
    assert store.processes["redis"].alive() and restarts == {"redis": 1}
    with closing(redis.Redis(port=store.config.control.redis_port, socket_timeout=2)) as client:
        assert client.ping()
    restarts["redis"] = up.RESTARTS
    store.kill("redis")
    assert up._dead(store, restarts) == ["redis"]
    store.restart("redis")  # for the tests after this one
