"""The simulator's batch APIs through the official SDKs: a batch runs for its model's batch_latency_s, then its
lines are answered as the same requests are synchronously (or expired, errored, cancelled), at half price."""

import io
import json
import time

import anthropic
import httpx
import openai
import pytest
from google.genai import types as genai_types
from openai.types.chat import ChatCompletion

from tests.providers.test_sdks import anthropic_client, gemini_client, openai_client

GPT, CLAUDE, GEMINI = "gpt-4o", "claude-3-5-sonnet-20241022", "gemini-2.5-flash"
# Graded questions: with a default accuracy of one half, some answered right and some wrong.
PROMPTS = [f"What is {n} times 7? [[expect: {n * 7}]]" for n in range(3, 13)]
IN_PROGRESS = {"batch_latency_s": 3600.0}
ENDED = {"batch_latency_s": 0.0}


def graded(sim, model, **fields):
    """The model answering at once, half of the graded questions right."""
    sim.patch(model, latency_ms=0, accuracy={}, default_accuracy=0.5, **fields)


def until(fetch, done, timeout_s=10.0):
    """`fetch()` until `done` holds for what it returns."""
    deadline = time.monotonic() + timeout_s
    while not done(value := fetch()):
        assert time.monotonic() < deadline, f"still {value}"
        time.sleep(0.05)
    return value


def served(sim, model):
    """The model's counts (none before it served anything)."""
    return sim.stats()["models"].get(model, {"batch_requests": 0})


def assert_billed_at_half_price(sim, model, lines):
    """The batch's `lines` billed at half of what the same synchronous calls were."""
    stats = served(sim, model)
    assert stats["batch_requests"] == lines
    assert stats["batch_cost_usd"] == pytest.approx(stats["cost_usd"] / 2, rel=1e-9) and stats["cost_usd"] > 0
    (bill,) = (bills[model] for bills in sim.stats()["bills"].values())
    assert bill["batch_requests"] == lines and bill["requests"] == len(PROMPTS)
    assert bill["cost_usd"] == pytest.approx(stats["cost_usd"] + stats["batch_cost_usd"], rel=1e-9)
    assert sim.stats()["cost_usd"] == pytest.approx(bill["cost_usd"], rel=1e-9)


def batch_lines(sim, via="batch"):
    return [r for r in httpx.get(f"{sim.url}/_sim/requests", params={"limit": 1000}).json() if r["via"] == via]


# OpenAI


def openai_body(prompt, model=GPT):
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_completion_tokens": 60}


def openai_batch(client, bodies):
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(bodies)
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    upload = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")


def openai_results(client, file_id):
    return {line["custom_id"]: line for line in map(json.loads, client.files.content(file_id).text.splitlines())}


