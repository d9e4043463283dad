"""``membus bench --workload semantic --peer mem0``: Mem0 (``mem0ai``, opt-in, never a dependency
of membus) on the same texts, the same MiniLM weights and the same machine, in the same run.

Mem0 is configured the way its self-hosted docs describe, offline: the huggingface embedder
loading the bundled MiniLM directory (sentence-transformers on torch, as many threads as membus's
embedder), its local Qdrant on disk,
``add(..., infer=False)`` (no LLM: each text stored as it is, as membus stores an event) and
``search``. Its telemetry is switched off before import. Without ``mem0ai`` the peer is skipped
with a message saying how to install it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from membus.bench import raw, usage

USER = "bench"


def available() -> bool:
    return importlib.util.find_spec("mem0") is not None


def run_peer(path: Path, plan: Any, progress: Progress, threads: int = 1) -> dict[str, Any]:
    """Mem0's add throughput, search latency and memory on ``plan``'s workload, or why not,
    with torch on ``threads`` intra-op threads (membus's embedder's count in the same run).
    In a process of its own, so that its memory is its own."""
    if not available():
        why = "mem0ai is not installed (pip install mem0ai==2.2.1): the Mem0 peer was skipped"
        print(f"membus bench: {why}", file=sys.stderr)
        return {"ran": False, "skipped": why}
    task = progress.add_task("peer: mem0 add(infer=False) + search", total=None)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "result.json"
    args = [str(path), str(plan.memories), str(plan.queries), str(out), str(threads)]
    done = subprocess.run(
        [sys.executable, "-m", "membus.bench.peer", *args],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,  # stdout carries only the bench's result
        check=False,
    )
    progress.remove_task(task)
    if done.returncode != 0 or not out.is_file():
        return {"ran": False, "error": f"the mem0 peer exited with {done.returncode}"}
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def measure(path: Path, memories: int, n_queries: int, threads: int = 1) -> dict[str, Any]:
    """Mem0 in this process: add ``memories`` texts, then ``n_queries`` searches."""
    from membus.embed.semantic import model_dir

    os.environ["MEM0_TELEMETRY"] = "False"  # read by mem0 at import: nothing leaves the machine
    os.environ["HF_HUB_OFFLINE"] = "1"
    mem0 = importlib.import_module("mem0")
    # the thread count membus's embedder has in the same run: torch's own default can differ
    # (and on a shared 2-core machine made each of Mem0's adds take half a second), which
    # would be a handicap or a head start, not a comparison
    importlib.import_module("torch").set_num_threads(threads)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": "bench",
                "path": str(path / "qdrant"),
                "embedding_model_dims": 384,
                "on_disk": True,
            },
        },
        "embedder": {
            "provider": "huggingface",
            "config": {"model": str(model_dir()), "embedding_dims": 384},
        },
        # never called with infer=False; the config must still name one
        "llm": {"provider": "openai", "config": {"api_key": "unused-offline"}},
        "history_db_path": str(path / "history.db"),
    }
    texts = [d.content for d in raw.semantic_drafts(memories)]  # membus's texts
    queries = raw.queries(n_queries)
    memory = mem0.Memory.from_config(config)
    memory.add("warm-up", user_id="warmup", infer=False)
    t0 = time.perf_counter()
    for text in texts:
        memory.add(text, user_id=USER, infer=False)
    add_s = time.perf_counter() - t0
    lat = []
    for query in queries:
        t1 = time.perf_counter()
        memory.search(query, top_k=5, filters={"user_id": USER})
        lat.append(time.perf_counter() - t1)
    p50, p99 = raw.percentiles(lat)
    after = usage.snapshot()
    real, apparent = usage.disk(path)
    return {
        "ran": True,
        "version": importlib.metadata.version("mem0ai"),
        "add_per_s": round(len(texts) / add_s, 1),
        "search_p50_ms": round(p50, 3),
        "search_p99_ms": round(p99, 3),
        "torch_threads": threads,
        "rss_mb": usage.mb(after.rss_bytes),  # Mem0's process and any it started
        "disk_mb": usage.mb(real),
        "disk_apparent_mb": usage.mb(apparent),
    }


if __name__ == "__main__":  # run_peer's child: path, memories, queries, result file
    where, n, nq, result_file, threads = sys.argv[1:6]
    Path(result_file).write_text(json.dumps(measure(Path(where), int(n), int(nq), int(threads))))
