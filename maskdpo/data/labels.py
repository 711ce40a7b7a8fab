"""Annotator labels and the one table that says which count as correct and which as hallucinated."""

from __future__ import annotations

from dataclasses import dataclass, field

# ANAH-v2's labels, then the authors' Mask-DPO pair format's. The paper counts `nofact` (no verifiable
# facts) as correct.
DEFAULT_CORRECT = ("ok", "nofact", "no_hallucination")
DEFAULT_HALLUCINATED = ("contradictory", "unverifiable", "hallucination")


@dataclass(frozen=True)
class LabelMap:
    """Which sentence labels are correct (kept in chosen) and which hallucinated (kept in rejected)."""

    correct: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_CORRECT))
    hallucinated: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_HALLUCINATED))

    def __post_init__(self):
        both = self.correct & self.hallucinated
        if both:
            raise ValueError(f"labels cannot be both correct and hallucinated: {sorted(both)}")

    @classmethod
    def from_lists(cls, correct: str | None = None, hallucinated: str | None = None) -> LabelMap:
        """From comma-separated lists (the CLI's --correct-labels / --hallucinated-labels)."""
        def parse(text, default):
            return frozenset(x.strip() for x in text.split(",") if x.strip()) if text else frozenset(default)
        return cls(parse(correct, DEFAULT_CORRECT), parse(hallucinated, DEFAULT_HALLUCINATED))

    def correctness(self, label: str) -> float:
        """1.0 for a correct label, 0.0 for a hallucinated one; KeyError for an unknown one."""
        if label in self.correct:
            return 1.0
        if label in self.hallucinated:
            return 0.0
        raise KeyError(label)

    def known(self) -> list[str]:
        return sorted(self.correct | self.hallucinated)
