"""Secrets and PII out of text: one function that every sink and the prompt use.

`redact(text)` replaces each span below with a marker naming its kind, e.g.
"[REDACTED:email]"; around a named value (`api_key=`, `Authorization:`) only the value goes.

Kinds and the shapes caught:
- `private_key`: a PEM or OpenSSH block, `-----BEGIN ... PRIVATE KEY-----` to its END line
  (or to the end of the text, when cut).
- `jwt`: `eyJ<header>.eyJ<payload>.<signature>`.
- `authorization`: the value after `Authorization:`/`Proxy-Authorization:` (whatever its
  scheme), and after `Bearer `.
- `secret`: the value (4 characters or more) of a named secret, `NAME=value`,
  `NAME: value`, `"NAME": "value"`, `('NAME', 'value')`, where NAME ends in api_key,
  apikey, access_key, secret_key, client_secret, secret, token (access_token, ...),
  password, passwd, pwd, passphrase or credentials (`OPENAI_API_KEY=`, `x-api-key:`,
  `db_password=`, ...).
- `credentials`: the `user:password` of a URL (`https://user:pw@host/`).
- `ragmesh_key`: `rmk-<id>-<secret>` (services/control/registry.py).
- `api_key`: providers' keys by their prefixes (the shapes of Yelp's detect-secrets
  plugins and the vendors' docs; detect-secrets itself scans files, not strings, and
  reports no spans): OpenAI and Anthropic `sk-` and 20 or more characters with a digit,
  Stripe `sk_live_`/`rk_test_`, AWS access key ids `AKIA`/`ASIA`/..., GitHub
  `ghp_`/`gho_`/.../`github_pat_`, GitLab `glpat-`/..., Slack `xox?-`, Google `AIza`,
  Hugging Face `hf_`, SendGrid `SG.`, npm `npm_`, PyPI `pypi-AgE`.
- `email`: `local@domain.tld`, the top-level domain alphabetic (`pkg@1.2.3` is no address).
- `iban`: a country code, two check digits and 11 to 30 letters or digits (groups of four
  may be spaced), whose ISO 7064 mod-97 check holds.
- `card`: 13 to 19 digits, run together or grouped 4-4-4-4(-x) or 4-6-5 by spaces or
  dashes, first digit 2 to 6 (the networks' ranges), whose Luhn check holds.
- `phone`: what libphonenumber's PhoneNumberMatcher (the `phonenumbers` package) finds
  valid: any number written with `+` and its country code, and numbers in the national
  formats of PHONE_REGIONS when written with separators (`(415) 555-0123`,
  `020 7946 0958`); also when another number follows (`+44 20 7946 0958 2 times`).

Deliberately not caught, to keep ordinary text whole: a bare national number without `+`
or separators (`4155550123`: 44% of 10-digit ids are valid US numbers); national formats
of other regions; a secret in prose without its name (`the password is hunter2`); a named
value after an unquoted `NAME:` that is one lower-case word (`token: expired`), or of
fewer than 4 characters; `Basic` credentials without their header's name; keys of
providers not listed; card numbers failing Luhn or outside the 2-6 ranges (order numbers,
timestamps); numbers of fewer than 7 digits; IPv4 addresses and dates, never phones;
phone numbers of a text past its first MAX_PHONE_TRIES tries (a bound on its cost).

Cost: each kind runs only when a cheap hint for it is in the text (an "@", a run of 7
digits, a prefix, a name), so a line with none of them costs a few microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers

# National formats recognised without "+"; numbers with "+" are found in every region.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return digits[0] in "23456" and _luhn(digits)


def _iban(text: str) -> bool:
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _random(value: str) -> bool:
    """A provider key's body has letters and digits: not a word such as `sk-learn-...`."""
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


@dataclass(frozen=True)
class _Kind:
    """`pattern` runs when one of `needles` is in the text (in its lower case when
    `lowered`) and `near` (a finer test, if any) finds something there; with no needles,
    when the text has a run of 7 digits. Group "v", when present, is the part replaced;
    `check` vets the replaced part."""

    name: str
    pattern: re.Pattern[str]
    needles: tuple[str, ...] = ()
    lowered: bool = False
    near: re.Pattern[str] | None = None
    check: Callable[[str], bool] | None = None


