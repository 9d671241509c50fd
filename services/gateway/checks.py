"""The guardrails a generation passes, in request order: the question, its sources, the
answer. Each decision is a Guardrail, counted in the metrics by check, verdict and action;
the core puts them in the response and the trace. A tenant's policy (services/control/
policy.py `Guardrails`) says what each finding gets.

In: `with_schema` checks a request's JSON schema and asks the model for JSON where one is
given; `check_injection` refuses a question that reads as a prompt injection (policy
"block": INVALID_ARGUMENT with ErrorInfo reason PROMPT_INJECTION, before any charge) or
flags it;
`screen_sources` drops or fences the sources retrieval flagged at ingest; `redact_inputs`
takes PII and secrets out of what a model reads. Out: `grounding` scores the answer against
its sources; `check_json` refuses an answer that is not one JSON value of the schema
(ABORTED, reason OUTPUT_SCHEMA_VIOLATION).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from referencing.jsonschema import DRAFT202012

from services.common.errors import Aborted, InvalidArgument
from services.common.redaction import redact
from services.contract.prompt import Source, Turn
from services.control.policy import Guardrails
from services.gateway import metrics
from services.gateway.retrieval_client import Chunk
from services.gateway.values import GenerateParams, Guardrail
from services.guardrails import injection
from services.guardrails.grounding import groundedness

OUTPUT_CHECKS = frozenset({"citations", "groundedness", "json_schema"})
PROMPT_INJECTION = "PROMPT_INJECTION"
OUTPUT_SCHEMA_VIOLATION = "OUTPUT_SCHEMA_VIOLATION"
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)
_JSON_TURN = "Reply with one JSON value and nothing else. It must match this JSON Schema: "


def record(decisions: Iterable[Guardrail]) -> None:
    """Counts each decision in ragmesh_guardrail_decisions_total."""
    for d in decisions:
        metrics.GUARDRAILS.labels(d.check, d.verdict, d.action).inc()
        if d.check == "groundedness" and d.score is not None:
            metrics.GROUNDEDNESS.observe(d.score)


def with_schema(params: GenerateParams) -> GenerateParams:
    """The request as the model will be asked it: a JSON schema adds a system turn asking
    for one JSON value of it. Raises InvalidArgument naming `json_schema` for a schema that
    is not one (JSON Schema 2020-12), refers outside itself or to nothing, or to itself
    without end."""
    if params.json_schema is None:
        return params
    schema = params.json_schema
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        resolver = _registry(schema).resolver()
        for ref in _refs(schema):
            if not ref.startswith("#"):
                raise InvalidArgument(
                    f"json_schema: $ref {ref[:100]!r} points outside the schema; only "
                    "references inside it ('#...') are followed",
                    field="json_schema",
                )
            resolver.lookup(ref)
        _validator(schema).is_valid(None)  # a schema referring to itself without end recurses
    except jsonschema.SchemaError as exc:
        raise InvalidArgument(
            f"json_schema: not a JSON Schema (2020-12): {exc.message[:200]}", field="json_schema"
        ) from None
    except (referencing.exceptions.Unresolvable, RecursionError) as exc:
        raise InvalidArgument(f"json_schema: {_unusable(exc)}", field="json_schema") from None
    turn = Turn("system", _JSON_TURN + json.dumps(schema, sort_keys=True))
    return dataclasses.replace(params, history=(*params.history, turn))


def _registry(schema: Mapping[str, Any]) -> referencing.Registry[Any]:
    """`schema` alone, and no retrieval: jsonschema's default registry fetches a $ref's URL
    (blocking the event loop, on a host the client names)."""
    resource = referencing.Resource.from_contents(schema, default_specification=DRAFT202012)
    names = ["", resource.id() or ""]  # its own $id too: "#..." resolves against it
    return referencing.Registry().with_resources((name, resource) for name in names)


def _validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator whose references resolve inside `schema` alone."""
    return jsonschema.Draft202012Validator(schema, registry=_registry(schema))


