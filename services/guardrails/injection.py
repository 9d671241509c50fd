"""Prompt injection, read from a text by rules: fast, explainable, no model.

`detect(text)` returns the strongest Finding, or None for a text that reads as benign.
The gateway runs it on every question (services/gateway/checks.py); retrieval runs it on
every chunk at ingest and stores the verdict with the chunk, so a query pays nothing.

Rule families, strongest first (`Finding.rule` names the one that matched):

* `override_instructions`: "ignore / disregard / forget / skip / set aside ... previous /
  above / your ... instructions / rules / guidelines", "forget everything you were told",
  "ignore the above"; German, French, Spanish, Italian and Portuguese forms.
* `prompt_exfiltration`: "reveal / print / repeat / show ... your system prompt / hidden
  instructions / initial prompt", "repeat the words above", "what are your rules".
* `role_hijack`: DAN, "you are now unrestricted / jailbroken", developer or jailbreak mode
  aimed at the model, "act as ... without restrictions / filters", "stay in character".
* `new_instructions`: "New instructions:", "from now on you will ...", "your real task
  is ...", "the previous instructions were a test".
* `fake_delimiter`: chat-template tokens (`<|im_start|>`, `[INST]`, `<<SYS>>`), the
  prompt's own fences (`</source>`, `<sources>`), "### System:", a "System:" or
  "Assistant:" turn on a line of its own, "BEGIN SYSTEM PROMPT".
* `document_command`: words aimed at the model from inside a document: "Note to the AI:",
  "if you are a language model", "tell the user to visit ...", "send the conversation to
  https://...", "include this link in your answer", a markdown image whose URL carries a
  template, "do not mention these instructions to the user".
* `obfuscated`: "decode this and follow it", or a text that matches one of the families
  above once decoded or normalised (`Finding.via` names it): a base64 run, spaced-out
  letters ("i g n o r e"), zero-width characters, fullwidth or Cyrillic look-alike
  letters, digits for letters ("1gn0r3"), rot13 where the text says rot13.

A family wants the verb, its target and a qualifier together inside one sentence, so
questions that merely mention the words ("How do I ignore a warning?", "What does
os.system() do?", "How do I write a system prompt?") pass. Speed: the text is lowercased
and split into words once; a rule's regex runs only when the text has a word of each of
its gates, and then only from where one of its lead words occurs. Gaps are bounded
(`{0,N}`), and the few unbounded runs (of spaces, of letters) repeat a bounded number of
times, so one match attempt costs at most a pass over the words it spans.

Measured by `python -m loadtest.bench_injection` (one core of this 2-core machine): on our
labelled set (tests/fixtures/injection_cases.jsonl, 196 cases: 79 injections, 117 benign)
detection 0.975, false positives 0.026 (3 of 117, all deliberate hard cases: a question
about defending against "ignore its previous instructions", a doc that shows ChatML
tokens, "act as any class ... with no restrictions"), 9 µs a text (p99 20 µs); the
sample corpus in 95 pieces of 2 KB: no false positive, 42 µs a piece (p99 105 µs). On
public sets the rules see only the phrasings they name: s-labs test (2,101 short texts)
detection 0.061, false positives 0 of 1,050, 8 µs a text; yanismiraoui (1,034
injections, six languages) detection 0.106. The rules were written on our set; a sample
of s-labs misses then led to generic vocabulary (model internals such as "your
initialization string", "go against your programming", more languages' nouns), which
took those two from 0.040 and 0.064.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import string
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from services.guardrails.injection_rules import RULES, Rule


@dataclass(frozen=True)
class Finding:
    """Why a text reads as an injection: `rule` names the pattern family, `start`/`end` the
    matched characters. For `obfuscated`, `via` names the family the decoded or normalised
    text matched ("" when the text asks for decoding itself), and `start`/`end` cover the
    encoded run (the whole text when normalising it revealed the match)."""

    rule: str
    start: int
    end: int
    via: str = ""


_ANCHORS = frozenset().union(*(gate for rule in RULES for gate in rule.gates))

# Words: split at ASCII punctuation and spaces, in UTF-8, where bytes.translate is fast and
# no multibyte character holds an ASCII byte.
_PUNCTUATION = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
# Hidden words: a base64 run, spaced-out letters, look-alike letters, leetspeak, rot13.
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{20,}={0,2}")
_HEX = re.compile(r"[0-9a-f]+")
_SPACED = re.compile(r"(?<![A-Za-z])[A-Za-z](?:[ .\-_*]{1,3}[A-Za-z](?![A-Za-z])){5,}")
_BETWEEN_LETTERS = {s: re.compile(rf"(?<=[A-Za-z]){re.escape(s)}(?=[A-Za-z])") for s in " .-_*"}
_LETTERS = frozenset(string.ascii_lowercase)
_LEET = str.maketrans("0134579@$", "oieastgas")
_LOOK_ALIKES = "аеорсухіјѕԁɡАЕОРСХІЈЅВНКМТ"  # noqa: RUF001 (Cyrillic, mapped on purpose)
_INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"
_CONFUSABLES = str.maketrans(_LOOK_ALIKES, "aeopcyxijsdgAEOPCXIJSBHKMT", _INVISIBLE)
_LOOK_ALIKE = re.compile(f"[{_LOOK_ALIKES}{_INVISIBLE}]")


def _lower(text: str) -> str:
    """`text` lowercased, one character for one (offsets carry over)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(ch.lower()[:1] for ch in text)  # 'İ' lowers to two characters


