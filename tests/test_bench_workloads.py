"""``membus bench --workload``: the one-scope workload's generator, the resource accounting, the
raw hybrid query it is judged against, a tiny end-to-end run, and the opt-in Mem0 peer."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.progress import Progress

from membus.bench import peer, usage, workloads, zipf
from membus.errors import InvalidInput
from membus.store.edge_query import filter_of
from membus.store.filters import RecallFilter, spec


def test_zipf_workload_is_fixed_one_scope_and_zipf_shaped() -> None:
    words = zipf.vocabulary(500)
    assert len(set(words)) == 500 and words == zipf.vocabulary(500)
    drafts = zipf.drafts(400, seed=3)
    assert drafts == zipf.drafts(400, seed=3)  # the same workload on every run
    assert {d.scope for d in drafts} == {zipf.SCOPE}
    assert len({d.content for d in drafts}) == 400  # no exact repeats: one memory each
    counts = Counter(w for d in drafts for w in d.content.split()[:-2])
    ranked = [n for _, n in counts.most_common()]
    assert ranked[0] > 10 * ranked[min(100, len(ranked) - 1)]  # a head and a long tail
    queries = zipf.queries(50)
    assert len(queries) == 50 and all(2 <= len(q.split()) <= 6 for q in queries)
    assert set(" ".join(queries).split()) <= set(zipf.vocabulary())


def test_usage_counts_this_process_and_real_disk(tmp_path: Path) -> None:
    assert os.getpid() in usage.family()
    now = usage.snapshot()
    assert now.cpu_s > 0 and now.rss_bytes >= now.host_rss_bytes > 0
    with open(tmp_path / "sparse", "wb") as f:  # apparent size 8 MB, nothing allocated
        f.truncate(8_000_000)
    (tmp_path / "full").write_bytes(b"x" * 100_000)
    real, apparent = usage.disk(tmp_path)
    assert apparent == 8_100_000
    assert 100_000 <= real < 1_000_000


def test_hybrid_request_prefetches_both_branches_under_the_filter() -> None:
    """The filter sits on the request, which the engine merges into both branches, and only
    there: a copy on a branch too would make the raw baseline check it twice per candidate."""
    where = filter_of(spec(RecallFilter(tenant="bench", scopes=[zipf.SCOPE])))
    req = workloads.hybrid_request("hashing-v1-384", [0.1] * 384, "kalos bandu", where)
    assert len(req.prefetches) == 2 and req.limit == workloads.RECALL_K
    assert req.filter is not None
    assert all(p.filter is None for p in req.prefetches)


def test_unknown_workload_or_peer_is_refused() -> None:
    with pytest.raises(InvalidInput, match="workload"):
        workloads.run_workload("everything", json_output=True)
    with pytest.raises(InvalidInput, match="peer"):
        workloads.run_workload("semantic", json_output=True, peer="zep")
    with pytest.raises(InvalidInput, match="hashing"):
        workloads.run_workload("one-scope", json_output=True, embedder="minilm")
    with pytest.raises(InvalidInput, match="--writers"):
        workloads.run_workload("one-scope", json_output=True, writers=2)


def test_mem0_peer_is_skipped_with_a_message_when_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(peer, "available", lambda: False)
    with Progress(disable=True) as progress:
        out = peer.run_peer(tmp_path, workloads.semantic_plan(100, True), progress)
    assert out["ran"] is False and "pip install mem0ai" in out["skipped"]
    assert "mem0ai is not installed" in capsys.readouterr().err


def test_peer_ratios_put_membus_beside_mem0_from_the_same_run() -> None:
    """The README's Mem0 rows are ratios of figures from one run: ingest over Mem0's add rate,
    Mem0's search p50 over membus's recall p50, RSS against RSS; no ratio without a peer run."""
    res = {
        "ingest_events_per_s": 120.0,
        "recall_p50_ms": 10.0,
        "rss_mb": 700.0,
        "targets": {"query_embed_p50_le_8ms": True},
        "peer": {"ran": True, "add_per_s": 30.0, "search_p50_ms": 150.0, "rss_mb": 800.0},
    }
    out = workloads.peer_ratios(res)
    assert (out["peer_ingest_ratio"], out["peer_search_p50_speedup"]) == (4.0, 15.0)
    assert out["targets"] == {
        "query_embed_p50_le_8ms": True,
        "ingest_ge_3x_mem0": True,
        "search_p50_ge_10x_faster_than_mem0": True,
        "rss_le_mem0": True,
    }
    assert workloads.peer_ratios({**res, "peer": {"ran": False, "skipped": "no"}}) == {}


ONE_SCOPE_KEYS = (
    "ingest_events_per_s",
    "raw_upsert_points_per_s",
    "cpu_ms_per_event",
    "raw_upsert_cpu_ms_per_point",
    "cpu_ratio",
    "recall_10k_p50_ms",
    "raw_hybrid_10k_p50_ms",
    "recall_p50_ms",
    "recall_p99_ms",
    "raw_hybrid_p50_ms",
    "raw_hybrid_p99_ms",
    "recall_ratio_p50",
    "recall_during_build_max_ms",
    "recall_unbuilt_p50_ms",
    "unindexed_before_build",
    "index_build_stalled_s",
    "rss_mb",
    "disk_mb",
    "disk_apparent_mb",
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_one_scope_quick_run_reports_every_figure(capfd: pytest.CaptureFixture[str]) -> None:
    result: dict[str, Any] = workloads.run_workload("one-scope", 300, json_output=True, quick=True)
    assert json.loads(capfd.readouterr().out) == result  # one JSON object on stdout
    assert result["workload"] == "one-scope" and result["memories"] == 300
    assert result["memories_committed"] == 300
    for key in ONE_SCOPE_KEYS:
        assert result[key] > 0, key
    assert result["recall_hits_per_query"] == workloads.RECALL_K
    steps = result["index_build_phases_s"]
    assert set(steps) == {"flush", "copy", "child", "load", "swap", "close", "trim"}
    assert result["index_build_stalled_s"] == pytest.approx(
        steps["flush"] + steps["load"] + steps["close"], abs=0.002
    )
    assert all(isinstance(v, bool) for v in result["targets"].values())