def _refs(node: object) -> Iterator[str]:
    """Every $ref and $dynamicRef in a schema, at any depth."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _unusable(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "the schema refers to itself without end"
    return f"a reference resolves to nothing ({str(exc)[:100]})"


def check_injection(params: GenerateParams, rails: Guardrails) -> list[Guardrail]:
    """The prompt-injection decision on the client's own words. Where the policy blocks,
    raises InvalidArgument naming `query` or `history[i].content` with reason
    PROMPT_INJECTION, counted here. Call it after the request's size checks: reading a
    text costs time in its length."""
    decisions = []
    if rails.prompt_injection != "allow":
        found = _injection(params)
        if found is None:
            decisions.append(Guardrail("prompt_injection", "pass", "none"))
        else:
            field, rule = found
            decision = Guardrail("prompt_injection", "detected", rails.prompt_injection, rule)
            if rails.prompt_injection == "block":
                record([decision])
                raise InvalidArgument(
                    f"{field}: reads as a prompt injection ({rule}); this tenant's policy "
                    f"refuses it",
                    field=field,
                    reason=PROMPT_INJECTION,
                )
            decisions.append(decision)
    return decisions


def _injection(params: GenerateParams) -> tuple[str, str] | None:
    """(field, rule) of the first of the client's own words that reads as an injection:
    the question, then the user turns (system turns are the application's own)."""
    found = injection.detect(params.query)
    if found is not None:
        return "query", found.rule
    for i, turn in enumerate(params.history):
        if turn.role == "user" and (found := injection.detect(turn.content)) is not None:
            return f"history[{i}].content", found.rule
    return None


def screen_sources(
    chunks: Sequence[Chunk], rails: Guardrails
) -> tuple[list[Chunk], list[Source], list[Guardrail]]:
    """The chunks the prompt may show, their Sources (a flagged one fenced as suspect where
    the policy says "fence"), and the decision, if retrieval flagged any at ingest."""
    if not chunks:
        return [], [], []
    flagged = [c for c in chunks if c.injection]
    action = rails.document_injection
    kept = [c for c in chunks if not c.injection] if action == "drop" else list(chunks)
    sources = [
        Source(
            c.document_id,
            c.chunk_id,
            c.text,
            suspect=bool(c.injection) and action == "fence",
            page=c.page,
            heading=c.heading,
        )
        for c in kept
    ]
    if not flagged:
        return kept, sources, [Guardrail("document_injection", "pass", "none")]
    rules = ", ".join(sorted({c.injection for c in flagged}))
    detail = f"{len(flagged)} of {len(chunks)} sources flagged at ingest ({rules})"
    return kept, sources, [Guardrail("document_injection", "detected", action, detail)]


def redact_inputs(
    params: GenerateParams, sources: Sequence[Source], rails: Guardrails
) -> tuple[GenerateParams, list[Source], list[Guardrail]]:
    """Where the policy asks for it, the question, the conversation and the sources with
    every secret and PII span redacted (services/common/redaction.py)."""
    if not rails.redact_pii:
        return params, list(sources), []
    query = redact(params.query)
    history = tuple(Turn(t.role, redact(t.content)) for t in params.history)
    redacted = [dataclasses.replace(s, text=redact(s.text)) for s in sources]
    changed = (
        (query != params.query)
        + sum(a != b for a, b in zip(history, params.history, strict=True))
        + sum(a.text != b.text for a, b in zip(redacted, sources, strict=True))
    )
    if not changed:
        return params, list(sources), [Guardrail("pii", "pass", "none")]
    params = dataclasses.replace(params, query=query, history=history)
    decision = Guardrail("pii", "redacted", "redact", f"{changed} texts redacted")
    return params, redacted, [decision]


def grounding(answer: str, sources: Sequence[Source], rails: Guardrails) -> Guardrail | None:
    """The groundedness decision on an answer from `sources`: None without sources or
    claims. Below the policy's floor the verdict is "ungrounded" and the action the policy's
    (the core replaces the answer where it says "replace")."""
    if not sources:
        return None
    found = groundedness(answer, sources)
    if found.share is None:
        return None
    detail = f"{found.supported} of {found.claims} sentences supported"
    share = round(found.share, 4)
    if rails.groundedness_floor and found.share < rails.groundedness_floor:
        detail += f", under the floor {rails.groundedness_floor:g}"
        return Guardrail("groundedness", "ungrounded", rails.ungrounded, detail, share)
    return Guardrail("groundedness", "pass", "none", detail, share)


def check_json(text: str, schema: Mapping[str, Any]) -> tuple[str, Guardrail]:
    """The answer as the client gets it, one JSON value of `schema` (a ```json fence around
    it taken off), and the pass decision. Raises Aborted (reason OUTPUT_SCHEMA_VIOLATION)
    naming where it fails, counted here; InvalidArgument where the schema itself cannot be
    applied (with_schema refuses the schemas it can tell)."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        problem = f"the answer is not JSON ({exc.msg} at character {exc.pos})"
    else:
        try:
            error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
        except (referencing.exceptions.Unresolvable, RecursionError) as exc:
            raise InvalidArgument(f"json_schema: {_unusable(exc)}", field="json_schema") from None
        if error is None:
            return body, Guardrail("json_schema", "pass", "none")
        # The keyword that failed, not jsonschema's message: that quotes the answer's text.
        problem = f"the answer fails the schema's {error.validator!r} at {error.json_path}"
    record([Guardrail("json_schema", "invalid", "block")])
    raise Aborted(f"json_schema: {problem}", reason=OUTPUT_SCHEMA_VIOLATION)
