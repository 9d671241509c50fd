"""redact(): each kind of secret and PII replaced by its marker, ordinary text kept whole;
the two sinks that use it, log lines (JsonLogFormatter) and spans (RedactingSpanExporter).

The fake keys are built from parts, so that no scanner takes this file for a leak."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode

from services.common.redaction import redact
from services.common.telemetry import JsonLogFormatter, RedactingSpanExporter

OPENAI = "sk-proj-" + "Xy9" * 8 + "T3BlbkFJ" + "aB3" * 7
ANTHROPIC = "sk-ant-api03-" + "Q7x_" * 10
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    + ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4fQ\n9b2Zk=\n-----END RSA PRIVATE KEY-----"

CAUGHT = {
    "ragmesh_key": [
        "rmk-3fa9c2d1e0b4-" + "Zx_9kLmN0pQr" * 3,
        "rmk-demo-2f6c1b7e94d04a8f",
        "rmk-test-other-tenant",
    ],
    "api_key": [
        OPENAI,
        ANTHROPIC,
        "sk-" + "a1B2c3D4e5" * 5,
        "AKIA" + "IOSFODNN7EXAMPL3",
        "ghp_" + "a1B2c3" * 6,
        "github_pat_11AB" + "cd3F" * 15,
        "glpat-" + "xY7_" * 5,
        "xoxb-2048-" + "9gh4" * 6,
        "AIza" + "Sy9-k_4" * 5,
        "hf_" + "Mn8P" * 9,
        "sk_live_" + "4eC39HqL" * 3,
    ],
    "jwt": [JWT],
    "private_key": [PEM, PEM.replace("RSA ", "")],
    "email": ["alice.smith+kiln@example.co.uk", "bob@corp.example.com", "ops-team@ex-ample.io"],
    "phone": [
        "(415) 555-0123",
        "415.555.0123",
        "+1-202-555-0175",
        "+44 20 7946 0958",
        "020 7946 0958",
        "+33 1 23 45 67 89",
        "01 23 45 67 89",
        "+4930901820",
        "+91 98765 43210",
    ],
    "card": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4012888888881881",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "6011000990139424",
    ],
    "iban": [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
    ],
}


@pytest.mark.parametrize(
    ("kind", "value"), [(kind, value) for kind, values in CAUGHT.items() for value in values]
)
def test_each_kind_is_replaced_by_its_marker_and_the_prose_kept(kind: str, value: str) -> None:
    text = f"Please note {value} before Friday."
    assert redact(text) == f"Please note [REDACTED:{kind}] before Friday."


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("OPENAI_API_KEY=hello123", "OPENAI_API_KEY=[REDACTED:secret]"),
        ("db_password=letmein&user=bob", "db_password=[REDACTED:secret]&user=bob"),
        (
            "aws_secret_access_key = 'wJalrXUtnFEMI/K7MDENG'",
            "aws_secret_access_key = '[REDACTED:secret]'",
        ),
        ('{"password": "letmein", "n": 1}', '{"password": "[REDACTED:secret]", "n": 1}'),
        ("{'x-api-key': 'abcd1234'}", "{'x-api-key': '[REDACTED:secret]'}"),
        ("(('x-api-key', 'zz99zz99'),)", "(('x-api-key', '[REDACTED:secret]'),)"),
        ("x-api-key: Zz12345678", "x-api-key: [REDACTED:secret]"),
        ("client_secret: 8f3kd93k", "client_secret: [REDACTED:secret]"),
        ("refresh_token=abcdefgh", "refresh_token=[REDACTED:secret]"),
        (f"Authorization: Bearer {JWT}", "Authorization: Bearer [REDACTED:jwt]"),
        (
            "authorization: Bearer opaque.Token-123",
            "authorization: Bearer [REDACTED:authorization]",
        ),
        (
            "Authorization: Basic dXNlcjpwYXNzd29yZA==",
            "Authorization: Basic [REDACTED:authorization]",
        ),
        (
            "('authorization', 'Bearer abc123def456')",
            "('authorization', 'Bearer [REDACTED:authorization]')",
        ),
        ("sent bearer Ab12Cd34Ef56Gh78", "sent bearer [REDACTED:authorization]"),
        (
            "postgres://admin:s3cr3t@db.example.com:5432/app",
            "postgres://[REDACTED:credentials]@db.example.com:5432/app",
        ),
        (f"private_key={PEM!r}", "private_key='[REDACTED:private_key]'"),
        (f"x-api-key: {OPENAI}", "x-api-key: [REDACTED:secret]"),
    ],
)
def test_named_values_lose_the_value_and_keep_the_name(text: str, redacted: str) -> None:
    assert redact(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "upserted 3 documents, 12 chunks, version 1732999999",
        "opentelemetry-sdk 1.45.2, Triton 2.51.0, python3.11",
        "on 2024-05-01 12:30:45, and 2024-05-01T12:30:45.123Z, 01/05/2024",
        "dates 2024-05-01 2024-06-01 2024-07-01",
        "ISBN 978-3-16-148410-0, ISBN 9780306406157",
        "ts 1732999999123456789, order 4111 1111 1111 1112, id 98765432109876",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7 digest 9f86d081884c7d65",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "replication from 127.0.0.1:5001 failed: UNAVAILABLE; peer ipv4:10.0.0.12:43512",
        "pip install scikit-learn; use sk-learn-compatible-estimators; task-sk-list; sk-1",
        "max_tokens=16 num_tokens: 12 tokenizer=fast token: expired",
        "the bearer instruments; a basic authorization scheme",
        "npm i left-pad@1.2.3; @property; user@localhost; git@host",
        "took 0.0023 s and 1234.5678 ms at 30.0 rps, port 50051",
        "/ragmesh.v1.Gateway/Generate",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("call +44 20 7946 0958 2 times", "call [REDACTED:phone] 2 times"),
        ("called +44 20 7946 0958 2024-05-01", "called [REDACTED:phone] 2024-05-01"),
        ("ring 020 7946 0958 12:00", "ring [REDACTED:phone] 12:00"),
        ("(415) 555-0123 (415) 555-0124", "[REDACTED:phone] [REDACTED:phone]"),
    ],
)
def test_a_phone_number_next_to_other_numbers_is_found(text: str, redacted: str) -> None:
    assert redact(text) == redacted


def test_emails_in_prose_go_and_the_prose_stays() -> None:
    text = "Write to alice@example.com or to bob.jones@mail.example.org, if the kiln cracks."
    assert redact(text) == "Write to [REDACTED:email] or to [REDACTED:email], if the kiln cracks."


def test_a_private_key_cut_short_is_redacted_to_the_end() -> None:
    text = "key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA (cut)"
    assert redact(text) == "key: [REDACTED:private_key]"


def test_several_kinds_in_one_text_and_redacting_twice_changes_nothing() -> None:
    text = (
        f"key {OPENAI}, mail bob@example.com, call +44 20 7946 0958, "
        "pay with 4111 1111 1111 1111 from DE89 3704 0044 0532 0130 00"
    )
    once = redact(text)
    assert once == (
        "key [REDACTED:api_key], mail [REDACTED:email], call [REDACTED:phone], "
        "pay with [REDACTED:card] from [REDACTED:iban]"
    )
    assert redact(once) == once


def test_a_long_text_without_secrets_is_kept() -> None:
    text = "Green tea should be brewed at about 80 degrees. " * 500 + "A" * 5000
    assert redact(text) == text


def _line(record: logging.LogRecord) -> dict:
    return json.loads(JsonLogFormatter("ragmesh-test").format(record))


def test_a_log_line_redacts_the_message_arguments_and_the_traceback() -> None:
    try:
        raise ValueError(f"priority: must be one of critical, standard, batch, not {OPENAI!r}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "ragmesh.x",
        logging.ERROR,
        __file__,
        1,
        "refused %s for %s",
        (OPENAI, "bob@example.com"),
        exc_info,
    )
    line = _line(record)
    assert line["message"] == "refused [REDACTED:api_key] for [REDACTED:email]"
    assert "[REDACTED:api_key]" in line["exception"] and "ValueError" in line["exception"]
    assert OPENAI not in json.dumps(line)


def _tracer(exporter: InMemorySpanExporter, limits: SpanLimits | None = None):
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(exporter)))
    return provider.get_tracer("test")


def test_exported_spans_have_their_attributes_status_events_and_links_redacted() -> None:
    exporter = InMemorySpanExporter()
    tracer = _tracer(exporter)
    with tracer.start_as_current_span("linked") as other:
        pass
    link = Link(other.get_span_context(), {"note": "from bob@example.com"})
    with tracer.start_as_current_span(f"ask {OPENAI}", links=[link]) as span:
        span.set_attribute("ragmesh.question", "mail bob@example.com the card 4111 1111 1111 1111")
        span.set_attribute("ragmesh.keys", [OPENAI, "plain"])
        span.set_attribute("ragmesh.retrieval.k", 3)
        span.add_event(f"refused {OPENAI}", {"exception.message": f"bad priority {OPENAI!r}"})
        span.set_status(Status(StatusCode.ERROR, f"priority: not {OPENAI!r}"))
    exported = exporter.get_finished_spans()[-1]
    assert exported.name == "ask [REDACTED:api_key]"
    assert (
        exported.attributes["ragmesh.question"] == "mail [REDACTED:email] the card [REDACTED:card]"
    )
    assert exported.attributes["ragmesh.keys"] == ("[REDACTED:api_key]", "plain")
    assert exported.attributes["ragmesh.retrieval.k"] == 3
    assert exported.status.status_code is StatusCode.ERROR
    assert exported.status.description == "priority: not '[REDACTED:api_key]'"
    (event,) = exported.events
    assert event.name == "refused [REDACTED:api_key]"
    assert event.attributes["exception.message"] == "bad priority '[REDACTED:api_key]'"
    assert exported.links[0].attributes == {"note": "from [REDACTED:email]"}
    assert exported.context == span.get_span_context() and exported.parent == span.parent
    assert (exported.start_time, exported.end_time) == (span.start_time, span.end_time)
    assert OPENAI not in exported.to_json() and "bob@example.com" not in exported.to_json()


def test_a_clean_span_leaves_as_it_is_and_a_copy_keeps_its_drop_counts() -> None:
    inner = InMemorySpanExporter()
    clean = ReadableSpan("clean", attributes={"ragmesh.tier": "standard", "k": 3})
    RedactingSpanExporter(inner).export([clean])
    assert inner.get_finished_spans()[0] is clean
    exporter = InMemorySpanExporter()
    with _tracer(exporter, SpanLimits(max_attributes=2)).start_as_current_span("leaky") as span:
        for i in range(3):
            span.set_attribute(f"a{i}", f"bob{i}@example.com")
    (exported,) = exporter.get_finished_spans()
    assert exported.dropped_attributes == 1
    assert dict(exported.attributes) == {"a1": "[REDACTED:email]", "a2": "[REDACTED:email]"}
