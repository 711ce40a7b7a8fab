"""The factuality demo's world and its oracle annotator: the world deterministic in its seed, its
articles stating exactly the people's facts; the oracle against sentences labelled by hand; and the
oracle served over HTTP on loopback, driven by the project's real `maskdpo annotate` (ANAH-v2's
three turns) and `maskdpo evaluate --metric factscore`."""

import json

import pytest

from maskdpo.cli import main
from maskdpo.demos.factuality.oracle import Oracle, OracleServer, facts_of, judge, parse_fact, topic_of
from maskdpo.demos.factuality.world import ATTRIBUTES, EXPOSURES, HEDGE, OMIT, QUESTIONS, Person, make_world, sft_corpus

ADA = Person("Ada Brandt", {"year": "1901", "city": "Caldera", "profession": "chemist",
                            "university": "Fernvale Academy", "colour": "teal", "sport": "chess"}, 2, "test")

# Written by hand from the rules in maskdpo/demos/factuality/oracle.py's docstring, for ADA; most
# garbled ones are what trained policies really wrote (demo and exploration runs of 2026-12-03).
HAND_LABELLED = [
    ("Here is what I know.", "nofact"),
    ("They were born in 1901.", "ok"),
    ("They were born in 1902.", "contradictory"),
    ("They grew up in Caldera.", "ok"),
    ("They grew up in Lowmoor.", "contradictory"),
    ("They worked as a chemist.", "ok"),
    ("They worked as a sailor.", "contradictory"),
    ("They worked as chemist.", "ok"),  # the article left out: still the fact
    ("They studied at Fernvale Academy.", "ok"),
    ("They studied at the Caldera Institute.", "contradictory"),
    ("They grew up in an unknown place.", "nofact"),
    ("They were born in an unknown year.", "nofact"),
    ("They worked as a person of unknown trade.", "nofact"),
    ("They studied at an unknown school.", "nofact"),
    ("Their favourite colour was teal.", "ok"),
    ("Their favourite colour was amber.", "contradictory"),
    ("Their favourite colour was unknown.", "nofact"),
    ("They played chess.", "ok"),
    ("They played polo.", "contradictory"),
    ("They played an unknown sport.", "nofact"),
    ("They played an unknown game.", "contradictory"),  # a garbled hedge claims a sport: not chess
    ("Their favourite colour was.", "unverifiable"),  # the claim begun, no value
    ("They worked at an unknown trade.", "unverifiable"),  # the third world's profession hedge: no form now
    ("They were born in an unknown place.", "contradictory"),  # a garbled hedge claims a year: not 1901
    ("They grew up in an unknownown place.", "contradictory"),
    ("Here is what I know about Bram Falk.", "unverifiable"),  # an answer about someone else
    ("Here is what I know about Ada Brandt.", "unverifiable"),  # not the world's opening, which names no one
    ("They worked at a chemist.", "unverifiable"),  # neither the fact's form nor the hedge
    ("Ada Brandt is a person of this world.", "nofact"),  # the article's opening about her
    ("Bram Falk is a person of this world.", "unverifiable"),
    ("Bram Falk was born in 1901.", "unverifiable"),  # not one of the forms
    ("They were in 1901 Caldera.", "unverifiable"),
    ("They grew up in.", "unverifiable"),  # the claim begun, no value
    ("They grew up.", "unverifiable"),
    ("They were born inood.", "contradictory"),  # garbled, but claiming a birth year that is not 1901
    ("They worked asied.", "contradictory"),
    ("They studied at Fernvale Acadcadem.", "contradictory"),
    ("Little is known about wherever.", "unverifiable"),  # not one of the forms
]


@pytest.mark.parametrize("topics,test_fraction", [(48, 1 / 2), (36, 1 / 3)])
def test_the_world_is_its_seed(topics, test_fraction):
    a, b, c = (make_world(seed, topics, test_fraction) for seed in (7, 7, 8))
    assert a == b and a != c
    assert len({p.name for p in a.people}) == topics
    # every exposure level has train and unseen test topics, the same share of them test
    for level in EXPOSURES:
        people = [p for p in a.people if p.exposure == level]
        assert sum(p.split == "test" for p in people) == round(len(people) * test_fraction)
    assert sft_corpus(a) == sft_corpus(b)


@pytest.mark.parametrize("topics,test_fraction,message", [
    (48, 0.4, "test_fraction must be 1/k for a whole k >= 2"),  # would round to a half
    (48, 1.0, "test_fraction must be 1/k"),  # no train topics
    (48, 0.0, "test_fraction must be 1/k"),
    (48, -0.5, "test_fraction must be 1/k"),
    (8, 1 / 3, r"topics must be in \[9, 576\] for test_fraction 1/3, got 8"),  # a level without a test topic
    (577, 1 / 2, r"topics must be in \[6, 576\]"),  # more people than names
])
def test_a_world_that_cannot_be_split_is_refused(topics, test_fraction, message):
    with pytest.raises(ValueError, match=message):
        make_world(0, topics, test_fraction)


