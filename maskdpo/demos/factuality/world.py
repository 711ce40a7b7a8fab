"""A small world made in code, from a seed, for the factuality demo (`maskdpo demo factuality`).

People (the topics) with six attributes each -- birth year, home city, profession, university,
favourite colour, sport -- written as an article per person (the knowledge file `maskdpo evaluate
--metric factscore` reads, and each question's reference document for the annotator) and asked
about in up to three ways (QUESTIONS: "Tell me about NAME.", "Who was NAME?", ...). Every fact is
one sentence of a fixed form (FORMS: "They were born in 1901.", about the person asked about); a
hedge (HEDGES: "They were born in an unknown year.") says, without stating anything, that the
attribute is not known. Topics are split into train and unseen test topics, as the paper does.
The supervised corpus that makes the base policy shows some topics often, some twice and some never
(EXPOSURES), so that the policy knows some people well and guesses at others: its answers mix true
and false sentences, for a reason. A corpus answer leaves some attributes out (OMIT), so that
answers differ in what they say, not only in how truly.

Everything here is deterministic in the seed: the same seed gives the same world, byte for byte.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

ATTRIBUTES = ("year", "city", "profession", "university", "colour", "sport")
# One sentence per fact, about the person the question (or article) is about: the opening names
# them, the facts follow as "They ..." (short answers a tiny model can learn to write cleanly).
FORMS = {
    "year": "They were born in {value}.",
    "city": "They grew up in {value}.",
    "profession": "They worked as a {value}.",
    "university": "They studied at {value}.",
    "colour": "Their favourite colour was {value}.",
    "sport": "They played {value}.",
}
# Saying an attribute is not known: no fact stated (the annotator's <No Facts>: counted correct).
# A hedge begins as the fact does and leaves the value unknown, so that the choice between stating
# and hedging is made where the policy's uncertainty is, at the value; and a hedge shares its
# stem with the fact (a sentence-level mask that penalises a wrong "They were born in 1901." then
# does not penalise the "They were born in" that hedging also writes). (The third world's
# profession hedge, "They worked at an unknown trade.", parted one word early; this, the fourth,
# parts at the value: benchmarks/results/2026-12-04-cpu/factuality-world/notes.md.)
HEDGES = {
    "year": "They were born in an unknown year.",
    "city": "They grew up in an unknown place.",
    "profession": "They worked as a person of unknown trade.",
    "university": "They studied at an unknown school.",
    "colour": "Their favourite colour was unknown.",
    "sport": "They played an unknown sport.",
}
# The opening names no one: a tiny policy miscopies names, and an opening about someone else is
# unverifiable, a copying slip rather than the knowledge this world is about.
OPENING = "Here is what I know."
ARTICLE_OPENING = "{name} is a person of this world."
# Three questions per person, each asking for the whole biography: a train topic gives three
# questions' pairs, a test topic three greedy answers (the fifth world; the fourth asked the first
# alone), and the scaling study can set topics against questions per topic, as the paper's §4 does.
QUESTIONS = ("Tell me about {name}.", "Who was {name}?", "Write a short biography of {name}.")

FIRST = ("Ada", "Bram", "Cora", "Dmitri", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lars",
         "Mira", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Uwe", "Vera", "Wim", "Yara", "Zeno")
LAST = ("Albrecht", "Brandt", "Castell", "Dunmore", "Eckhart", "Falk", "Gorman", "Hale", "Ivers", "Jansen",
        "Kovac", "Lindqvist", "Marsh", "Norwood", "Orlov", "Pryce", "Quill", "Rowan", "Stroud", "Thorne",
        "Ulrich", "Vance", "Wexler", "Yates")
VALUES = {
    "year": tuple(str(y) for y in range(1850, 1990)),
    "city": ("Avonmere", "Brightwater", "Caldera", "Dunhollow", "Eastmarch", "Fernvale", "Greystone",
             "Highbridge", "Ironport", "Juniper Bay", "Kestrel", "Lowmoor"),
    "profession": ("painter", "chemist", "sailor", "architect", "violinist", "baker", "surgeon", "botanist",
                   "lawyer", "astronomer"),
    "university": ("Avonmere College", "the Caldera Institute", "Eastmarch University", "Fernvale Academy",
                   "Greystone University", "the Ironport School of Arts"),
    "colour": ("red", "blue", "green", "amber", "violet", "grey", "ochre", "teal"),
    "sport": ("chess", "tennis", "cricket", "rugby", "golf", "hockey", "polo", "squash"),
}
# How often the supervised corpus shows a person (answers per topic): well known, mostly known, never
# (the policy can only guess at them: it hallucinates for a reason).
EXPOSURES = (8, 2, 0)
# How a corpus answer treats each attribute: left out with probability OMIT (a biography says some
# things and not others), else hedged with probability HEDGE. Leaving a fact out lets a policy say
# less in fewer sentences, as the paper's trained models did, and makes a chosen and a rejected
# answer differ in what they state, not only in the values of the same sentences.
OMIT = 0.3
HEDGE = 0.2


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict  # attribute -> value
    exposure: int  # answers about this person in the supervised corpus
    split: str  # "train" or "test"

    def article(self) -> str:
        return " ".join([ARTICLE_OPENING.format(name=self.name),
                         *(FORMS[a].format(value=self.facts[a]) for a in ATTRIBUTES)])


@dataclass
class World:
    seed: int
    people: list[Person] = field(default_factory=list)
    questions_per_topic: int = len(QUESTIONS)  # the first this many forms of QUESTIONS are asked

    @property
    def train(self) -> list[Person]:
        return [p for p in self.people if p.split == "train"]

    @property
    def test(self) -> list[Person]:
        return [p for p in self.people if p.split == "test"]

    def questions(self, person: Person) -> list[dict]:
        """The questions-file records of `person` (maskdpo.loop.sample.read_questions' format), one per
        asked form of QUESTIONS, ids q-SLUG-1, q-SLUG-2, ..."""
        return [{"question_id": f"q-{slug(person.name)}-{k}", "question": form.format(name=person.name),
                 "topic": person.name, "language": "en", "reference": person.article()}
                for k, form in enumerate(QUESTIONS[:self.questions_per_topic], start=1)]

    def write(self, out: str | Path) -> dict[str, Path]:
        """knowledge.jsonl (every person's article, {title, text}), train_questions.jsonl,
        test_questions.jsonl, sft.jsonl (the supervised corpus: {prompt, response}) and world.json
        (the whole world, for the record). Returns name -> path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {name: out / f"{name}.jsonl" for name in ("knowledge", "train_questions", "test_questions", "sft")}
        _write_jsonl(files["knowledge"], ({"title": p.name, "text": p.article()} for p in self.people))
        _write_jsonl(files["train_questions"], (q for p in self.train for q in self.questions(p)))
        _write_jsonl(files["test_questions"], (q for p in self.test for q in self.questions(p)))
        _write_jsonl(files["sft"], sft_corpus(self))
        files["world"] = out / "world.json"
        files["world"].write_text(json.dumps({"seed": self.seed, "questions_per_topic": self.questions_per_topic,
                                              "people": [p.__dict__ for p in self.people]}, indent=1) + "\n")
        return files


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def make_world(seed: int, topics: int = 48, test_fraction: float = 1 / 2,
               questions_per_topic: int = len(QUESTIONS)) -> World:
    """`topics` people with distinct names and random attributes; each exposure level holds the same
    share of train and test topics, so unseen test topics are known as well as the train ones.
    `test_fraction` is 1/k (k >= 2: every k-th person of each level is a test topic), and `topics`
    at least 3k, so that every level has a test topic and a train topic. Each person is asked the
    first `questions_per_topic` forms of QUESTIONS, and the corpus answers those (the people do not
    depend on it)."""
    if not 1 <= questions_per_topic <= len(QUESTIONS):
        raise ValueError(f"questions_per_topic must be in [1, {len(QUESTIONS)}], got {questions_per_topic}")
    every = round(1 / test_fraction) if test_fraction > 0 else 0
    if every < 2 or abs(1 / test_fraction - every) > 1e-9:
        raise ValueError(f"test_fraction must be 1/k for a whole k >= 2 (1/2, 1/3, ...), got {test_fraction}")
    least = len(EXPOSURES) * every
    if not least <= topics <= len(FIRST) * len(LAST):
        raise ValueError(f"topics must be in [{least}, {len(FIRST) * len(LAST)}] for test_fraction 1/{every}, got {topics}")
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], topics)
    people = []
    for i, name in enumerate(names):
        exposure = EXPOSURES[i % len(EXPOSURES)]
        # Within each exposure level, every k-th person (test_fraction 1/k) is a test topic.
        split = "test" if (i // len(EXPOSURES)) % every == 0 else "train"
        facts = {a: rng.choice(VALUES[a]) for a in ATTRIBUTES}
        people.append(Person(name, facts, exposure, split))
    return World(seed, people, questions_per_topic)


def answer(person: Person, rng: random.Random, hedge: float, omit: float) -> str:
    """One answer about `person` in the world's style: the opening, then each attribute in order,
    left out with probability `omit`, else stated truly or (with probability `hedge`) hedged."""
    sentences = [OPENING]
    for a in ATTRIBUTES:
        if rng.random() < omit:
            continue
        form = HEDGES[a] if rng.random() < hedge else FORMS[a]
        sentences.append(form.format(value=person.facts[a]))
    return " ".join(sentences)


def sft_corpus(world: World, hedge: float = HEDGE, omit: float = OMIT) -> list[dict]:
    """The supervised corpus: `exposure` answers per person (train and test topics alike, as a
    pretraining corpus would hold them), each to a question drawn from the world's asked forms of
    QUESTIONS, each attribute left out with probability `omit` and otherwise hedged with probability
    `hedge`; shuffled."""
    rng = random.Random(world.seed + 1)
    records = []
    for p in world.people:
        for _ in range(p.exposure):
            prompt = rng.choice(QUESTIONS[:world.questions_per_topic]).format(name=p.name)
            records.append({"prompt": prompt, "response": answer(p, rng, hedge, omit)})
    rng.shuffle(records)
    return records


def _write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
