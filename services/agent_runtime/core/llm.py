"""Client of the OpenAI-compatible API of the inference gateway (``/v1/completions``, ``/v1/chat/completions``)."""

from __future__ import annotations

from typing import Any

import httpx


class LLMError(RuntimeError):
    """The gateway could not be reached or refused the request."""


class LLMClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: str | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=headers, transport=transport, verify=verify
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(
        self,
        prompt: str,
        *,
        model: str,
        stop: list[str] | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
    ) -> str:
        body = {**_body(model, max_tokens, temperature, stop=stop), "prompt": prompt}
        data = await self._post("/v1/completions", body)
        try:
            return str(data["choices"][0]["text"])
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"malformed completion response from {self.base_url}: {data!r:.300}") from exc

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        stop: list[str] | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
    ) -> str:
        """The text of the assistant's answer."""
        message = await self.chat_message(
            list(messages), model=model, stop=stop, max_tokens=max_tokens, temperature=temperature
        )
        return str(message.get("content") or "")

    async def chat_message(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
    ) -> dict[str, Any]:
        """The assistant message of a chat completion, with its ``tool_calls`` when the model made any."""
        body = {**_body(model, max_tokens, temperature, stop=stop, tools=tools), "messages": messages}
        data = await self._post("/v1/chat/completions", body)
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"malformed chat response from {self.base_url}: {data!r:.300}") from exc
        if not isinstance(message, dict):
            raise LLMError(f"malformed chat message from {self.base_url}: {message!r:.300}")
        return message

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            resp = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise LLMError(f"gateway {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise LLMError(f"gateway {self.base_url}{path} answered {resp.status_code}: {_error_text(resp)}")
        try:
            return resp.json()
        except ValueError as exc:
            raise LLMError(f"gateway {self.base_url}{path} returned non-JSON: {resp.text[:200]!r}") from exc


def _body(model: str, max_tokens: int, temperature: float, **optional: Any) -> dict[str, Any]:
    """The fields every request has; optional ones left empty (no stop words, no tools) are not sent."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    body.update({key: value for key, value in optional.items() if value})
    return body


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(data, dict):
        err = data.get("error") or data.get("detail")
        if isinstance(err, dict):
            return str(err.get("message", err))
        if err:
            return str(err)
    return str(data)[:300]
