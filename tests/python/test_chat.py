"""OpenAI's chat completions through the real ``openai`` SDK, against thaw's ``generate``
function (the tiny qwen2 GGUF model): without and with ``stream=True``. Every answer is
compared with what generate answers through its own URL for the same request."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import post_json  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is a cold start?"},
]


@pytest.fixture(scope="module")
def client(thaw_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{thaw_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(thaw_url: str):
    return post_json(
        f"{thaw_url}/fn/generate/",
        {"messages": MESSAGES, "max_tokens": 12, "temperature": 0.8, "seed": 5},
    )


def test_chat_completion_equals_generates_own_answer(client, reference) -> None:
    reply = client.chat.completions.create(
        model="generate", messages=MESSAGES, max_tokens=12, temperature=0.8, seed=5
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reference["text"]
    assert choice.finish_reason == reference["finish_reason"]
    assert reply.model == "tiny-qwen2"
    assert reply.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == reference["usage"]["completion_tokens"]
    assert reply.id.startswith("chatcmpl-")


def test_chat_completion_streams_the_same_text_with_usage(client, reference) -> None:
    stream = client.chat.completions.create(
        model="tiny-qwen2",
        messages=MESSAGES,
        max_completion_tokens=12,
        temperature=0.8,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    # Token streaming: the text arrives in pieces as it is generated, not in one delta.
    assert len(pieces) > 1, pieces
    text = "".join(pieces)
    assert text == reference["text"]
    assert finish == reference["finish_reason"]
    assert usage is not None and usage.completion_tokens == reference["usage"]["completion_tokens"]


def test_chat_stop_and_greedy_and_typed_errors(client) -> None:
    greedy = client.chat.completions.create(
        model="generate", messages=MESSAGES, max_tokens=8, temperature=0
    )
    again = client.chat.completions.create(
        model="generate", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert greedy.choices[0].message.content == again.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="generate", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="generate", messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="generate", messages=MESSAGES, temperature=5)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    # Bad input is refused before a stream starts, as a plain error.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="generate", messages=MESSAGES, temperature=5, stream=True
        )


def test_models_lists_the_chat_function_and_its_snapshot(client) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"generate", "tiny-qwen2"} <= ids