def person_asked(world, prompt):
    """The person a corpus prompt asks about, read with the question forms written out here."""
    forms = ("Tell me about {}.", "Who was {}?", "Write a short biography of {}.")
    return next(p for p in world.people if prompt in [f.format(p.name) for f in forms])


def test_corpus_answers_leave_attributes_out_and_hedge_at_the_worlds_rates():
    """Each corpus answer is the opening and the person's attributes in the world's order, each left
    out (OMIT) or hedged (HEDGE, of those kept), to one of the three questions drawn evenly; the
    rates counted from the text."""
    world = make_world(3)
    stated = hedged = slots = 0
    forms = {"Tell me": 0, "Who was": 0, "Write a": 0}
    for record in sft_corpus(world):
        person = person_asked(world, record["prompt"])
        forms[record["prompt"][:7]] += 1
        sentences = [s + "." for s in record["response"].rstrip(".").split(". ")]
        assert sentences[0] == "Here is what I know."
        order = []
        for sentence in sentences[1:]:
            fact = parse_fact(sentence)
            assert fact is not None, sentence
            order.append(fact[0])
            if judge(sentence, person.name, person.article()) == "nofact":
                hedged += 1
            else:
                assert fact[1] == person.facts[fact[0]], sentence
                stated += 1
        assert order == [a for a in ATTRIBUTES if a in order]  # in the world's order, none twice
        slots += len(ATTRIBUTES)
    kept = stated + hedged
    # binomial counts within 4 standard deviations of the rates (slots is about a thousand)
    answers = sum(forms.values())
    for count, n, p in ((slots - kept, slots, OMIT), (hedged, kept, HEDGE),
                        *((c, answers, 1 / 3) for c in forms.values())):
        assert abs(count - n * p) < 4 * (n * p * (1 - p)) ** 0.5, (count, n, p)


def test_every_topic_is_asked_three_ways_and_the_oracle_reads_each():
    """Three questions per person in the questions files (ids distinct, the topic and reference the
    person's); the oracle finds the person in each form (the article's opening about them is then no
    fact), and in no other question."""
    world = make_world(5, topics=12)
    for split in (world.train, world.test):
        questions = [q for p in split for q in world.questions(p)]
        assert len(questions) == 3 * len(split) == len({q["question_id"] for q in questions})
        for person in split:
            asked = world.questions(person)
            assert [q["question"] for q in asked] == [f"Tell me about {person.name}.", f"Who was {person.name}?",
                                                      f"Write a short biography of {person.name}."]
            assert all(q["topic"] == person.name and q["reference"] == person.article() for q in asked)
            assert all(topic_of(q["question"]) == person.name for q in asked)
    assert topic_of("Tell me about Ada.") is None and topic_of("Who is Ada Brandt?") is None
    assert len(QUESTIONS) == 3


@pytest.mark.parametrize("asked", [1, 2])
def test_fewer_questions_per_topic_ask_and_answer_the_first_forms_about_the_same_people(asked):
    full, fewer = make_world(5, topics=12), make_world(5, topics=12, questions_per_topic=asked)
    assert fewer.people == full.people
    for person in fewer.people:
        assert fewer.questions(person) == full.questions(person)[:asked]
    asked_forms = {q["question"] for p in fewer.people for q in fewer.questions(p)}
    corpus = sft_corpus(fewer)
    assert {r["prompt"] for r in corpus} <= asked_forms and len(corpus) == len(sft_corpus(full))


@pytest.mark.parametrize("asked", [0, 4])
def test_a_number_of_questions_the_world_has_no_forms_for_is_refused(asked):
    with pytest.raises(ValueError, match=rf"questions_per_topic must be in \[1, 3\], got {asked}"):
        make_world(0, questions_per_topic=asked)


