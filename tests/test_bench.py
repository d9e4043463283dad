"""``membus bench`` smoke run: the quick benchmark completes on a real embedded bus and reports
every figure the CLI and the README quote, as one JSON object on stdout: among them the casbin
gate's overhead on recall (permission issue) and the HTTP row beside in-process (enterprise
issue)."""

from __future__ import annotations

import json
import math

import pytest

from membus.bench.run import run_bench

POSITIVE = (
    "memories",
    "ingest_events_per_s",
    "raw_upsert_points_per_s",
    "ingest_ratio",
    "recall_p50_ms",
    "recall_p99_ms",
    "visible_p50_ms",
    "visible_p99_ms",
    "raw_xadd_per_s",
    "raw_xreadgroup_ack_per_s",
    "raw_search_p50_ms",
    "recall_ratio",
    "recall_10k_p50_ms",
    # the casbin gate, interleaved with the open gate on the same queries and store state
    "recall_gated_p50_ms",
    "recall_gated_p99_ms",
    # the service over the same bus on localhost, each figure beside its in-process one
    "http_publish_events_per_s",
    "publish_events_per_s",
    "http_publish_ratio",
    "http_publish_p50_ms",
    "publish_p50_ms",
    "http_recall_p50_ms",
    "http_recall_p99_ms",
    "http_recall_ratio",
)
PRESENT = (
    "index_build_s",
    "near_duplicate_pass_s",
    "embedder",
    "machine",
    "membus_version",
    "targets",
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_bench_reports_every_figure_as_one_json_object(
    capfd: pytest.CaptureFixture[str],
) -> None:
    result = run_bench(json_output=True, quick=True)
    out = capfd.readouterr().out  # file descriptor 1: the writer processes' output counts too
    printed = json.loads(out)  # exactly one JSON document: nothing else leaked to stdout
    assert printed == result
    for key in POSITIVE:
        assert result[key] > 0, key
    for key in PRESENT:
        assert key in result, key
    assert result["index_build_s"] >= 0
    # the ratio's raw figure is the mean of the runs before and after the ingest (drift)
    runs = result["raw_upsert_runs_points_per_s"]
    assert len(runs) == 2 and all(x > 0 for x in runs)
    assert result["raw_upsert_points_per_s"] == pytest.approx(sum(runs) / 2, abs=0.1)
    assert set(result["writers_trial_events_per_s"]) == {"1", "2", "process:2", "processes:2x2"}
    assert result["memories_committed"] == result["memories"]
    assert result["visible_missing"] == 0
    assert result["machine"]["cpus"] >= 1 and result["machine"]["python"]
    assert result["embedder"] == "hashing"
    # a difference of two p50s: may be <= 0 on a noisy machine, but always a number
    overhead = result["gate_overhead_p50_ms"]
    assert isinstance(overhead, float) and math.isfinite(overhead)
    assert isinstance(result["targets"]["gate_overhead_le_1ms"], bool)
    # the policy lets the reader see all of the bench scope; the HTTP door finds the same
    assert result["recall_gated_hits_per_query"] == result["recall_hits_per_query"]
    assert result["http_recall_hits_per_query"] == result["recall_hits_per_query"]
    # the context door beside recall at the same k, at both sizes (membus/bench/context.py)
    for key in ("context_10k_p50_ms", "context_p50_ms", "recall_k10_p50_ms", "context_ratio"):
        assert result[key] > 0, key
    assert isinstance(result["context_target_p50_le_2x_recall"], bool)
