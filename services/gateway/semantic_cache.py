"""The semantic answer cache: an answer to a question worded differently, never to another
question.

After the exact cache misses, a question may take the answer of a cached one in the same
scope (tenant, corpus version, tier and every generation parameter, filters included) when
the two are close in the embedder's space (cosine >= the threshold) and say the same
things that embeddings blur (`constraints`): the same numbers, negations, identifiers and
names, units, and the same words of the pairs that flip a question (with/without,
encode/decode, min/max, ...). The vector is the one retrieval computed for the search, so a
miss costs no embedding. The threshold is chosen on a labelled set of question pairs
(tests/fixtures/semantic_cache_pairs.jsonl; `python -m loadtest.bench_semantic_cache`
prints precision and recall at each threshold).

One cache per gateway process, in memory, LRU-bounded and with a TTL; gateways do not
share it (a region of several gateways warms each separately: a hit is served by the one
that answered, a miss costs one model call per gateway at most).
"""

from __future__ import annotations

import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Generic, TypeVar

import numpy as np

V = TypeVar("V")

# Standalone numbers: "3.8", "2024", "09:00", "1/2"; not the digits inside k8s or sha256.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,:/]\d+)*(?![\w])")
_WORD = re.compile(r"[A-Za-z_][\w.]*(?:\(\))?")
_NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "neither", "nor", "cannot", "non"})
# Words that flip what a question asks while an embedding barely moves, in groups: two
# questions that both use a group's words must use the same ones ("with" and "without").
_FLIP_GROUPS = (
    ("with", "without"),
    ("including", "excluding", "except", "exclude", "include"),
    ("encode", "decode", "encoding", "decoding", "encrypt", "decrypt"),
    ("add", "remove", "delete", "insert", "append", "pop", "discard"),
    ("min", "max", "minimum", "maximum", "smallest", "largest", "lowest", "highest"),
    ("before", "after"),
    ("first", "last"),
    ("start", "stop", "end", "begin", "setup", "teardown", "cleanup"),
    ("open", "close"),
    ("read", "write"),
    ("upload", "download"),
    ("compress", "decompress"),
    ("serialize", "deserialize"),
    ("lock", "unlock"),
    ("increase", "decrease", "raise", "lower"),
    ("enable", "disable"),
    ("import", "export"),
    ("sync", "async", "synchronous", "asynchronous"),
    ("upper", "uppercase", "lowercase"),
    ("ascending", "descending"),
    ("daemon", "non"),
    ("floor", "ceil", "trunc", "round"),
    ("copy", "move"),
    ("join", "split"),
    ("pack", "unpack"),
    ("allow", "deny", "block"),
    ("upgrade", "downgrade", "rollback", "roll"),
    ("global", "local"),
    ("utc", "local"),
)
_FLIPS = {word: i for i, group in enumerate(_FLIP_GROUPS) for word in group}
_UNITS = frozenset(
    """ms sec secs second seconds millisecond milliseconds microsecond microseconds
    nanosecond nanoseconds minute minutes hour hours day days week weeks month months year
    years byte bytes kb kib mb mib gb gib tb tib bit bits kbps mbps gbps celsius fahrenheit
    kelvin km kilometre kilometres kilometer kilometers mile miles metre metres meter meters
    cm mm inch inches foot feet kg kilogram kilograms pound pounds percent percentage cpu
    memory usd eur gbp dollars euros""".split()  # noqa: SIM905
)
# Names a question uses in lower case that change its answer when swapped: modules, tools.
_NAMES = frozenset(sys.stdlib_module_names - {"string", "time", "code", "this", "types"}) | (
    frozenset(
        """pandas numpy requests django flask fastapi pytest kubectl helm docker redis
        postgres postgresql mysql nginx envoy linux windows macos bash zsh git certbot
        lambda deque tuple list dict set""".split()  # noqa: SIM905
    )
)


_MONTHS_DAYS = frozenset(
    """january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday today yesterday tomorrow daily
    weekly monthly yearly hourly am pm next previous current""".split()  # noqa: SIM905
)
_QUALIFIERS = frozenset({"without", "except", "excluding", "instead", "unless", "only"})
# Words a question may add, drop or swap without changing what it asks.
_FILLER = frozenset(
    """how do does did i can could should would what whats what's is are was the a an to of
    in on for my me please tell way you your using use with from by this that it its best
    there some any python s way easiest simple simplest quick quickly correct right""".split()  # noqa: SIM905
)
_SYNONYMS = {
    "dictionary": "dict",
    "delete": "remove",
    "make": "create",
    "build": "create",
    "folder": "directory",
    "dir": "directory",
    "temp": "temporary",
    "get": "find",
    "obtain": "find",
    "fetch": "find",
    "show": "find",
    "see": "find",
    "convert": "parse",
    "turn": "parse",
    "element": "item",
    "elements": "items",
    "k8s": "kubernetes",
    "regex": "regular",
    "cert": "certificate",
}


@dataclass(frozen=True)
class Constraints:
    """What a question says that embeddings blur; two questions must agree on it."""

    words: tuple[str, ...]  # lower case, in order
    numbers: frozenset[str]
    negations: frozenset[str]  # not, without, except, ...
    keys: frozenset[str]  # names, units, dates, flip words: what a swap changes

    def agrees(self, other: Constraints) -> bool:
        """The same numbers and negations; no key word of one swapped for another key word
        (a question may add or drop one, as a paraphrase adds "in Python"); the key words
        both use in the same order; and no minimal edit (_one_swap)."""
        if self.numbers != other.numbers or self.negations != other.negations:
            return False
        mine, theirs = set(self.words), set(other.words)
        if (self.keys - theirs) and (other.keys - mine):
            return False
        shared = self.keys & other.keys
        if [w for w in self.words if w in shared] != _dedup(w for w in other.words if w in shared):
            return False
        if any(
            (d, after, before) in _directions(other.words)
            for d, before, after in _directions(self.words)
        ):
            return False  # the same words, the other way round
        return not _one_swap(self.words, other.words)


