"""``membus bench`` smoke run: the quick benchmark completes on a real embedded bus and reports
every figure the CLI and the README quote, as one JSON object on stdout."""

from __future__ import annotations

import json

import pytest

from membus.bench import run_bench

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
)
PRESENT = ("index_build_s", "embedder", "machine", "membus_version", "targets")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_bench_reports_every_figure_as_one_json_object(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = run_bench(json_output=True, quick=True)
    out = capsys.readouterr().out
    printed = json.loads(out)  # exactly one JSON document: nothing else leaked to stdout
    assert printed == result
    for key in POSITIVE:
        assert result[key] > 0, key
    for key in PRESENT:
        assert key in result, key
    assert result["index_build_s"] >= 0
    assert result["memories_committed"] == result["memories"]
    assert result["visible_missing"] == 0
    assert result["machine"]["cpus"] >= 1 and result["machine"]["python"]
    assert result["embedder"] == "hashing"