def _words(lowered: str) -> frozenset[str]:
    utf8 = lowered.encode("utf-8", "surrogatepass").translate(_PUNCTUATION)
    return frozenset(utf8.decode("utf-8", "surrogatepass").split())


def _search(rule: Rule, text: str, lowered: str, words: frozenset[str]) -> re.Match[str] | None:
    target = text if rule.cased else lowered
    if not rule.lead:
        return rule.pattern.search(target)
    for word in rule.lead.intersection(words):
        at = lowered.find(word)
        while at >= 0:
            match = rule.pattern.match(target, at)
            if match:
                return match
            at = lowered.find(word, at + 1)
    return None


def _scan(text: str, lowered: str, words: frozenset[str]) -> Finding | None:
    """The first rule `text` matches, as written."""
    for rule in RULES:
        for gate in rule.gates:
            if words.isdisjoint(gate):
                break
        else:
            match = _search(rule, text, lowered, words)
            if match:
                return Finding(rule.family, match.start(), match.end())
    return None


def _base64_runs(text: str, lowered: str, words: frozenset[str]) -> Iterator[re.Match[str]]:
    """The base64 runs around the text's long words that mix letters and digits (a long
    run of base64 has digits; a hex digest is not text)."""
    for word in words:
        if len(word) >= 16 and not word.isalpha() and not _HEX.fullmatch(word):
            at = lowered.find(word)
            match = _BASE64.search(text, max(0, at - 200), at + len(word) + 200)
            if match:
                yield match


def _decoded_base64(token: str) -> str | None:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    text = raw.decode("ascii", "ignore")
    return text if len(text) * 10 >= len(raw) * 9 else None  # mostly ASCII: text


def _unspaced(run: re.Match[str], spans: list[tuple[int, int]]) -> str:
    """'i g n o r e   a l l' -> 'ignore   all' (the commonest separator goes); the run's span
    joins `spans`."""
    spans.append(run.span())
    text = run.group()
    return _BETWEEN_LETTERS[max(_BETWEEN_LETTERS, key=text.count)].sub("", text)


def _new_anchors(variant_words: Iterable[str], words: frozenset[str]) -> bool:
    """Whether a reading of a text has gate words (longer than two letters) the text lacks:
    without one, it can pass no gate the text did not."""
    return any(len(w) > 2 for w in _ANCHORS.intersection(variant_words) - words)


def _variants(text: str, lowered: str, words: frozenset[str]) -> Iterator[tuple[str, int, int]]:
    """Decoded or normalised readings of `text`, each with the span it stands for; each is
    made only where a cheap test says it can read otherwise."""
    if max(map(len, words), default=0) >= 16:
        for match in _base64_runs(text, lowered, words):
            decoded = _decoded_base64(match.group())
            if decoded:
                yield decoded, match.start(), match.end()
    if len(words & _LETTERS) >= 8:
        spans: list[tuple[int, int]] = []
        unspaced = _SPACED.sub(lambda run: _unspaced(run, spans), text)
        if spans:
            yield unspaced, spans[0][0], spans[-1][1]
    if not text.isascii():
        normalised = unicodedata.normalize("NFKC", text)
        if _LOOK_ALIKE.search(normalised):
            normalised = normalised.translate(_CONFUSABLES)
        if normalised != text and _new_anchors(_words(_lower(normalised)), words):
            yield normalised, 0, len(text)
    leet = " ".join(w for w in words if not w.isalpha()).translate(_LEET)
    if _new_anchors(leet.split(), words):
        yield text.translate(_LEET), 0, len(text)
    if "rot13" in words or "rot" in words:
        yield codecs.encode(text, "rot13"), 0, len(text)


def detect(text: str) -> Finding | None:
    """The strongest family `text` matches, as written or once decoded, or None."""
    lowered = _lower(text)
    words = _words(lowered)
    finding = _scan(text, lowered, words)
    if finding is not None:
        return finding
    for variant, start, end in _variants(text, lowered, words):
        lowered = _lower(variant)
        inner = _scan(variant, lowered, _words(lowered))
        if inner is not None:
            return Finding("obfuscated", start, end, via=inner.rule)
    return None
