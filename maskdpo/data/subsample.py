"""Selecting questions by topic, for the paper's scaling study (§4: more topics beats more questions
per topic): `maskdpo data pairs --topics N --questions-per-topic M --seed S`.

Deterministic: topics and questions are sorted before a seeded draw, so the same data and seed give
the same selection whatever the file order.
"""

from __future__ import annotations

import random

from .records import AnnotatedSample


def subsample(samples: list[AnnotatedSample], topics: int | None = None, questions_per_topic: int | None = None,
              seed: int = 0) -> tuple[list[AnnotatedSample], str]:
    """(the samples of the selected questions, a summary line). `topics`: how many topics to draw
    (all when None); `questions_per_topic`: how many questions of each drawn topic (all when None)."""
    for name, value in (("topics", topics), ("questions_per_topic", questions_per_topic)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    topic_of: dict[str, str] = {}
    for s in samples:
        if s.topic is None:
            raise ValueError(f"question {s.question_id!r} has no topic: selecting by topic needs the topic of "
                             "every annotated sample (`maskdpo sample` copies it from the questions file)")
        if topic_of.setdefault(s.question_id, s.topic) != s.topic:
            raise ValueError(f"question {s.question_id!r} has samples with two topics: {topic_of[s.question_id]!r} "
                             f"and {s.topic!r}")
    by_topic: dict[str, list[str]] = {}
    for question, topic in topic_of.items():
        by_topic.setdefault(topic, []).append(question)
    rng = random.Random(seed)
    all_topics = sorted(by_topic)
    chosen_topics = sorted(rng.sample(all_topics, min(topics, len(all_topics)))) if topics else all_topics
    chosen = set()
    for topic in chosen_topics:
        questions = sorted(by_topic[topic])
        take = min(questions_per_topic, len(questions)) if questions_per_topic else len(questions)
        chosen.update(rng.sample(questions, take))
    kept = [s for s in samples if s.question_id in chosen]
    line = (f"selected (seed {seed}): {len(chosen_topics)} of {len(all_topics)} topics, {len(chosen)} of "
            f"{len(topic_of)} questions, {len(kept)} of {len(samples)} samples")
    return kept, line
