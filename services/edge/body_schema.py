"""The JSON bodies the public API takes, generated from the descriptor set.

Envoy's transcoder drops unknown JSON fields silently; request_guard.lua checks
bodies against this schema first. The schema is derived from the protos' google.api.http
rules, so it cannot drift from the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

# The google.api.http verbs whose rules may take a body.
_BODY_VERBS = ("post", "put", "patch")


@dataclass(frozen=True)
class BodySchema:
    """The JSON bodies the transcoder takes, as request_guard.lua checks them.

    ``routes`` maps an HTTP method and exact path to the body's kind, ``patterns`` holds
    (method, anchored Lua pattern, kind) for templated paths, and ``messages`` maps a message to
    its JSON keys (proto name and json_name alike) and their kinds. A kind is ``message:<name>``
    (singular or repeated), ``map:<name>`` (keys open, message values), ``map`` (keys open,
    scalar values), ``well_known`` (google.protobuf types: their own JSON forms) or ``scalar``.
    ``single_message`` holds the gRPC paths (``/package.Service/Method``) whose request is one
    message (not client streaming): a gRPC request to one of them carrying more is refused.
    """

    routes: dict[str, dict[str, str]] = field(default_factory=dict)
    patterns: list[tuple[str, str, str]] = field(default_factory=list)
    messages: dict[str, dict[str, str]] = field(default_factory=dict)
    single_message: list[str] = field(default_factory=list)


def _message_types(files: Any) -> dict[str, Any]:
    """Every DescriptorProto in `files` by full name (no leading dot), nested ones included."""
    found: dict[str, Any] = {}

    def add(prefix: str, message: Any) -> None:
        name = f"{prefix}.{message.name}" if prefix else message.name
        found[name] = message
        for nested in message.nested_type:
            add(name, nested)

    for file in files:
        for message in file.message_type:
            add(file.package, message)
    return found


def _lower_camel(name: str) -> str:
    """protoc's default json_name: each ``_`` dropped and the letter after it upper-cased."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _kind(field_proto: Any, types: dict[str, Any]) -> str:
    """How the JSON value of a field is checked; see BodySchema."""
    if field_proto.type != descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
        return "scalar"
    name = field_proto.type_name.lstrip(".")
    if name.startswith("google.protobuf."):
        return "well_known"
    message = types[name]
    if message.options.map_entry:
        (value,) = (f for f in message.field if f.name == "value")
        values = _kind(value, types)
        return "map:" + values.removeprefix("message:") if values.startswith("message:") else "map"
    return f"message:{name}"


def _collect(name: str, types: dict[str, Any], out: dict[str, dict[str, str]]) -> None:
    """Adds message `name` and every message reachable from its fields to `out`."""
    if name in out:
        return
    keys: dict[str, str] = {}
    out[name] = keys
    for field_proto in types[name].field:
        kind = _kind(field_proto, types)
        keys[field_proto.name] = kind
        keys[field_proto.json_name or _lower_camel(field_proto.name)] = kind
        nested = kind.partition(":")[2]
        if nested:
            _collect(nested, types, out)


def _lua_pattern(template: str) -> str | None:
    """A google.api.http path template as an anchored Lua pattern; None for a plain path."""
    if "{" not in template and "*" not in template:
        return None
    resolved = re.sub(r"\{[^}=]+(?:=([^}]*))?\}", lambda m: m.group(1) or "*", template)
    parts = []
    for token in re.split(r"(\*\*|\*)", resolved):
        if token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.sub(r"(\W)", r"%\1", token))
    return "^" + "".join(parts) + "$"


# A body message without the fields its path binds: "<message> without <fields>".
PATH_BOUND = " without "


def _path_fields(template: str) -> set[str]:
    """The top-level request fields a path template binds: {tenant} and {a.b=*} bind
    `tenant` and `a`."""
    return {name.split(".")[0] for name in re.findall(r"\{([^}=]+)", template)}


def _names(message: Any, fields: set[str]) -> set[str]:
    """`fields`' JSON keys in `message`: proto names and json_names."""
    return {
        key
        for f in message.field
        if f.name in fields
        for key in (f.name, f.json_name or _lower_camel(f.name))
    }