def _dedup(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


def _content(words: Sequence[str]) -> list[str]:
    return [_SYNONYMS.get(w, w) for w in words if w not in _FILLER]


def _one_swap(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether `b` is `a` with one edit of at most two content words that is no typo: a
    word swapped for another ("yesterday" for "tomorrow"), or one added or dropped
    ("nautical mile" for "mile"): the edits that turn one question into another."""
    x, y = _content(a), _content(b)
    edits = [
        op for op in SequenceMatcher(None, x, y, autojunk=False).get_opcodes() if op[0] != "equal"
    ]
    if len(edits) != 1 or not x or not y:
        return False
    kind, i1, i2, j1, j2 = edits[0]
    old, new = x[i1:i2], y[j1:j2]
    if kind != "replace":
        return len(old) + len(new) == 1
    if max(len(old), len(new)) > 2:
        return False
    typo = len(old) == len(new) and all(_typo(p, q) for p, q in zip(old, new, strict=True))
    return not typo


def _typo(p: str, q: str) -> bool:
    """One letter added, dropped, changed, or two swapped (optimal string alignment)."""
    if abs(len(p) - len(q)) > 1 or min(len(p), len(q)) < 3:
        return False
    rows = [list(range(len(q) + 1))]
    for i, pc in enumerate(p, 1):
        row = [i] + [0] * len(q)
        for j, qc in enumerate(q, 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (pc != qc))
            if i > 1 and j > 1 and pc == q[j - 2] and p[i - 2] == qc:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1] <= 1


_DIRECTIONS = frozenset({"to", "into", "from", "instead", "than", "vs", "versus"})


def _directions(words: Sequence[str]) -> set[tuple[str, str, str]]:
    """(direction word, content word before it, content word after it), for each of the
    question's direction words: "file instead of console" is (instead, file, console)."""
    found = set()
    for i, word in enumerate(words):
        if word in _DIRECTIONS:
            before = next((w for w in reversed(words[:i]) if w not in _FILLER), "")
            after = next((w for w in words[i + 1 :] if w not in _FILLER | _DIRECTIONS), "")
            found.add((word, before, after))
    return found


def constraints(question: str) -> Constraints:
    """What `question` says that an embedding blurs (Constraints)."""
    text = question.replace("\u2019", "'").replace("n't", " not").replace("non-", "non ")
    raw = _WORD.findall(text)
    words = tuple(w.lower().rstrip(".") for w in raw)
    keys = {
        w
        for i, (r, w) in enumerate(zip(raw, words, strict=True))
        if "." in w
        or "_" in w
        or w.endswith("()")
        or w in _NAMES
        or w in _UNITS
        or w in _MONTHS_DAYS
        or w in _FLIPS
        or (i > 0 and r[:1].isupper() and w != "i")
    }
    return Constraints(
        words=words,
        numbers=frozenset(_NUMBER.findall(text)),
        negations=frozenset(w for w in words if w in _NEGATIONS or w in _QUALIFIERS),
        keys=frozenset(keys),
    )


@dataclass(frozen=True)
class Match(Generic[V]):
    value: V
    similarity: float
    trace_id: str  # the request whose answer this is


@dataclass
class _Entry(Generic[V]):
    vector: np.ndarray
    constraints: Constraints
    value: V
    trace_id: str
    stored_at: float


class SemanticCache(Generic[V]):
    """At most `entries` answers, each for `ttl_s`; a hit needs cosine >= `threshold`."""

    def __init__(
        self,
        entries: int,
        ttl_s: float,
        threshold: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = entries
        self._ttl_s = ttl_s
        self.threshold = threshold
        self._clock = clock
        self._entries: OrderedDict[tuple[Hashable, str], _Entry[V]] = OrderedDict()
        self._scopes: dict[Hashable, set[str]] = {}

    def get(self, scope: Hashable, question: str, vector: np.ndarray) -> Match[V] | None:
        """The closest fresh entry of `scope` that `question` (embedded as `vector`, unit
        length) may take, if any; the entry becomes the most recently used."""
        keys = self._scopes.get(scope)
        if not keys:
            return None
        now, wanted = self._clock(), constraints(question)
        best: tuple[float, tuple[Hashable, str]] | None = None
        for text in list(keys):
            key = (scope, text)
            entry = self._entries[key]
            if now - entry.stored_at > self._ttl_s:
                self._drop(key)
                continue
            similarity = float(np.dot(entry.vector, vector))
            if similarity < self.threshold or not entry.constraints.agrees(wanted):
                continue
            if best is None or similarity > best[0]:
                best = (similarity, key)
        if best is None:
            return None
        entry = self._entries[best[1]]
        self._entries.move_to_end(best[1])
        return Match(entry.value, best[0], entry.trace_id)

    def put(
        self, scope: Hashable, question: str, vector: np.ndarray, value: V, trace_id: str
    ) -> None:
        if self._max == 0:
            return
        key = (scope, question)
        entry = _Entry(vector, constraints(question), value, trace_id, self._clock())
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._scopes.setdefault(scope, set()).add(question)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[Hashable, str]) -> None:
        del self._entries[key]
        scope, question = key
        keys = self._scopes[scope]
        keys.discard(question)
        if not keys:
            del self._scopes[scope]
