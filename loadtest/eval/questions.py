"""The evaluation set: questions over the sample corpus, with the documents that answer them
and the key facts an answer must hold (tests/fixtures/eval_set.jsonl).

One JSON object a line: `id`, `question`, `documents` (the ids of the sample corpus's
documents, services/client/sample_corpus.py, any one of which answers it), `key_facts`
(each a string, or a list of strings any one of which will do; an answer must hold every
fact), `answerable` (false: the corpus does not say, and the right answer says so) and
`style` ("identifier" where the question names an exact identifier such as
`shutil.copystat`, else "natural"). Written by hand from the harvested documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.supervisor.launcher import ROOT

EVAL_SET = ROOT / "tests" / "fixtures" / "eval_set.jsonl"
# Held out from tuning retrieval: questions that each name an exact identifier of the sample
# corpus (`itertools.zip_longest`, `base64.b32hexencode`), none of them in EVAL_SET.
IDENTIFIER_SET = ROOT / "tests" / "fixtures" / "identifier_set.jsonl"
STYLES = ("natural", "identifier")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    documents: tuple[str, ...]
    # Every fact must be present; each fact is a tuple of alternatives.
    key_facts: tuple[tuple[str, ...], ...]
    answerable: bool
    style: str


def _fact(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def parse(line: str, where: str) -> Question:
    """One line of the set; ValueError naming `where` and the field when it is malformed."""
    raw = json.loads(line)
    question = Question(
        id=str(raw["id"]),
        question=str(raw["question"]),
        documents=tuple(raw.get("documents", ())),
        key_facts=tuple(_fact(f) for f in raw.get("key_facts", ())),
        answerable=bool(raw["answerable"]),
        style=str(raw.get("style", "natural")),
    )
    if question.style not in STYLES:
        raise ValueError(f"{where}: style must be one of {STYLES}, got {question.style!r}")
    if question.answerable and not (question.documents and question.key_facts):
        raise ValueError(f"{where}: an answerable question needs documents and key_facts")
    if not question.answerable and (question.documents or question.key_facts):
        raise ValueError(f"{where}: an unanswerable question has no documents or key_facts")
    return question


def load(path: Path = EVAL_SET) -> list[Question]:
    """The set, in file order; ValueError on a malformed line or a repeated id."""
    questions: list[Question] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            questions.append(parse(line, f"{path.name}:{number}"))
    ids = [q.id for q in questions]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{path.name}: repeated ids {repeated}")
    return questions


def subset(questions: list[Question], limit: int | None) -> list[Question]:
    """The first `limit` answerable questions and the unanswerable ones in proportion
    (at least one), in file order; all of them for None."""
    if limit is None or limit >= len(questions):
        return list(questions)
    unanswerable = [q for q in questions if not q.answerable]
    share = max(1, round(limit * len(unanswerable) / len(questions))) if unanswerable else 0
    answerable = [q for q in questions if q.answerable][: max(limit - share, 0)]
    return answerable + unanswerable[:share]


def documents_needed(questions: Iterable[Question]) -> set[str]:
    return {d for q in questions for d in q.documents}
