"""The built-in sample corpus: a small fictional world, generated deterministically (no download).

`make demo` and the tests ingest it, train a tiny model on it and check that the model learned it.
It deliberately holds what a real crawl holds: HTML pages with boilerplate, plain text, JSONL
(plain and gzip), exact and near duplicates, junk, and documents in other languages, so that every
corpus stage has something to do. It also holds dialogue transcripts in the demo chat format
(``CHAT_TEMPLATE``) and agent transcripts in the ReAct text protocol (``REACT_*`` below), which
is what lets a model trained from scratch in a minute answer a chat and drive the agent's tools.

ReAct protocol (the agent runtime speaks exactly this)::

    Question: What is 17 plus 25?
    Thought: I should use the calculator.
    Action: calculator
    Action Input: {"expression": "17 + 25"}
    Observation: 42
    Thought: I now know the final answer.
    Final Answer: 42

Search observations are lines ``[<doc id>] <passage>``.

Most agent transcripts are calculator calls on random operands with the four operations (a few
question phrasings): a model can only drive the tool by copying the question's numbers into the
``Action Input`` and the observation into the ``Final Answer``, the arithmetic is the tool's. The
demo's own question (``AGENT_QUESTION``) and the held-out questions of
``heldout_arithmetic()`` never occur in them, so answering those is copying, not recall.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}System: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

REACT_THOUGHT_TOOL = {
    "calculator": "I should use the calculator.",
    "search_corpus": "I should search the corpus.",
}
REACT_THOUGHT_FINAL = "I now know the final answer."

# question word -> the calculator's operator
ARITHMETIC_OPERATIONS = {"plus": "+", "minus": "-", "times": "*", "divided by": "/"}
_ARITHMETIC_PHRASINGS = ["What is {}?", "What is {}?", "What is {}?", "Calculate {}.", "How much is {}?"]
AGENT_QUESTION = "What is 12 plus 30?"  # what `puyu demo` asks its agent

_ONSETS = [
    "al",
    "bre",
    "cor",
    "dun",
    "el",
    "fen",
    "gar",
    "hol",
    "is",
    "jor",
    "kel",
    "lum",
    "mar",
    "nor",
    "or",
    "pel",
    "quen",
    "ros",
    "sol",
    "tor",
    "ul",
    "val",
    "wen",
    "yr",
    "zan",
]
_MIDDLES = ["a", "e", "i", "o", "u", "ae", "ia", "or", "an", "el"]
_CODAS = ["dia", "land", "mark", "ria", "via", "stan", "heim", "nor", "gard", "tia"]
_CITY_CODAS = ["ton", "burg", "ford", "holm", "port", "vik", "mont", "wick", "dale", "sk"]
_LANGS = ["Aldic", "Brenish", "Corvan", "Dunmic", "Elvar", "Fennic", "Garish", "Holtic"]
_GOODS = ["copper", "silk", "apples", "timber", "salt", "glass", "wool", "tea", "horses", "marble"]
_FILLER = [
    "Travellers often arrive in spring, when the roads are dry.",
    "The old market opens every morning before sunrise.",
    "Scholars have written many books about its long history.",
    "Its people are proud of their music and their festivals.",
    "The winters there are long and the summers are short.",
    "Many families have lived in the same valley for centuries.",
    "A famous library stands near the central square.",
    "Fishermen sell their catch on the harbour every evening.",
    "The railway between the two largest towns was finished long ago.",
    "Children learn to swim in the cold lakes in summer.",
]


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    language: str
    river: str
    good: str
    population: int  # millions


def _name(rng: random.Random, codas: list[str]) -> str:
    return (rng.choice(_ONSETS) + rng.choice(_MIDDLES) + rng.choice(codas)).capitalize()


def world(n: int = 40, seed: int = 7) -> list[Country]:
    rng = random.Random(seed)
    used: set[str] = set()
    out: list[Country] = []
    while len(out) < n:
        name, capital, river = _name(rng, _CODAS), _name(rng, _CITY_CODAS), _name(rng, _CITY_CODAS)
        if {name, capital, river} & used or len({name, capital, river}) < 3:
            continue
        used |= {name, capital, river}
        out.append(Country(name, capital, rng.choice(_LANGS), river, rng.choice(_GOODS), rng.randint(1, 90)))
    return out


WORLD = world()


def _facts(c: Country, rng: random.Random) -> list[str]:
    facts = [
        f"The capital of {c.name} is {c.capital}.",
        f"{c.capital} is the capital city of {c.name}.",
        f"People in {c.name} speak {c.language}.",
        f"The {c.river} river flows through {c.name}.",
        f"{c.name} is known for its {c.good}.",
        f"About {c.population} million people live in {c.name}.",
    ]
    rng.shuffle(facts)
    return facts


def _article(rng: random.Random) -> str:
    countries = rng.sample(WORLD, rng.choice([1, 1, 2]))
    paragraphs = []
    for c in countries:
        sentences = _facts(c, rng)[: rng.randint(3, 6)] + rng.sample(_FILLER, rng.randint(1, 3))
        rng.shuffle(sentences)
        sentences.insert(0, f"The capital of {c.name} is {c.capital}.")  # the fact every page states first
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _dialogue(rng: random.Random) -> str:
    c = rng.choice(WORLD)
    qa = [
        (f"What is the capital of {c.name}?", f"The capital of {c.name} is {c.capital}."),
        (f"Which language do people speak in {c.name}?", f"People in {c.name} speak {c.language}."),
        (f"What is {c.name} known for?", f"{c.name} is known for its {c.good}."),
    ]
    turns = rng.sample(qa, rng.randint(1, 2))
    return "\n".join(f"User: {q}\nAssistant: {a}" for q, a in turns)


@dataclass(frozen=True)
class ArithmeticProblem:
    """``a <word> b`` with an integer answer (a division's ``a`` is a multiple of ``b``)."""

    a: int
    word: str
    b: int
    phrasing: str = "What is {}?"

    @property
    def question(self) -> str:
        return self.phrasing.format(f"{self.a} {self.word} {self.b}")

    @property
    def expression(self) -> str:
        return f"{self.a} {ARITHMETIC_OPERATIONS[self.word]} {self.b}"

    @property
    def answer(self) -> str:
        a, b = self.a, self.b
        value = {"plus": a + b, "minus": a - b, "times": a * b, "divided by": a // b}[self.word]
        return str(value)

    @property
    def operands(self) -> frozenset[int]:
        return frozenset((self.a, self.b))


def _operand(rng: random.Random) -> int:
    # mostly two digits, as the demo's question; one and three digits so that copying, not a
    # fixed width, is what the model learns
    return rng.choice([rng.randint(2, 9)] + [rng.randint(10, 99)] * 5 + [rng.randint(100, 999)])


def _arithmetic_problem(rng: random.Random) -> ArithmeticProblem:
    word = rng.choice(list(ARITHMETIC_OPERATIONS))
    a, b = _operand(rng), _operand(rng)
    if word == "times":
        b = rng.randint(2, 12)
    elif word == "divided by":
        b = rng.randint(2, 12)
        a = b * rng.randint(2, 30)
    return ArithmeticProblem(a, word, b, rng.choice(_ARITHMETIC_PHRASINGS))


def heldout_arithmetic(n: int = 20, seed: int = 20_011) -> list[ArithmeticProblem]:
    """Arithmetic questions no agent transcript of the sample corpus asks (nor the demo's question):
    the held-out check that a trained model calls the calculator with the question's numbers."""
    rng = random.Random(seed)
    out: list[ArithmeticProblem] = []
    while len(out) < n:
        problem = _arithmetic_problem(rng)
        problem = ArithmeticProblem(problem.a, problem.word, problem.b)  # the demo's phrasing
        if problem.operands != _DEMO_OPERANDS and problem not in out:
            out.append(problem)
    return out


_DEMO_OPERANDS = frozenset((12, 30))
_HELD_OUT_OPERANDS = {p.operands for p in heldout_arithmetic()} | {_DEMO_OPERANDS}


def _calculator_trace(rng: random.Random) -> str:
    problem = _arithmetic_problem(rng)
    while problem.operands in _HELD_OUT_OPERANDS:  # neither the demo's nor a held-out pair of numbers
        problem = _arithmetic_problem(rng)
    return "\n".join(
        [
            f"Question: {problem.question}",
            f"Thought: {REACT_THOUGHT_TOOL['calculator']}",
            "Action: calculator",
            f'Action Input: {{"expression": "{problem.expression}"}}',
            f"Observation: {problem.answer}",
            f"Thought: {REACT_THOUGHT_FINAL}",
            f"Final Answer: {problem.answer}",
        ]
    )


def _search_trace(rng: random.Random) -> str:
    c = rng.choice(WORLD)
    return "\n".join(
        [
            f"Question: What is the capital of {c.name}?",
            f"Thought: {REACT_THOUGHT_TOOL['search_corpus']}",
            "Action: search_corpus",
            f'Action Input: {{"query": "capital of {c.name}"}}',
            f"Observation: [doc-{rng.randint(1, 999)}] The capital of {c.name} is {c.capital}.",
            f"Thought: {REACT_THOUGHT_FINAL}",
            f"Final Answer: The capital of {c.name} is {c.capital}.",
        ]
    )


def _html(title: str, body: str, url: str) -> str:
    paras = "".join(f"<p>{p}</p>\n" for p in body.split("\n\n"))
    nav = "".join(f'<li><a href="/{w.lower()}">{w}</a></li>' for w in ("Home", "Atlas", "News", "Contact"))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="canonical" href="{url}"></head><body>'
        f"<header><nav><ul>{nav}</ul></nav></header>"
        f"<main><article><h1>{title}</h1>\n{paras}</article></main>"
        '<aside><h3>Related</h3><ul><li><a href="/more">More places to visit</a></li></ul></aside>'
        "<footer><p>Copyright 2026 The World Atlas. All rights reserved.</p>"
        '<p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a></p></footer>'
        "</body></html>"
    )


_JUNK = [
    "$$$ ### %%% @@@ !!! *** $$$ ### %%% @@@ !!! ***",
    "click here\nclick here\nclick here\nclick here\nclick here\nclick here",
    "ok",
    "BUY NOW!!! >>> http://spam.example <<< BUY NOW!!! >>> 50% off <<< $$$",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]
_FOREIGN = [
    "Die Hauptstadt des Landes liegt an einem großen Fluss, und viele Menschen besuchen sie im Sommer.",
    "La capitale du pays se trouve au bord d'une grande rivière et attire de nombreux visiteurs en été.",
    "La capital del país está junto a un gran río y recibe muchos visitantes durante el verano.",
]
_CHINESE = [
    "这个国家的首都位于一条大河旁边，每年夏天都有很多游客来参观古老的市场和图书馆。",
    "人们喜欢在春天旅行，因为道路干燥，天气温暖，山谷里开满了花。",
    "这座城市有一座著名的图书馆，学者们写了很多关于它悠久历史的书。",
]


def write_sample_corpus(
    dest: Path, seed: int = 0, n_articles: int = 1200, n_calculator_traces: int = 3000
) -> list[Path]:
    """Write the sample corpus under ``dest``; returns the source paths (files and one folder)."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    articles = [_article(rng) for _ in range(n_articles)]
    records: list[dict[str, object]] = [
        {"id": f"article-{i}", "text": t, "url": f"https://atlas.example/a/{i}"}
        for i, t in enumerate(articles)
    ]
    # Duplicates as a crawl has them: exact copies and near copies (one sentence changed).
    for i in rng.sample(range(n_articles), n_articles // 20):
        records.append({"id": f"copy-{i}", "text": articles[i], "url": f"https://mirror.example/a/{i}"})
    for i in rng.sample(range(n_articles), n_articles // 20):
        near = articles[i].replace(".", ", as the guide says.", 1)
        records.append({"id": f"near-{i}", "text": near, "url": f"https://blog.example/a/{i}"})
    records += [{"id": f"junk-{i}", "text": t} for i, t in enumerate(_JUNK * 4)]
    records += [{"id": f"foreign-{i}", "text": t} for i, t in enumerate(_FOREIGN * 5)]
    records += [{"id": f"zh-{i}", "text": t} for i, t in enumerate(_CHINESE * 3)]
    rng.shuffle(records)
    half = len(records) // 2
    (dest / "articles.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:half])
    )
    with gzip.open(dest / "articles-2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records[half:])
    dialogues = [_dialogue(rng) for _ in range(500)] + [_search_trace(rng) for _ in range(450)]
    calc_rng = random.Random(seed + 1)  # the arithmetic traces draw from a generator of their own
    dialogues += [_calculator_trace(calc_rng) for _ in range(n_calculator_traces)]
    (dest / "dialogues.jsonl").write_text(
        "".join(json.dumps({"id": f"dialogue-{i}", "text": t}) + "\n" for i, t in enumerate(dialogues))
    )
    pages = dest / "pages"
    pages.mkdir(exist_ok=True)
    for i in range(60):
        c = WORLD[i % len(WORLD)]
        url = f"https://atlas.example/country/{c.name.lower()}"
        (pages / f"{c.name.lower()}-{i}.html").write_text(
            _html(f"{c.name}: a short guide", _article(rng), url)
        )
    notes = dest / "notes"
    notes.mkdir(exist_ok=True)
    for i in range(40):
        (notes / f"note-{i}.txt").write_text(_article(rng) + "\n")
    return [dest / "articles.jsonl", dest / "articles-2.jsonl.gz", dest / "dialogues.jsonl", pages, notes]


def fact_prompts() -> list[tuple[str, str]]:
    """(prompt, expected next word) pairs of the demo_facts task."""
    return [(f"The capital of {c.name} is", c.capital) for c in WORLD]


def heldout_texts(n: int = 64, seed: int = 10_001) -> list[str]:
    """Texts from the corpus distribution that the sample corpus does not contain."""
    rng = random.Random(seed)
    return [_article(rng) for _ in range(n)]


def chat_examples(n: int = 200, seed: int = 3) -> list[dict[str, object]]:
    """OpenAI-messages records for finetuning."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for _ in range(n):
        c = rng.choice(WORLD)
        messages: list[dict[str, str]] = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": "You are a helpful atlas."})
        messages += [
            {"role": "user", "content": f"Tell me about {c.name}."},
            {
                "role": "assistant",
                "content": f"The capital of {c.name} is {c.capital}. People there speak {c.language}.",
            },
        ]
        if rng.random() < 0.5:
            messages += [
                {"role": "user", "content": "What is it known for?"},
                {"role": "assistant", "content": f"{c.name} is known for its {c.good}."},
            ]
        out.append({"messages": messages})
    return out