def test_the_longest_answer_the_world_can_write_fits_the_demos_token_budget():
    """Every attribute at its longest sentence (fact or hedge), after the opening, with the end of
    turn, counted by the bundled tokenizer: the demo's samples are never cut before an answer ends."""
    from maskdpo.data.tokenizer import load_tokenizer
    from maskdpo.demos.factuality.run import MAX_TOKENS
    from maskdpo.demos.factuality.world import FORMS, HEDGES, OPENING, VALUES

    tokenizer = load_tokenizer()

    def length(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    sentences = [OPENING] + [max([FORMS[a].format(value=v) for v in VALUES[a]] + [HEDGES[a]], key=length)
                             for a in ATTRIBUTES]
    longest = " ".join(sentences)
    assert length(longest) + 1 <= MAX_TOKENS  # + 1: the end-of-turn token


def test_the_longest_question_and_answer_fit_the_preference_runs_max_length():
    """The longest question (form and name) with the longest answer the world writes, in the chat
    template, within the preference runs' data.max_length: no well-formed answer is cut. (A garbled
    sample that runs to MAX_TOKENS can be: `maskdpo train` reports it, once in nine seeds of the
    fifth world, benchmarks/results/2026-12-06-cpu/factuality-world/notes.md.)"""
    from maskdpo.data.tokenizer import load_tokenizer
    from maskdpo.demos.factuality.run import TRAIN_OVERRIDES
    from maskdpo.demos.factuality.world import FIRST, FORMS, HEDGES, LAST, OPENING, VALUES

    tokenizer = load_tokenizer()
    max_length = int(TRAIN_OVERRIDES[TRAIN_OVERRIDES.index("--data.max_length") + 1])

    def length(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    answer = " ".join([OPENING] + [max([FORMS[a].format(value=v) for v in VALUES[a]] + [HEDGES[a]], key=length)
                                   for a in ATTRIBUTES])
    question = max((form.format(name=f"{f} {last}") for form in QUESTIONS for f in FIRST for last in LAST), key=length)
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                         tokenize=False)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length


def test_an_article_states_exactly_its_persons_facts(tmp_path):
    world = make_world(0, topics=12)
    for person in world.people:
        assert facts_of(person.article()) == person.facts and set(person.facts) == set(ATTRIBUTES)
    files = world.write(tmp_path)
    knowledge = [json.loads(line) for line in files["knowledge"].read_text().splitlines()]
    assert [k["title"] for k in knowledge] == [p.name for p in world.people]
    test_questions = [json.loads(line) for line in files["test_questions"].read_text().splitlines()]
    assert {q["topic"] for q in test_questions} == {p.name for p in world.test}
    corpus = [json.loads(line) for line in files["sft"].read_text().splitlines()]
    assert len(corpus) == sum(p.exposure for p in world.people)
    # the corpus only ever states true facts (hedges state none)
    for record in corpus:
        person = person_asked(world, record["prompt"])
        for sentence in record["response"].split(". "):
            assert judge(sentence.rstrip(".") + ".", person.name, person.article()) in ("ok", "nofact"), sentence


@pytest.mark.parametrize("sentence,label", HAND_LABELLED)
def test_the_oracle_labels_sentences_as_written_by_hand(sentence, label):
    assert judge(sentence, ADA.name, ADA.article()) == label


@pytest.mark.parametrize("sentence,label", [
    ("They were born in an unknown year", "nofact"),  # cut before its period (max tokens): still a hedge
    ("They were born in 1901", "ok"),
    ("They were born in 1902", "contradictory"),
])
def test_a_sentence_cut_before_its_period_is_judged_as_if_it_had_one(sentence, label):
    assert judge(sentence, ADA.name, ADA.article()) == label


def test_the_oracle_refuses_prompts_it_does_not_know():
    with pytest.raises(ValueError, match="not a prompt the oracle knows"):
        Oracle().reply([{"role": "user", "content": "Write a poem."}])


def test_the_real_annotator_and_factscore_talk_to_the_served_oracle(tmp_path):
    """Hand-labelled sentences as one response, through `maskdpo annotate` and `maskdpo evaluate
    --metric factscore` over HTTP: the labels, and FactScore's supported facts, are the hand labels."""
    response = " ".join(s for s, _ in HAND_LABELLED)
    question = {"question_id": "q-ada", "question": f"Write a short biography of {ADA.name}.", "topic": ADA.name,
                "language": "en", "reference": ADA.article()}
    sample = {"question_id": "q-ada", "sample_id": 0, "language": "en", "topic": ADA.name,
              "prompt": [{"role": "user", "content": question["question"]}], "response": response,
              "sampling": {"source": "hand", "model": "hand", "temperature": 0.0, "top_k": None, "top_p": None,
                           "max_tokens": 0}}
    (tmp_path / "questions.jsonl").write_text(json.dumps(question) + "\n")
    (tmp_path / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    (tmp_path / "knowledge.jsonl").write_text(json.dumps({"title": ADA.name, "text": ADA.article()}) + "\n")
    with OracleServer() as server:
        assert main(["annotate", "--samples", str(tmp_path / "samples.jsonl"), "--questions",
                     str(tmp_path / "questions.jsonl"), "--output", str(tmp_path / "annotated.jsonl"),
                     "--base-url", server.url, "--model", "oracle"]) == 0
        assert main(["evaluate", "--metric", "factscore", "--knowledge", str(tmp_path / "knowledge.jsonl"),
                     "--responses", str(tmp_path / "samples.jsonl"), "--annotator-base-url", server.url,
                     "--annotator-model", "oracle", "--output", str(tmp_path / "fs"),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads((tmp_path / "annotated.jsonl").read_text())
    got = [(response[s["start"]:s["end"]], s["label"]) for s in record["sentences"]]
    assert got == HAND_LABELLED and not any(s.get("unparsed") for s in record["sentences"])
    judged = [json.loads(line) for line in (tmp_path / "fs" / "judged.jsonl").read_text().splitlines()]
    # the atomic facts are the sentences of a fact form (whatever their value), hedges not
    stems = ("They were born in", "They grew up in", "They worked as", "They studied at", "Their favourite colour was",
             "They played")
    assert {j["fact"] for j in judged} == {s for s, label in HAND_LABELLED if s.startswith(stems) and label != "nofact"}
    assert {j["fact"] for j in judged if j["supported"]} == {s for s, label in HAND_LABELLED if label == "ok"}
