"""Every store engine passes the same conformance suite (tests/conformance.py).

Engines: Qdrant Edge in a temp dir, qdrant-client local mode (``:memory:``), and a real Qdrant
server in a testcontainer (skipped where no Docker engine runs).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient

from membus.errors import Unavailable
from membus.store.edge import EdgeStore
from membus.store.qdrant import QdrantStore
from tests.conformance import META, StoreConformance, StoreFactory

QDRANT_IMAGE = "qdrant/qdrant:v1.19.0"  # metadata needs >= 1.16, per-tenant IDF >= 1.19


class TestEdgeStore(StoreConformance):
    @pytest.fixture
    def make(self, tmp_path: Path) -> StoreFactory:
        return lambda: EdgeStore(tmp_path / "store")


class TestQdrantLocal(StoreConformance):
    """Local mode keeps data in the client, so handles sharing one client see one store."""

    @pytest.fixture
    async def make(self, anyio_backend: str) -> AsyncIterator[StoreFactory]:
        client = AsyncQdrantClient(location=":memory:")
        yield lambda: QdrantStore(":memory:", client=client)
        await client.close()


def _docker_engine_reachable() -> str | None:
    """None if a Docker engine answers, else why not. Quick: no engine here is the normal case."""
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception as e:
        return f"no Docker engine reachable ({type(e).__name__}: {e})"
    return None


@pytest.fixture(scope="session")
def qdrant_server_url() -> Iterator[str]:
    why = _docker_engine_reachable()
    if why:
        pytest.skip(why)
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer(QDRANT_IMAGE) as container:
        yield f"http://{container.rest_host_address}"


@pytest.mark.docker
class TestQdrantServer(StoreConformance):
    @pytest.fixture
    def make(self, qdrant_server_url: str) -> Iterator[StoreFactory]:
        name = f"conformance_{uuid.uuid4().hex}"  # one collection per test: no cross-talk
        yield lambda: QdrantStore(qdrant_server_url, collection=name)
        admin = QdrantClient(url=qdrant_server_url)
        admin.delete_collection(name)
        admin.close()


# --- QdrantStore specifics the suite cannot express ------------------------------------------


@pytest.mark.anyio
async def test_qdrant_memory_url_owns_its_client() -> None:
    """``QdrantStore(":memory:")`` needs nothing else and cleans up its own client."""
    store = QdrantStore(":memory:")
    await store.open(META)
    assert await store.count() == 0
    await store.close()
    with pytest.raises(Unavailable):
        await store.count()


@pytest.mark.anyio
async def test_qdrant_unreachable_server_is_unavailable() -> None:
    """Connection failures surface as ``Unavailable`` (retry), not httpx internals."""
    store = QdrantStore("http://127.0.0.1:9", timeout=2)  # discard port: nothing listens
    with pytest.raises(Unavailable, match="unreachable"):
        await store.open(META)
    await store.close()


@pytest.mark.anyio
async def test_qdrant_refuses_a_collection_it_did_not_make() -> None:
    """A same-named collection without membus metadata is someone else's: do not write into it."""
    from qdrant_client import models

    client = AsyncQdrantClient(location=":memory:")
    await client.create_collection(
        "membus_memories",
        vectors_config={"dense": models.VectorParams(size=8, distance=models.Distance.COSINE)},
    )
    from membus.errors import Conflict

    with pytest.raises(Conflict, match="no membus metadata"):
        await QdrantStore(":memory:", client=client).open(META)
    await client.close()
