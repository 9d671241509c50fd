"""Generation from an OpenAI-compatible server (vLLM, NIM, llama.cpp's server, OpenAI) over
its chat completions API, with the official SDK: the client of an upstream tier.

The prompt goes as one user message: it already holds the instructions, the sources and
the question. The SDK retries nothing (the gateway's generation loop decides); every call
ends by the request's deadline. The key is sent as a Bearer token and appears in no
message, log line or repr.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.common.errors import DeadlineExceeded, InvalidArgument, RagmeshError, Unavailable
from services.triton.llm import Delta, Sampling

READY_TIMEOUT_S = 2.0
_TIMED_OUT = "generation timed out"
# The request's fields an upstream's 400 or 422 may name (OpenAI's `param`).
_FIELDS = {
    "messages": "query",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "user": "user",
}


class UpstreamLLM:
    """One OpenAI-compatible server at `base_url` (".../v1"); `api_key` "" sends no key.
    Connecting takes at most `connect_timeout_s`. Closing it closes its HTTP connections."""

    def __init__(self, base_url: str, api_key: str, *, connect_timeout_s: float) -> None:
        self.target = base_url
        self._key = api_key
        self._connect_s = connect_timeout_s
        omit = openai.Omit()
        # The SDK would add OPENAI_ORG_ID's and OPENAI_PROJECT_ID's headers: not this server's.
        defaults: dict[str, Any] = {"OpenAI-Organization": omit, "OpenAI-Project": omit}
        self._auth: dict[str, Any] = {} if api_key else {"Authorization": omit}
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",  # never read from OPENAI_API_KEY; omitted when ""
            max_retries=0,
            timeout=openai.Timeout(READY_TIMEOUT_S, connect=connect_timeout_s),
            default_headers=defaults,
        )

    def __repr__(self) -> str:
        return f"UpstreamLLM({self.target!r})"

    async def stream(
        self,
        model: str,
        version: str,
        prompt: str,
        sampling: Sampling,
        *,
        stream: bool,
        timeout_s: float,
        headers: dict[str, str],
        prefix: str = "",
        shared: bool = False,  # Triton's SharedStream; the upstream's connections are pooled
    ) -> AsyncGenerator[Delta]:
        """Yields deltas, counts -1, then a last one with the finish_reason and the usage the
        server reports (-1 without); not `stream`: one delta, the whole answer. Raises
        Unavailable for the server's failures (a stream cut before its finish_reason too),
        DeadlineExceeded when `timeout_s` runs out, InvalidArgument for a request it refuses.
        Closing the generator closes the response: the server stops generating. `version` is
        unused: an upstream serves no versions (Tier.version refuses a pinned one), and so is
        `prefix`: the OpenAI API continues no answer (an upstream tier takes no
        continuations, config/gateway.py)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        request = self._request(model, prompt, sampling, stream, timeout_s, headers)
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self._client.chat.completions.create(**request)
            if isinstance(answer, ChatCompletion):
                yield self._whole(answer)
                return
            try:
                async for delta in self._deltas(answer, deadline):
                    yield delta
            finally:
                await answer.close()
        except TimeoutError as exc:
            raise DeadlineExceeded(_TIMED_OUT) from exc
        except openai.OpenAIError as exc:
            late = asyncio.get_running_loop().time() >= deadline
            raise self._error(exc, late) from exc
        except ValueError as exc:  # a body that is not JSON, or not the chat API's
            raise Unavailable(f"upstream {self.target} answered {type(exc).__name__}") from exc

    def _request(
        self,
        model: str,
        prompt: str,
        sampling: Sampling,
        stream: bool,
        timeout_s: float,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        """create()'s arguments; stop, seed and user only when set."""
        request: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
            "extra_headers": {**headers, **self._auth},
            "timeout": openai.Timeout(timeout_s, connect=min(self._connect_s, timeout_s)),
        }
        if stream:
            request["stream_options"] = {"include_usage": True}
        if sampling.stop:
            request["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        if sampling.user:
            request["user"] = sampling.user
        return request

    def _whole(self, answer: ChatCompletion) -> Delta:
        if not answer.choices:
            raise Unavailable(f"upstream {self.target} answered with no choices")
        choice, usage = answer.choices[0], answer.usage
        return Delta(
            text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else -1,
            completion_tokens=usage.completion_tokens if usage else -1,
            model_version="",
            finish_reason=choice.finish_reason or "",
        )

    async def _deltas(
        self, chunks: openai.AsyncStream[ChatCompletionChunk], deadline: float
    ) -> AsyncIterator[Delta]:
        """A delta per chunk with text, then the finish_reason and usage (the usage chunk
        follows the finish_reason's where the server sends one)."""
        finish, prompt_tokens, completion_tokens = "", -1, -1
        chunk: ChatCompletionChunk | None
        while True:
            async with asyncio.timeout_at(deadline):  # never across a yield
                chunk = await anext(chunks, None)
            if chunk is None:
                break
            if chunk.usage is not None:
                prompt_tokens = chunk.usage.prompt_tokens
                completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices[:1]:
                if choice.delta.content:
                    yield Delta(choice.delta.content, -1, -1, "")
                finish = choice.finish_reason or finish
        if not finish:
            raise Unavailable(f"upstream {self.target}: the stream ended before the answer")
        yield Delta("", prompt_tokens, completion_tokens, "", finish)

    def _error(self, exc: openai.OpenAIError, late: bool) -> RagmeshError:
        """The SDK's error as the gateway's: the request's own content (a prompt too long)
        names its field; anything else is the server's failure, ours to fail over from."""
        said = self._said(exc)
        if isinstance(exc, openai.APITimeoutError) and late:
            return DeadlineExceeded(_TIMED_OUT)
        if isinstance(exc, openai.APITimeoutError):  # the connect timeout, with time left
            return Unavailable(f"upstream {self.target} timed out connecting")
        if isinstance(exc, openai.APIConnectionError):
            return Unavailable(f"upstream {self.target} unreachable")
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (400, 422):  # the request's: no retry, no breaker verdict
                field = _field(exc, said)
                what = (
                    f"{field}: the upstream model refused it"
                    if field
                    else ("the upstream model refused the request")
                )
                return InvalidArgument(f"{what}: {said}", field=field)
            return Unavailable(f"upstream {self.target} answered HTTP {exc.status_code}: {said}")
        return Unavailable(f"upstream {self.target} failed: {said}")  # an error event mid-stream

    def _said(self, exc: openai.OpenAIError) -> str:
        """The server's own words, short, with the key (should it echo it) blanked."""
        body = getattr(exc, "body", None)
        words = ""
        if isinstance(body, dict):
            words = str(body.get("message") or body.get("detail") or "")
        words = words.replace(self._key, "[key]") if self._key else words
        return (words or type(exc).__name__)[:200]

    async def ready(self, model: str, version: str = "") -> bool:
        """Whether the server answers GET /models, listing `model`, within READY_TIMEOUT_S;
        False for anything else."""
        try:
            page = await self._client.models.list(extra_headers=self._auth, timeout=READY_TIMEOUT_S)
            return any(m.id == model for m in page.data)
        except Exception:  # whatever went wrong, the answer is "not ready"
            return False

    async def close(self) -> None:
        await self._client.close()


def _field(exc: openai.APIStatusError, said: str) -> str:
    """The request's field a 400 or 422 is about, "" when it names none of them."""
    if exc.param in _FIELDS:
        return _FIELDS[exc.param]
    if exc.code == "context_length_exceeded" or "context length" in said.lower():
        return "max_tokens" if "max_tokens" in said else "query"
    return ""
