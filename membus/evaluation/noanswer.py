"""LoCoMo's no-answer set: questions about things a conversation never mentions.

Recall should return nothing for them at the default ``min_score`` (``RankingConfig``). They are
generated, not collected: each topic below is asked about in every conversation whose turns hold
none of its terms (as the store's lexical analyser sees them: stop words out, stems), so the
answer is absent by construction. They are phrased as LoCoMo's own questions are, naming one of
the conversation's speakers (half of them; the other half name nobody), so the speaker's name
and words like "say" or "feel" match plenty of turns: what must be missing is the topic.

Deterministic: the same dataset gives the same questions, in order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from membus.store.sparse import document, query

TOPICS = (
    "quantum computing",
    "the Kubernetes cluster",
    "cryptocurrency mining",
    "the Mongolian election",
    "the stock market crash",
    "a submarine voyage",
    "the Mars rover",
    "knitting socks for penguins",
    "the tax audit",
    "the chemistry exam",
    "a volcano eruption",
    "the lottery jackpot",
    "the divorce lawyer",
    "the car engine repair",
    "the Antarctic expedition",
    "the chess tournament",
    "a surgery on the spine",
    "the parliament vote",
    "the bitcoin wallet",
    "the nuclear reactor",
    "the plumbing leak",
    "the tennis elbow",
    "the solar eclipse",
    "the mortgage refinancing",
    "the llama farm",
    "the jury duty",
    "the sourdough starter",
    "the wisdom tooth",
    "the scuba certification",
    "the beekeeping hives",
    "the opera tickets",
    "the fencing club",
    "the wine cellar",
    "the golf handicap",
    "the sailing regatta",
    "the motorcycle license",
    "the origami workshop",
    "the chimney sweep",
    "the karaoke contest",
    "the pottery kiln",
)
NAMED = (
    "What did {speaker} say about {topic}?",
    "When did {speaker} start working on {topic}?",
    "Why is {speaker} worried about {topic}?",
    "How did {speaker} feel about {topic}?",
)
UNNAMED = (
    "What is known about {topic}?",
    "Who is responsible for {topic}?",
    "What happened with {topic}?",
    "Has anyone mentioned {topic}?",
)
PER_CONVERSATION = 20  # topics asked per conversation, each in both phrasings


@dataclass(frozen=True)
class NoAnswer:
    text: str
    named: bool  # names a speaker of the conversation


def questions(turns: Sequence[str], speakers: Collection[str]) -> list[NoAnswer]:
    """The no-answer questions for a conversation of ``turns`` (texts) between ``speakers``."""
    held = {t for text in turns for t in document(text).indices}
    absent = [t for t in TOPICS if not set(query(t).indices) & held][:PER_CONVERSATION]
    names = sorted(speakers)
    out: list[NoAnswer] = []
    for i, topic in enumerate(absent):
        speaker = names[i % len(names)] if names else "someone"
        out.append(NoAnswer(NAMED[i % len(NAMED)].format(speaker=speaker, topic=topic), True))
        out.append(NoAnswer(UNNAMED[i % len(UNNAMED)].format(topic=topic), False))
    return out