def _body_kind(rule: Any, request: str, types: dict[str, Any]) -> str | None:
    """The kind of a rule's JSON body, or None where it takes none (or one with no keys)."""
    if not rule.body:
        return None
    if rule.body == "*":
        return f"message:{request}"
    (field_proto,) = (f for f in types[request].field if f.name == rule.body)
    kind = _kind(field_proto, types)
    return kind if kind.startswith(("message:", "map:")) else None


def body_schema(descriptor_set: Path, services: list[str]) -> BodySchema:
    """The schema of every JSON body `services`' google.api.http rules take.

    Rules without a body (``DELETE /v1/documents/{id}``, ``GET /v1/status``) are left out.
    A ``body: "*"`` rule whose path binds fields (``/v1/admin/tenants/{tenant}/keys``) gets
    the request message less those fields: the path names the tenant, and a body that names
    one too is refused (the transcoder would let the body's win).
    """
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    types = _message_types(files)
    schema = BodySchema()
    found = set()
    for file in files:
        for service in file.service:
            full_name = f"{file.package}.{service.name}" if file.package else service.name
            if full_name not in services:
                continue
            found.add(full_name)
            for method in service.method:
                if not method.client_streaming:
                    schema.single_message.append(f"/{full_name}/{method.name}")
                http = method.options.Extensions[annotations_pb2.http]
                request = method.input_type.lstrip(".")
                for rule in [http, *http.additional_bindings]:
                    verb = rule.WhichOneof("pattern")
                    if verb is None:
                        continue
                    custom = verb == "custom"
                    http_method = (rule.custom.kind if custom else verb).upper()
                    template = rule.custom.path if custom else getattr(rule, verb)
                    kind = _body_kind(rule, request, types)
                    if kind is None or http_method.lower() not in _BODY_VERBS:
                        continue
                    nested = kind.partition(":")[2]
                    _collect(nested, types, schema.messages)
                    bound = _path_fields(template) if rule.body == "*" else set()
                    if bound:  # the path sets these: a body that names them too is refused
                        kind = f"message:{nested}{PATH_BOUND}{','.join(sorted(bound))}"
                        schema.messages[kind.partition(":")[2]] = {
                            key: value
                            for key, value in schema.messages[nested].items()
                            if key not in _names(types[nested], bound)
                        }
                    pattern = _lua_pattern(template)
                    if pattern is None:
                        schema.routes.setdefault(http_method, {})[template] = kind
                    else:
                        schema.patterns.append((http_method, pattern, kind))
    missing = sorted(set(services) - found)
    if missing:
        raise ValueError(f"{descriptor_set} lacks the services {missing}")
    return schema


def _lua_string(text: str) -> str:
    """A Lua string literal; anything but printable ASCII as decimal byte escapes."""
    chars = []
    for char in text:
        if char.isascii() and char.isprintable() and char not in '"\\':
            chars.append(char)
        else:
            chars.extend(f"\\{byte:03d}" for byte in char.encode())
    return '"' + "".join(chars) + '"'


def lua_schema(schema: BodySchema) -> str:
    """`schema` as the Lua tables ROUTES, PATTERNS, MESSAGES and SINGLE_MESSAGE."""
    lines = [
        "-- Generated by services.edge.render from the descriptor set: do not edit.",
        "local ROUTES = {",
    ]
    for method, paths in sorted(schema.routes.items()):
        lines.append(f"  [{_lua_string(method)}] = {{")
        lines += [f"    [{_lua_string(p)}] = {_lua_string(k)}," for p, k in sorted(paths.items())]
        lines.append("  },")
    lines += ["}", "local PATTERNS = {"]
    lines += [f"  {{{', '.join(_lua_string(x) for x in route)}}}," for route in schema.patterns]
    lines += ["}", "local MESSAGES = {"]
    for message, keys in sorted(schema.messages.items()):
        lines.append(f"  [{_lua_string(message)}] = {{")
        lines += [
            f"    [{_lua_string(key)}] = {_lua_string(k)}," for key, k in sorted(keys.items())
        ]
        lines.append("  },")
    lines += ["}", "local SINGLE_MESSAGE = {"]
    lines += [f"  [{_lua_string(path)}] = true," for path in sorted(schema.single_message)]
    lines += ["}", ""]
    return "\n".join(lines)
