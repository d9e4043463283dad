"""`membus eval locomo`: dataset parsing/repair, the BM25 baseline and the end-to-end harness.

The fixture is a hand-written, LoCoMo-shaped toy (no dataset text): two conversations of ten
turns, questions in every category, a split ("D2:2; D2:4"), a repaired ("D:2:01"), a dangling
("D7:7") and a bare ("D") evidence reference, and one question without evidence.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from membus.core.config import RankingConfig
from membus.errors import InvalidInput
from membus.evaluation import noanswer
from membus.evaluation.locomo import (
    dia_ids,
    first_turns,
    load,
    parse_date,
    render_turn,
    resolve_dataset,
    run_eval,
    sanitize,
    split_evidence,
)
from membus.evaluation.report import REPORT_ORDER
from membus.store import sparse
from membus.store.bm25 import BM25, tokenize
from membus.store.port import Memory

FIXTURE = Path(__file__).parent / "fixtures" / "locomo_tiny.json"


def test_malformed_evidence_is_split_and_repaired() -> None:
    assert split_evidence("D8:6; D9:17") == ["D8:6", "D9:17"]
    assert split_evidence("D9:1 D4:4 D4:6") == ["D9:1", "D4:4", "D4:6"]
    assert split_evidence("D:11:26") == ["D11:26"]
    assert split_evidence("D30:05") == ["D30:5"]
    assert split_evidence("D") == [None]


def test_session_dates_parse_as_utc() -> None:
    assert parse_date("1:56 pm on 8 May, 2023") == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert parse_date("12:45 am on 8 May, 2022").hour == 0
    with pytest.raises(InvalidInput):
        parse_date("yesterday")


def test_names_are_sanitised_to_envelope_rules() -> None:
    assert sanitize("Ramona Diaz") == "ramona-diaz"
    assert sanitize("conv-26") == "conv-26"
    with pytest.raises(InvalidInput):
        sanitize("  ")


def test_fixture_loads_with_dangling_evidence_dropped() -> None:
    convs, dropped = load(FIXTURE)
    assert dropped == 2  # "D7:7" names no turn; "D" names nothing at all
    assert [c.tenant for c in convs] == ["locomo-tiny-1", "locomo-tiny-2"]
    assert sum(len(c.turns) for c in convs) == 20
    # the question without evidence is not scored
    assert sum(len(c.questions) for c in convs) == 7
    multi = next(q for q in convs[0].questions if q.category == "multi-hop")
    assert multi.evidence == {"D2:2", "D2:4"}
    captioned = next(t for t in convs[0].turns if t.dia_id == "D1:4")
    assert "[image: a cello leaning against a wooden chair] (in reply to Ramona" in captioned.text


def test_a_merged_memory_maps_to_all_its_turns_through_its_source_events() -> None:
    now = datetime.now(UTC)
    base = {"id": "x", "tenant": "t", "scope": "s", "kind": "observation", "content": "c"}
    turn_of = {"ev-1": "D1:1", "ev-2": "D1:2", "ev-3": "D1:3"}
    folded = Memory(**base, created_at=now, updated_at=now, source_events=["ev-1", "ev-2"])
    # metadata plays no part: the mapping is the eval's own, from the publish receipts
    single = Memory(
        **base, created_at=now, updated_at=now, source_events=["ev-3"], metadata={"dia_id": "D9:9"}
    )
    stranger = Memory(**base, created_at=now, updated_at=now, source_events=["not-ours"])
    assert dia_ids(folded, turn_of) == ["D1:1", "D1:2"]
    assert dia_ids(single, turn_of) == ["D1:3"]
    assert dia_ids(stranger, turn_of) == []
    # the k budget counts turns, not memories, so merging cannot inflate recall@k
    assert first_turns([["D1:1", "D1:2"], ["D1:2", "D1:3"]], 2) == ["D1:1", "D1:2"]


def test_turns_are_published_as_the_transcript_shows_them() -> None:
    when = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert render_turn("Caroline", "Hi!", when) == "Caroline (8 May 2023): Hi!"
    assert render_turn("Mel", "Look", when, "a dog") == "Mel (8 May 2023): Look [image: a dog]"
    convs, _ = load(FIXTURE)
    first = convs[0].turns[0]
    assert first.text.startswith(f"{first.speaker} (")


def test_a_turn_is_published_in_reply_to_the_end_of_the_turn_before_it() -> None:
    when = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    reply = render_turn("Teo", "Yes!", when, "a dog", after="Mel: Is that yours?")
    assert reply == "Teo (8 May 2023): Yes! [image: a dog] (in reply to Mel: Is that yours?)"
    turns = {t.dia_id: t.text for t in load(FIXTURE)[0][0].turns}
    # the answer carries its question: "napped in the car" alone says nothing about tiredness
    assert turns["D2:4"].endswith("(in reply to Teo: Was he tired after all that?)")
    # only the last sentence of the turn before: what a reply answers, and neighbours stay apart
    assert turns["D1:3"].endswith("(in reply to Teo: How is he settling in at your apartment?)")
    assert "in reply to" not in turns["D1:1"] + turns["D2:1"]  # a session starts afresh
    bare = {t.dia_id: t.text for t in load(FIXTURE, context=False)[0][0].turns}
    assert bare["D2:4"].endswith(
        "(12 April 2023): He napped in the car during the whole ride home."
    )


def test_bm25_ranks_the_turn_sharing_rare_terms_first() -> None:
    docs = ["the cat sat on the mat", "a corgi named Pickle", "the dog and the cat"]
    assert tokenize("Pickle's corgi!") == ["pickle", "s", "corgi"]
    assert BM25(docs).rank("What is the corgi called?", 1) == [1]
    assert BM25(docs).rank("zebra", 3) == [0, 1, 2]  # no match: document order, reproducible


def test_missing_dataset_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        resolve_dataset(tmp_path / "nope.json")


@pytest.mark.slow
def test_run_eval_end_to_end_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both retrievers run over the same turns; stdout carries exactly the one JSON object."""
    result = run_eval(FIXTURE, json_output=True, path=tmp_path / "bus")
    out = capsys.readouterr().out
    assert json.loads(out) == result
    assert out.count("\n") == 1

    assert set(result) == {
        "recall@5",
        "recall@10",
        "recall@25",
        "bm25",
        "memories",
        "observations",
        "dropped_evidence",
        "questions",
        "ingest_s",
        "embedder",
        "lexical",
        "near_duplicate",
        "context",
        "blend",
        "unfiltered",
        "min_score",
        "no_answer",
    }
    assert (
        set(result["bm25"]) == set(result["unfiltered"]) == {"recall@5", "recall@10", "recall@25"}
    )
    for table in (result, result["bm25"], result["unfiltered"]):
        for k in ("recall@5", "recall@10", "recall@25"):
            assert list(table[k]) == list(REPORT_ORDER)
            assert all(isinstance(v, float) for v in table[k].values())
    assert result["observations"] == result["memories"] == 20
    assert result["questions"] == 7
    assert result["dropped_evidence"] == 2
    assert result["embedder"].startswith("hashing")
    assert result["lexical"] == sparse.NAME  # hybrid retrieval by default
    assert result["context"] == "in reply to"
    assert result["blend"] == {"cosine_weight": 0.2, "absent_weight": 3.0}  # hashing's
    assert result["min_score"] == RankingConfig().min_score
    # the fixture's conversations hold none of the no-answer topics: each one asked twice
    na = result["no_answer"]
    assert na["questions"] == na["named"]["questions"] + na["unnamed"]["questions"] > 0
    assert na["named"]["questions"] == na["unnamed"]["questions"]
    assert na["empty"] == na["questions"] and na["empty_pct"] == 100.0
    assert na["best_score"] < result["min_score"]
    for table in (result, result["unfiltered"], result["bm25"]):
        # the single-hop questions repeat their turn's words: all must find them at once
        assert table["recall@5"]["single-hop"] == 100.0
    for table in (result["unfiltered"], result["bm25"]):
        # 10 turns a conversation < 25: everything retrieved, so every (repaired) id maps back
        assert table["recall@25"]["overall"] == 100.0
    # the default min_score keeps a subset of the same ranking
    for k in ("recall@5", "recall@10", "recall@25"):
        assert result[k]["overall"] <= result["unfiltered"][k]["overall"]


def test_no_answer_questions_ask_only_about_topics_no_turn_mentions() -> None:
    turns = ["Ann: my sourdough starter died", "Bob: the wine was great", "Ann: chess tonight?"]
    asked = noanswer.questions(turns, {"Bob", "Ann"})
    assert asked == noanswer.questions(turns, ["Ann", "Bob"])  # deterministic
    assert len(asked) == 2 * noanswer.PER_CONVERSATION
    assert [q.named for q in asked[:4]] == [True, False, True, False]
    text = " ".join(q.text for q in asked).lower()
    assert "sourdough" not in text and "wine" not in text and "chess" not in text  # mentioned
    assert "Ann" in asked[0].text and "Bob" in asked[2].text  # speakers in turn


def test_run_eval_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "leftover").write_text("x")
    with pytest.raises(InvalidInput, match="not empty"):
        run_eval(FIXTURE, json_output=True, path=tmp_path)