_NAMES = (
    r"api[_-]?key|apikey|access[_-]?key|secret[_-]?(?:access[_-]?)?key|private[_-]?key"
    r"|client[_-]?secret|secret|(?:access|auth|refresh|id|session|bearer)[_-]?token|token"
    r"|password|passwd|pwd|passphrase|credentials?"
)
_VALUE_CHARS = r"[^\s\"'&,;()]"
_KINDS = (
    _Kind(
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
        ("PRIVATE KEY",),
    ),
    _Kind("jwt", re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"), ("eyJ",)),
    _Kind(
        "authorization",
        re.compile(
            r"(?i:\b(?:proxy-)?authorization\b"
            r"(?:[\"']?\s*[:=]\s*[\"']?|[\"']\s*,\s*[\"'])"
            r"(?:(?:bearer|basic|digest|token|apikey)\s+)?)"
            r"(?P<v>(?!\[REDACTED)[\w.~+/=:-]{8,})"
        ),
        ("authorization",),
        lowered=True,
    ),
    _Kind(  # a bearer token without its header: a random value only ("bearer instruments")
        "authorization",
        re.compile(r"(?i:\bbearer\s+)(?P<v>(?!\[REDACTED)[\w.~+/=-]{12,})"),
        ("bearer",),
        lowered=True,
        check=_random,
    ),
    _Kind(  # after an unquoted name and ":", not one lower-case word ("token: expired");
        # nor a literal or a call (`token=None`, `token = attach(context)`)
        "secret",
        re.compile(
            rf"(?i:(?<![a-z0-9])(?:{_NAMES})\b)"
            r"(?:\s*=\s*[\"']?|[\"']\s*(?:[:=]\s*[\"']?|,\s*[\"'])"
            rf"|\s*:\s*(?={_VALUE_CHARS}*[^a-z\s\"'&,;]))"
            r"(?!-----|\[REDACTED|(?:None|null|True|False|true|false)\b)"
            rf"(?P<v>{_VALUE_CHARS}{{4,}}+)(?!\()"
        ),
        ("key", "secret", "token", "pass", "pwd", "credential"),
        lowered=True,
        near=re.compile(r"(?:key|secret|token|pass|pwd|credential)\w*[\"']?\s*[:=,]"),
    ),
    _Kind("credentials", re.compile(r"(?<=://)(?P<v>[^\s/:@]++:[^\s/@]++)(?=@)"), ("://",)),
    _Kind("ragmesh_key", re.compile(r"\brmk-[A-Za-z0-9]+-[\w-]{4,}"), ("rmk-",)),
    _Kind(
        "api_key",
        re.compile(
            r"\b(?:sk-[\w-]{20,}"
            r"|[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"
            r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{22,}"
            r"|gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-[\w-]{20,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}"
            r"|AIza[\w-]{35}"
            r"|hf_[A-Za-z0-9]{30,}"
            r"|SG\.[\w-]{22}\.[\w-]{43}"
            r"|npm_[A-Za-z0-9]{36}"
            r"|pypi-AgE[\w-]{50,})"
        ),
        (
            *("sk-", "k_live_", "k_test_", "AKIA", "ASIA", "ABIA", "ACCA", "A3T", "github_pat_"),
            *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "gldt-", "glft-", "glsoat-"),
            *("glrt-", "glcbt-", "glimt-", "glptt-", "glagent-", "gloas-", "xox", "AIza"),
            *("hf_", "SG.", "npm_", "pypi-AgE"),
        ),
        check=lambda key: not key.startswith("sk-") or _random(key[3:]),
    ),
    _Kind(
        "email",
        re.compile(
            r"(?<![\w.%+-])[\w.%+-]++@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
        ),
        ("@",),
    ),
    _Kind(
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        check=_iban,
    ),
    _Kind(
        "card",
        re.compile(  # 4-4-4-4(-1..3), Amex's 4-6-5 (or 4-6-4), or no separators
            r"(?<![\w-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
            r"|\d{4}([ -])\d{6}\2\d{4,5}|\d{13,19})(?![\w-])"
        ),
        check=_card,
    ),
)


def _any_of(needles: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(n) for n in needles))


# One search each for all the kinds' needles: a line with none costs about a microsecond.
_NEEDLES = _any_of([n for k in _KINDS if not k.lowered for n in k.needles])
_LOWER_NEEDLES = _any_of([n for k in _KINDS if k.lowered for n in k.needles])
# A run of 7 digits, separators between them allowed: first the quick necessary test.
_DIGIT_RUN = re.compile(r"\d[\d\s().\-/]{6,}")
_SEVEN_DIGITS = re.compile(r"\d(?:[\s().\-/]{0,2}\d){6}")


def _numbers(text: str) -> bool:
    return _DIGIT_RUN.search(text) is not None and _SEVEN_DIGITS.search(text) is not None