def test_an_openai_batch_runs_for_its_latency_then_answers_as_synchronous_calls_at_half_price(timed_sim):
    graded(timed_sim, GPT, **IN_PROGRESS)
    client = openai_client(timed_sim)
    batch = openai_batch(client, [openai_body(p) for p in PROMPTS])
    assert batch.status == "validating" and batch.request_counts.total == len(PROMPTS)
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.output_file_id is None
    assert running.request_counts.completed == 0
    assert served(timed_sim, GPT)["batch_requests"] == 0, "no line is answered before the batch ends"
    assert len(batch_lines(timed_sim)) == len(PROMPTS) and not batch_lines(timed_sim, "sync")

    timed_sim.patch(GPT, batch_latency_s=0.2)
    ended = until(lambda: client.batches.retrieve(batch.id), lambda b: b.status != "in_progress")
    assert ended.status == "completed" and ended.error_file_id is None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (len(PROMPTS), 0)
    results = openai_results(client, ended.output_file_id)
    answers = {}
    for i, prompt in enumerate(PROMPTS):
        line = results[f"q{i}"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        answers[prompt] = ChatCompletion.model_validate(line["response"]["body"]).choices[0].message.content
        synchronous = client.chat.completions.create(**openai_body(prompt))
        assert answers[prompt] == synchronous.choices[0].message.content
    stats = served(timed_sim, GPT)
    assert stats["correct"] + stats["wrong"] == 2 * len(PROMPTS) and stats["correct"] and stats["wrong"]
    assert_billed_at_half_price(timed_sim, GPT, len(PROMPTS))


def test_an_openai_batch_expired_or_errored_by_its_shares(timed_sim):
    client = openai_client(timed_sim)
    timed_sim.patch(GPT, batch_expiry_share=1.0, **ENDED)
    expired = client.batches.retrieve(openai_batch(client, [openai_body(p) for p in PROMPTS]).id)
    assert expired.status == "expired" and expired.output_file_id is None
    for line in openai_results(client, expired.error_file_id).values():
        assert line["response"] is None and line["error"]["code"] == "batch_expired"

    timed_sim.patch(GPT, batch_expiry_share=0.0, batch_error_share=1.0)
    errored = client.batches.retrieve(openai_batch(client, [openai_body(p) for p in PROMPTS]).id)
    assert errored.status == "completed" and errored.request_counts.failed == len(PROMPTS)
    for line in openai_results(client, errored.error_file_id).values():
        assert line["error"] is None and line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"

    timed_sim.patch(GPT, batch_error_share=0.3)
    mixed = client.batches.retrieve(
        openai_batch(client, [openai_body(f"{p} ({n})") for n in range(4) for p in PROMPTS]).id
    )
    assert 0 < mixed.request_counts.failed < mixed.request_counts.total == 4 * len(PROMPTS)
    assert served(timed_sim, GPT)["batch_requests"] == mixed.request_counts.completed, "only answers are billed"


def test_a_cancelled_openai_batch_ends_with_its_lines_cancelled_and_unbilled(timed_sim):
    timed_sim.patch(GPT, **IN_PROGRESS)
    client = openai_client(timed_sim)
    batch = openai_batch(client, [openai_body(p) for p in PROMPTS])
    assert client.batches.cancel(batch.id).status == "cancelling"
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at and cancelled.output_file_id is None
    for line in openai_results(client, cancelled.error_file_id).values():
        assert line["response"] is None and line["error"]["code"] == "batch_cancelled"
    assert served(timed_sim, GPT)["batch_requests"] == 0 and timed_sim.stats()["cost_usd"] == 0


def post_in_chunks(url, headers, body):
    """POST `body` a megabyte a write (the SDKs' clients copy what is left of a body at every write: minutes
    for the hundreds of megabytes past a batch API's limit)."""
    view = memoryview(body)
    chunks = (view[i : i + 2**20] for i in range(0, len(view), 2**20))
    return httpx.post(url, headers=headers | {"content-length": str(len(body))}, content=chunks, timeout=60)


def test_openai_batches_past_the_limits_are_refused(timed_sim):
    client = openai_client(timed_sim)
    with pytest.raises(openai.BadRequestError, match="for one"):
        openai_batch(client, [openai_body(PROMPTS[0]), openai_body(PROMPTS[1], model="gpt-4o-mini")])
    with pytest.raises(openai.BadRequestError, match="50000"):
        openai_batch(client, [openai_body("hi")] * 50_001)
    # A prompt of 200 MB, put in without json.dumps (seconds for it).
    line = json.dumps({"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": openai_body("")})
    form = [b'--limit\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n']
    form.append(b'--limit\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n')
    form += [line.encode().replace(b'"content": ""', b'"content": "' + b"x" * 200 * 2**20 + b'"')]
    form.append(b"\r\n--limit--\r\n")
    headers = {"authorization": "Bearer sk-sim", "content-type": "multipart/form-data; boundary=limit"}
    upload = post_in_chunks(f"{timed_sim.url}/v1/files", headers, b"".join(form))
    assert upload.json()["bytes"] > 200 * 2**20
    with pytest.raises(openai.BadRequestError, match="200 MB"):
        client.batches.create(
            input_file_id=upload.json()["id"], endpoint="/v1/chat/completions", completion_window="24h"
        )


# Anthropic


def anthropic_params(prompt):
    return {"model": CLAUDE, "max_tokens": 60, "messages": [{"role": "user", "content": prompt}]}


def anthropic_batch(client, prompts):
    return client.messages.batches.create(
        requests=[{"custom_id": f"q{i}", "params": anthropic_params(p)} for i, p in enumerate(prompts)]
    )


def test_an_anthropic_batch_runs_for_its_latency_then_answers_as_synchronous_calls_at_half_price(timed_sim):
    graded(timed_sim, CLAUDE, **IN_PROGRESS)
    client = anthropic_client(timed_sim)
    batch = anthropic_batch(client, PROMPTS)
    running = client.messages.batches.retrieve(batch.id)
    assert running.processing_status == "in_progress" and running.results_url is None
    assert running.request_counts.processing == len(PROMPTS)

    timed_sim.patch(CLAUDE, **ENDED)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == len(PROMPTS)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    for i, prompt in enumerate(PROMPTS):
        assert results[f"q{i}"].type == "succeeded"
        synchronous = client.messages.create(**anthropic_params(prompt))
        assert results[f"q{i}"].message.content[0].text == synchronous.content[0].text
    assert_billed_at_half_price(timed_sim, CLAUDE, len(PROMPTS))


def test_anthropic_batch_lines_expired_errored_refused_and_cancelled(timed_sim):
    client = anthropic_client(timed_sim)
    timed_sim.patch(CLAUDE, batch_expiry_share=1.0, **ENDED)
    expired = anthropic_batch(client, PROMPTS)
    assert {r.result.type for r in client.messages.batches.results(expired.id)} == {"expired"}

    timed_sim.patch(CLAUDE, batch_expiry_share=0.0, batch_error_share=1.0)
    errored = anthropic_batch(client, PROMPTS)
    for result in client.messages.batches.results(errored.id):
        assert result.result.type == "errored" and result.result.error.error.type == "api_error"

    timed_sim.patch(CLAUDE, batch_error_share=0.0)
    no_max_tokens = {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]}
    refused = client.messages.batches.create(requests=[{"custom_id": "bad", "params": no_max_tokens}])
    (result,) = client.messages.batches.results(refused.id)
    assert result.result.type == "errored" and result.result.error.error.type == "invalid_request_error"

    timed_sim.patch(CLAUDE, **IN_PROGRESS)
    cancelled = anthropic_batch(client, PROMPTS)
    assert client.messages.batches.cancel(cancelled.id).processing_status == "canceling"
    ended = client.messages.batches.retrieve(cancelled.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled == len(PROMPTS)
    assert {r.result.type for r in client.messages.batches.results(cancelled.id)} == {"canceled"}
    assert served(timed_sim, CLAUDE)["batch_requests"] == 0 and timed_sim.stats()["cost_usd"] == 0


def test_anthropic_batches_past_the_limits_are_refused(timed_sim):
    client = anthropic_client(timed_sim)
    with pytest.raises(anthropic.BadRequestError, match="unique"):
        client.messages.batches.create(
            requests=[{"custom_id": "same", "params": anthropic_params(p)} for p in PROMPTS[:2]]
        )
    url, headers = (
        f"{timed_sim.url}/v1/messages/batches",
        {"x-api-key": "sk-ant-sim", "anthropic-version": "2023-06-01"},
    )
    many = [{"custom_id": f"q{i}", "params": anthropic_params("hi")} for i in range(100_001)]
    refused = httpx.post(url, headers=headers, json={"requests": many}).json()
    assert refused["error"]["type"] == "invalid_request_error" and "100000" in refused["error"]["message"]
    large = json.dumps({"requests": [{"custom_id": "big", "params": anthropic_params("")}]}).encode()
    large = large.replace(b'"content": ""', b'"content": "' + b"x" * 256 * 2**20 + b'"')  # json.dumps: seconds
    too_large = post_in_chunks(url, headers | {"content-type": "application/json"}, large)
    assert too_large.status_code == 413 and too_large.json()["error"]["type"] == "request_too_large"


# Gemini


def gemini_batch(client, prompts):
    return client.batches.create(
        model=GEMINI,
        src=[
            {
                "contents": [{"role": "user", "parts": [{"text": prompt}]}],
                "config": {"max_output_tokens": 60},
                "metadata": {"key": f"q{i}"},
            }
            for i, prompt in enumerate(prompts)
        ],
        config={"display_name": "graded questions"},
    )


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_a_gemini_batch_runs_for_its_latency_then_answers_as_synchronous_calls_at_half_price(timed_sim, api_version):
    graded(timed_sim, GEMINI, **IN_PROGRESS)
    client = gemini_client(timed_sim, api_version)
    job = gemini_batch(client, PROMPTS)
    assert job.name.startswith("batches/") and job.state == genai_types.JobState.JOB_STATE_PENDING
    running = client.batches.get(name=job.name)
    assert running.state == genai_types.JobState.JOB_STATE_RUNNING and running.dest is None
    assert running.display_name == "graded questions" and running.model == f"models/{GEMINI}"

    timed_sim.patch(GEMINI, **ENDED)
    ended = client.batches.get(name=job.name)
    assert ended.state == genai_types.JobState.JOB_STATE_SUCCEEDED and ended.end_time
    responses = ended.dest.inlined_responses
    assert [r.metadata for r in responses] == [{"key": f"q{i}"} for i in range(len(PROMPTS))]
    for prompt, inlined in zip(PROMPTS, responses, strict=True):
        synchronous = client.models.generate_content(
            model=GEMINI, contents=prompt, config=genai_types.GenerateContentConfig(max_output_tokens=60)
        )
        assert inlined.error is None and inlined.response.text == synchronous.text
    assert_billed_at_half_price(timed_sim, GEMINI, len(PROMPTS))


def test_gemini_batch_lines_expired_errored_and_cancelled(timed_sim):
    client = gemini_client(timed_sim)
    timed_sim.patch(GEMINI, batch_expiry_share=1.0, **ENDED)
    expired = client.batches.get(name=gemini_batch(client, PROMPTS).name)
    assert expired.state == genai_types.JobState.JOB_STATE_EXPIRED
    assert {(r.response, r.error.code) for r in expired.dest.inlined_responses} == {(None, 504)}

    timed_sim.patch(GEMINI, batch_expiry_share=0.0, batch_error_share=1.0)
    errored = client.batches.get(name=gemini_batch(client, PROMPTS).name)
    assert errored.state == genai_types.JobState.JOB_STATE_SUCCEEDED
    assert {(r.response, r.error.code) for r in errored.dest.inlined_responses} == {(None, 500)}

    timed_sim.patch(GEMINI, **IN_PROGRESS)
    job = gemini_batch(client, PROMPTS)
    client.batches.cancel(name=job.name)
    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == genai_types.JobState.JOB_STATE_CANCELLED and cancelled.dest is None
    assert served(timed_sim, GEMINI)["batch_requests"] == 0 and timed_sim.stats()["cost_usd"] == 0
