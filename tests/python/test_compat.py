"""The compatible routes, driven by clients nobody here wrote: OpenAI's SDK and Hugging
Face's InferenceClient, plus TEI's and Cohere's rerank shapes. Every vector is compared
with what the embed function answers through its own URL."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import openai
import pytest
from huggingface_hub import InferenceClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import cosine, embed_reference, post_json, request  # noqa: E402

TEXTS = ["A man is eating food.", "The cat sat on the mat.", "How do I reset my password?"]


@pytest.fixture(scope="module")
def client(thaw_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{thaw_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(thaw_url: str):
    return embed_reference(thaw_url, TEXTS)


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_embeddings_equal_embeds_vectors(client, reference, encoding_format) -> None:
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    reply = client.embeddings.create(model="embed", input=TEXTS, **kwargs)
    assert [d.index for d in reply.data] == [0, 1, 2]
    for got, want in zip(reply.data, reference):
        vector = got.embedding
        if encoding_format == "base64":
            # Asked for explicitly, the SDK hands the string over as is.
            vector = np.frombuffer(base64.b64decode(vector), dtype="<f4").tolist()
        assert len(vector) == 384
        assert cosine(vector, want) >= 0.9999
    assert reply.model == "embed"
    assert reply.usage.prompt_tokens > len(TEXTS)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens


def test_openai_one_string_and_a_snapshot_as_model(client, reference) -> None:
    reply = client.embeddings.create(model="minilm-l6", input=TEXTS[0])
    assert len(reply.data) == 1
    assert cosine(reply.data[0].embedding, reference[0]) >= 0.9999


def test_openai_models_lists_the_routed_functions_and_snapshots(client) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"embed", "rerank", "minilm-l6"} <= ids


def test_openai_errors_are_the_sdks_typed_errors(client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embed", input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embed", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embed", input="x", dimensions=64)


def test_huggingface_feature_extraction_against_the_embed_route(thaw_url, reference) -> None:
    hf = InferenceClient(model=f"{thaw_url}/embed")
    one = hf.feature_extraction(TEXTS[0])
    assert one.shape == (1, 384) and one.dtype == np.float32
    assert cosine(one[0].tolist(), reference[0]) >= 0.9999
    many = hf.feature_extraction(TEXTS, normalize=True)
    assert many.shape == (3, 384)
    for got, want in zip(many, reference):
        assert cosine(got.tolist(), want) >= 0.9999
    # TEI answers POST / too, which is where a bare server URL posts.
    root = InferenceClient(model=thaw_url).feature_extraction(TEXTS[1])
    assert cosine(root[0].tolist(), reference[1]) >= 0.9999


def test_tei_refuses_what_it_cannot_do(thaw_url) -> None:
    status, _, raw = request(
        f"{thaw_url}/embed", "POST", {"inputs": "x", "prompt_name": "query"}
    )
    assert status == 422 and json.loads(raw)["error_type"] == "Validation"
    status, _, raw = request(f"{thaw_url}/embed", "POST", {"inputs": []})
    assert status == 422, raw


def test_tei_info(thaw_url) -> None:
    status, _, raw = request(f"{thaw_url}/info")
    assert status == 200
    info = json.loads(raw)
    assert info["model_id"] == "minilm-l6"
    assert info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_tei_and_cohere_rerank_put_the_relevant_document_first(thaw_url) -> None:
    docs = ["Our office opens at nine.", "Click Forgot password on the sign-in page."]
    tei = post_json(
        f"{thaw_url}/rerank",
        {"query": "How do I reset my password?", "texts": docs, "return_text": True},
    )
    assert [r["index"] for r in tei] == [1, 0]
    assert tei[0]["text"] == docs[1] and tei[0]["score"] > tei[1]["score"]
    cohere = post_json(
        f"{thaw_url}/v1/rerank",
        {"model": "rerank", "query": "How do I reset my password?",
         "documents": [docs[0], {"text": docs[1]}], "top_n": 1},
    )
    assert len(cohere["results"]) == 1
    assert cohere["results"][0]["index"] == 1
    assert cohere["results"][0]["document"] == {"text": docs[1]}
    assert 0 <= cohere["results"][0]["relevance_score"] <= 1
