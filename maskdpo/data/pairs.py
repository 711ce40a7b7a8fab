"""Preference pairs from annotated samples: best-scored response chosen, worst rejected."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

from .records import AnnotatedSample, Pair

SKIP_REASONS = {
    "single_sample": "fewer than two samples",
    "no_sentences": "fewer than two samples with sentences",
    "equal_scores": "all samples score the same",
    "gap_below_minimum": "best and worst differ by less than --min-gap",
    "duplicate_sample_ids": "the same sample id twice",
    "different_prompts": "samples with different prompts",
}
# Scores are ratios of small counts: compare gaps with a tolerance (0.7 - 0.6 < 0.1 in floats).
EPSILON = 1e-9


@dataclass
class PairSummary:
    questions: int = 0
    samples: int = 0
    samples_without_sentences: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)  # questions skipped, by SKIP_REASONS key
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"questions: {self.questions}   samples: {self.samples}   pairs: {self.pairs}"]
        if self.samples_without_sentences:
            out.append(f"samples without sentences (not scored): {self.samples_without_sentences}")
        for key, text in SKIP_REASONS.items():
            if self.skipped[key]:
                out.append(f"questions skipped, {text}: {self.skipped[key]}")
        for name, scores in (("chosen", self.chosen_scores), ("rejected", self.rejected_scores)):
            if scores:
                out.append(f"{name} score: mean {statistics.fmean(scores):.3f}  min {min(scores):.3f}  "
                           f"median {statistics.median(scores):.3f}  max {max(scores):.3f}")
        if self.chosen_scores:
            gaps = [c - r for c, r in zip(self.chosen_scores, self.rejected_scores)]
            out.append(f"score gap: mean {statistics.fmean(gaps):.3f}  min {min(gaps):.3f}  max {max(gaps):.3f}")
        return out


def build_pairs(samples: list[AnnotatedSample], pairs_per_question: int = 1, min_gap: float = 0.0):
    """Return (pairs, PairSummary).

    Per question (in order of first appearance): score = correct sentences / all sentences; samples
    are ranked by score, ties broken by sample id (the lower id wins among the best and among the
    worst), so the result does not depend on file order. Questions whose samples repeat a sample id
    or disagree on the prompt are skipped and counted. Pair k takes the k-th best and the k-th worst
    while they are distinct samples and their gap is positive and at least `min_gap`.
    """
    if pairs_per_question < 1:
        raise ValueError(f"pairs_per_question must be at least 1, got {pairs_per_question}")
    by_question: dict[str, list[AnnotatedSample]] = {}
    for sample in samples:
        by_question.setdefault(sample.question_id, []).append(sample)
    summary = PairSummary(questions=len(by_question), samples=len(samples))
    pairs = []
    for question_id, group in by_question.items():
        scored = [s for s in group if s.response.sentences]
        summary.samples_without_sentences += len(group) - len(scored)
        if len({s.sample_id for s in group}) < len(group):
            summary.skipped["duplicate_sample_ids"] += 1
            continue
        if len({json.dumps(s.prompt, sort_keys=True) for s in group}) > 1:
            summary.skipped["different_prompts"] += 1
            continue
        if len(group) < 2:
            summary.skipped["single_sample"] += 1
            continue
        if len(scored) < 2:
            summary.skipped["no_sentences"] += 1
            continue
        best = sorted(scored, key=lambda s: (-s.response.score(), _sort_key(s.sample_id)))
        worst = sorted(scored, key=lambda s: (s.response.score(), _sort_key(s.sample_id)))
        made = 0
        for k in range(min(pairs_per_question, len(scored) // 2)):
            chosen, rejected = best[k], worst[k]
            gap = chosen.response.score() - rejected.response.score()
            if gap <= EPSILON or gap < min_gap - EPSILON:
                break
            pairs.append(Pair(f"{question_id}:{chosen.sample_id}-vs-{rejected.sample_id}", question_id,
                              chosen.language, chosen.prompt, chosen.response, rejected.response))
            summary.chosen_scores.append(chosen.response.score())
            summary.rejected_scores.append(rejected.response.score())
            made += 1
        if not made:
            top = best[0].response.score() - worst[0].response.score()
            summary.skipped["equal_scores" if top <= EPSILON else "gap_below_minimum"] += 1
    summary.pairs = len(pairs)
    return pairs, summary


def _sort_key(sample_id: str):
    """Numeric ids in numeric order, before any non-numeric ones in string order."""
    return (0, int(sample_id), "") if re.fullmatch(r"-?[0-9]+", sample_id) else (1, 0, sample_id)