def _replace(kind: _Kind) -> Callable[[re.Match[str]], str]:
    named = "v" in kind.pattern.groupindex

    def replace(match: re.Match[str]) -> str:
        group = "v" if named and match.group("v") is not None else 0
        if kind.check is not None and not kind.check(match.group(group)):
            return match.group(0)
        start, end = match.start(group) - match.start(), match.end(group) - match.start()
        whole = match.group(0)
        return whole[:start] + marker(kind.name) + whole[end:]

    return replace


_REPLACERS = tuple((kind, _replace(kind)) for kind in _KINDS)
# Phone-shaped: a run of digits and separators, with 7 digits or more; it may hold several
# numbers, or a number and a date ("call +44 20 7946 0958 2 times" stops libphonenumber's
# matcher on the whole text), so the matcher reads windows of its groups, longest first.
_PHONE_SHAPE = re.compile(r"\+?\(?\d[\d\s().\-/]{5,}\d\)?")
_GROUP = re.compile(r"\+?\(?\d+\)?")
_NOT_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{4}([-/.])\d{1,2}\1\d{1,2}(?:[ T]\d{1,2})?")
_COUNTRY = re.compile(r"\+\d{1,3}\s")
MAX_PHONE_GROUPS = 7  # "+1 (415) 555-0123", "+33 1 23 45 67 89"
# A try costs 0.1 to 0.5 ms (the matcher, in one region or each): a text gets this many, so
# that no text costs more than about 0.1 s; numbers past them are left.
MAX_PHONE_TRIES = 256


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _phone_written(window: str) -> bool:
    """Written as a phone number is: with "+" or separators (a bare national number is
    not caught), on one line, single-spaced (not columns of a table), dots between all
    its groups or none ("415.555.0123", not "194.36 1634.48"); not an IPv4 address or a
    date."""
    body = _COUNTRY.sub("", window, count=1)
    return (
        not window.isdigit()
        and "\n" not in window
        and "  " not in window
        and ("." not in body or body.replace(".", "").isdigit())
        and not _NOT_PHONE.fullmatch(window)
    )


def _a_phone(window: str) -> bool:
    """Whether `window`, whole, is a valid number: with "+", in any region; else in a
    national format of PHONE_REGIONS."""
    regions = PHONE_REGIONS[:1] if window.startswith("+") else PHONE_REGIONS
    for region in regions:
        for found in phonenumbers.PhoneNumberMatcher(window, region):
            if found.start == 0 and found.end == len(window):
                return True
    return False


def _phone_spans(text: str) -> list[tuple[int, int]]:
    """The spans of phone numbers: windows of a shape's groups that start and end where a
    word would (not inside "2024-05-01"), longest first, at most MAX_PHONE_TRIES tried."""
    spans, tries = [], MAX_PHONE_TRIES
    for shape in _PHONE_SHAPE.finditer(text):
        if _digits(shape.group()) < 7:
            continue
        groups = [m.span() for m in _GROUP.finditer(text, shape.start(), shape.end())]
        starts = {
            i for i, (a, _) in enumerate(groups) if a == shape.start() or text[a - 1].isspace()
        }
        ends = {j for j, (_, b) in enumerate(groups, 1) if b == shape.end() or text[b].isspace()}
        i = 0
        while i < len(groups) and tries > 0:
            found = 0
            for j in range(min(len(groups), i + MAX_PHONE_GROUPS), i, -1):
                window = text[groups[i][0] : groups[j - 1][1]]
                digits = _digits(window)
                if i not in starts or digits < 7:
                    break  # shorter windows have fewer digits still
                if j not in ends or digits > 15 or not _phone_written(window):
                    continue
                tries -= 1
                if _a_phone(window):
                    found = j
                    break
            if found:
                spans.append((groups[i][0], groups[found - 1][1]))
            i = found or i + 1
    return spans


def _phones(text: str) -> str:
    pieces, at = [], 0
    for start, end in _phone_spans(text):
        pieces += [text[at:start], marker("phone")]
        at = end
    return "".join(pieces) + text[at:]


def redact(text: str) -> str:
    """`text` with every secret and PII span replaced by "[REDACTED:<kind>]"."""
    lowered = text.lower()
    numbers = _numbers(text)
    if not numbers and not _NEEDLES.search(text) and not _LOWER_NEEDLES.search(lowered):
        return text
    for kind, replace in _REPLACERS:
        if kind.needles:
            haystack = lowered if kind.lowered else text
            if not any(n in haystack for n in kind.needles):
                continue
            if kind.near is not None and not kind.near.search(haystack):
                continue
        elif not numbers:
            continue
        text = kind.pattern.sub(replace, text)
    if numbers:
        text = _phones(text)
    return text
