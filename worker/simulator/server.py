"""The simulator's HTTP handlers, served by lean_server.py: the providers' paths, its counts and its controls.

POST /v1/chat/completions                      OpenAI and OpenAI-compatible servers
POST /v1/messages                              Anthropic
POST /v1beta/models/{model}:generateContent    Gemini (also /v1/models/...)
     the batch APIs (batch_wire.py): OpenAI's /v1/files and /v1/batches, Anthropic's /v1/messages/batches,
     Gemini's /v1beta/models/{model}:batchGenerateContent and /v1beta/batches/{id} (also /v1/...)
GET  /_sim/stats                               what it served, as JSON, with its bill per key and model
GET  /_sim/requests?limit=N                    the last requests it received (path, model, body, headers without keys,
                                               via: "sync" for a call, "batch" for a batch's line)
POST /_sim/reset                               zero the counts
GET  /_sim/models                              every model's behaviour
PATCH /_sim/models/{model}                     change a model's behaviour (JSON fields), e.g. its error mix
PUT  /_sim/models/{model}                      replace a model's behaviour (unnamed fields: defaults)
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict, deque
from typing import Any

import msgspec

from worker import runtime
from worker.config import EventLoopChoice
from worker.runtime import tune_gc
from worker.simulator import wire
from worker.simulator.batch_wire import BatchApis
from worker.simulator.batches import BatchStore, SimBatch, SimLine, line_outcome
from worker.simulator.behaviour import Answer, SimRequest, answer, latency_s, pick_error
from worker.simulator.caching import NO_CACHE, Bill, CacheUse, PromptCache, key_label
from worker.simulator.lean_server import LeanServer, Request, Response, Routes, json_response
from worker.simulator.limits import Limits
from worker.simulator.requests import Call, anthropic_call, gemini_call, openai_call
from worker.simulator.sampling import sampling_error
from worker.simulator.settings import ModelBehaviour, SimulatorConfig
from worker.simulator.validation import anthropic_refusal, call_error

# Headers that carry an API key: left out of the requests shown at /_sim/requests.
KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})
REQUESTS_KEPT = 1000  # the most requests /_sim/requests shows


class ModelStats(msgspec.Struct, kw_only=True):
    requests: int = 0
    ok: int = 0
    input_tokens: int = 0  # all of them, cached ones included
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    cost_usd: float = 0.0  # of the synchronous calls, at the model's prices
    correct: int = 0  # answers graded right (synchronous calls and batch lines)
    wrong: int = 0
    statuses: dict[str, int] = {}
    # Batch lines answered and billed (the counts above are the synchronous calls', but for correct and wrong).
    batch_requests: int = 0
    batch_cost_usd: float = 0.0  # of those lines, at the model's batch discount


class Stats(msgspec.Struct, kw_only=True):
    """What the simulator served since it started (or was reset)."""

    requests: int = 0
    ok: int = 0
    rate_limited_sent: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    cost_usd: float = 0.0  # everything billed: synchronous calls and batch lines
    batch_requests: int = 0
    batch_cost_usd: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    statuses: dict[str, int] = {}
    models: dict[str, ModelStats] = {}
    # The bill: per API key (named by a digest, `caching.key_label`) and model.
    bills: dict[str, dict[str, Bill]] = {}


class Decided(msgspec.Struct, frozen=True, kw_only=True):
    """The answer a model gives a call, with the call's tokens."""

    behaviour: ModelBehaviour
    answer: Answer
    input_tokens: int
    output_tokens: int  # thinking tokens included


class Simulator:
    """The request handling, independent of how the server is run."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self._rng = random.Random(config.seed)
        self._limits: dict[tuple[str, str], Limits] = {}
        self._decoder = msgspec.json.Decoder()
        self._cache = PromptCache()
        self._labels: dict[str, str] = {}
        self._received: deque[tuple[str, str, Any, dict[str, str], str]] = deque(maxlen=REQUESTS_KEPT)
        self.batches = BatchStore()
        self._batch_apis = BatchApis(self)

    def routes(self) -> Routes:
        routes = Routes()
        routes.add("POST", "/v1/chat/completions", self._openai)
        routes.add("POST", "/v1/messages", self._anthropic)
        routes.add("POST", r"/{version:v1beta|v1}/models/{target}", self._gemini)
        batch_apis = self._batch_apis
        routes.add("POST", "/v1/files", batch_apis.openai_upload)
        routes.add("GET", "/v1/files/{file_id}", batch_apis.openai_file)
        routes.add("GET", "/v1/files/{file_id}/content", batch_apis.openai_file_content)
        routes.add("POST", "/v1/batches", batch_apis.openai_create)
        routes.add("GET", r"/{version:v1beta|v1}/batches/{batch_id}", batch_apis.get_batch)  # OpenAI's and Gemini's
        routes.add("POST", "/v1/batches/{batch_id}/cancel", batch_apis.openai_cancel)
        routes.add("POST", "/v1/messages/batches", batch_apis.anthropic_create)
        routes.add("GET", "/v1/messages/batches/{batch_id}", batch_apis.anthropic_get)
        routes.add("GET", "/v1/messages/batches/{batch_id}/results", batch_apis.anthropic_results)
        routes.add("POST", "/v1/messages/batches/{batch_id}/cancel", batch_apis.anthropic_cancel)
        routes.add("POST", r"/{version:v1beta|v1}/batches/{target}", batch_apis.gemini_cancel)
        routes.add("GET", "/_sim/stats", self._get_stats)
        routes.add("GET", "/_sim/requests", self._get_requests)
        routes.add("POST", "/_sim/reset", self._reset)
        routes.add("GET", "/_sim/models", self._get_models)
        routes.add("PATCH", "/_sim/models/{model}", self._patch_model)
        routes.add("PUT", "/_sim/models/{model}", self._put_model)
        return routes

    async def _openai(self, request: Request) -> Response:
        body = await self._body(request)
        model = str(body.get("model") or "") if isinstance(body, dict) else ""
        self._received.append((request.path, model, body, request.headers, "sync"))
        behaviour = self.config.models.get(model)
        wire_name = behaviour.wire if behaviour and behaviour.wire in ("openai", "openai_compatible") else "openai"
        return await self._serve(
            openai_call(
                body,
                wire=wire_name,
                model=model,
                key=wire.api_key("openai", request.headers, request.query),
                arrived=request.arrived,
            )
        )

    async def _anthropic(self, request: Request) -> Response:
        body = await self._body(request)
        model = str(body.get("model") or "") if isinstance(body, dict) else ""
        self._received.append((request.path, model, body, request.headers, "sync"))
        refused = anthropic_refusal(body, request.headers.get("anthropic-version", ""), model)
        if refused is not None:
            return self._reply(refused, model)
        # The API takes `x-api-key`; the current SDK sends the key as a Bearer token, which it takes too.
        key = wire.api_key("anthropic", request.headers, request.query)
        return await self._serve(anthropic_call(body, model=model, key=key, arrived=request.arrived))

    async def _gemini(self, request: Request) -> Response:
        model, _, action = request.match_info["target"].partition(":")
        if action == "batchGenerateContent":
            return await self._batch_apis.gemini_create(request, model)
        if action != "generateContent":
            return self._reply(wire.error("gemini", "", "not_found", model), model)
        body = await self._body(request)
        self._received.append((request.path, model, body, request.headers, "sync"))
        key = wire.api_key("gemini", request.headers, request.query)
        return await self._serve(gemini_call(body, model=model, key=key, arrived=request.arrived))

    async def _body(self, request: Request) -> Any:
        try:
            return self._decoder.decode(await request.read())
        except msgspec.DecodeError:
            return None

    async def _serve(self, call: Call) -> Response:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._answer(call)
        finally:
            stats.in_flight -= 1

    def _decide(self, call: Call) -> wire.Reply | Decided:
        """The answer the model gives `call`, or the error a request like it gets whatever the load (an invalid
        request, an unknown model, no key, a prompt beyond the context window)."""
        wire_name, model, texts, max_tokens, key = call.wire, call.model, call.texts, call.max_tokens, call.key
        behaviour = self.config.models.get(model)
        if texts is None or not isinstance(max_tokens, int) or max_tokens <= 0:
            return wire.error(wire_name, "", "bad_request", model, "the request body is not a valid request")
        if behaviour is None or behaviour.wire != wire_name:
            return wire.error(wire_name, "", "not_found", model)
        flavor = behaviour.flavor
        if not key:
            return wire.error(wire_name, flavor, "auth", model)
        # Anthropic's settings depend on its version header: checked by `anthropic_refusal`, which has it.
        invalid = None if wire_name == "anthropic" else sampling_error(wire_name, call.body)
        if invalid is None:
            invalid = call_error(call)
        if invalid is not None:
            return wire.error(
                wire_name, flavor, "bad_request", model, invalid.message, param=invalid.param, code=invalid.code
            )
        input_tokens = call.input_tokens()  # texts, images and tools: requests.py says how they are counted
        too_long = self._context_error(wire_name, behaviour, input_tokens, max_tokens)
        if too_long:
            return wire.error(wire_name, flavor, "context_too_long", model, too_long)
        request = SimRequest(
            model=model,
            texts=texts,
            max_tokens=max_tokens,
            json=call.json or call.schema is not None,
            schema=call.schema,
            tools={str(tool.name): tool.parameters for tool in call.tools},
            tool_choice=call.tool_choice,
            tool_name=call.tool_name,
            after_tool_result=call.after_tool_result,
        )
        reply = answer(behaviour, request, self.config.seed, self._rng, self.config.wrong_answer_agreement)
        if call.prefill and reply.text.startswith(call.prefill):
            reply = msgspec.structs.replace(reply, text=reply.text[len(call.prefill) :])
        return Decided(
            behaviour=behaviour,
            answer=reply,
            input_tokens=input_tokens,
            output_tokens=reply.output_tokens + behaviour.thinking_tokens,
        )

    async def _answer(self, call: Call) -> Response:
        """The reply to one call; a success comes its latency after the request `arrived` (time.monotonic),
        so the time the simulator itself took to get to it under load is part of the latency, not added to it."""
        decided = self._decide(call)
        if not isinstance(decided, Decided):
            return self._reply(decided, call.model)
        wire_name, model, texts, key = call.wire, call.model, call.texts, call.key
        behaviour, reply, input_tokens, output_tokens = (
            decided.behaviour,
            decided.answer,
            decided.input_tokens,
            decided.output_tokens,
        )
        flavor = behaviour.flavor
        assert texts is not None  # a call without texts was refused by `_decide`
        limits = self._limits_for(key, model, behaviour)
        now = time.monotonic()
        admitted, wait, binding = limits.admit(
            {
                "requests": 1,
                "tokens": input_tokens + output_tokens,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            },
            now,
        )
        headers = wire.rate_limit_headers(wire_name, limits.state())
        if not admitted:
            state = next(s for s in limits.state() if s.name == binding)
            detail = (
                f"{'tokens' if 'tokens' in binding else 'requests'}:Rate limit reached for {model} on "
                f"{wire.LIMIT_WORDS[binding]}: Limit {state.limit}, Remaining {state.remaining}. "
                f"Please try again in {wire.go_duration(wait)}."
            )
            return self._reply(
                wire.error(
                    wire_name,
                    flavor,
                    "rate_limited",
                    model,
                    detail,
                    retry_after_s=wait if wait != float("inf") else 60.0,
                    headers=headers,
                ),
                model,
            )
        injected = pick_error(behaviour, self._rng)
        if injected == "timeout":
            await asyncio.sleep(self.config.timeout_hang_s)
        if injected:
            retry = behaviour.retry_after_s if injected == "rate_limited" else None
            return self._reply(
                wire.error(wire_name, flavor, injected, model, retry_after_s=retry, headers=headers), model
            )
        delay = latency_s(behaviour, output_tokens, self.config.latency_scale, self._rng)
        if delay:
            await asyncio.sleep(max(0.0, call.arrived + delay - time.monotonic()))
        cache = self._cache.use(wire_name, key, model, texts, behaviour.min_cacheable_tokens, call.breakpoints)
        model_stats = self._model_stats(model)
        self._bill(key, model, behaviour, input_tokens, output_tokens, cache)
        model_stats.input_tokens += input_tokens
        model_stats.output_tokens += output_tokens
        self.stats.input_tokens += input_tokens
        self.stats.output_tokens += output_tokens
        self._grade(model_stats, reply)
        return self._reply(
            wire.success(wire_name, model, reply, input_tokens, behaviour.thinking_tokens, headers, cache), model
        )

    def _bill(
        self, key: str, model: str, behaviour: ModelBehaviour, input_tokens: int, output_tokens: int, cache: CacheUse
    ) -> None:
        """Bill an answered request to its key, and count its cached tokens and cost in the stats."""
        cost = self._bill_for(key, model).add(behaviour, input_tokens, output_tokens, cache)
        for stats in (self.stats, self._model_stats(model)):
            stats.cached_input_tokens += cache.read
            stats.cache_write_input_tokens += cache.written
            stats.cost_usd += cost

    def record(self, path: str, model: str, body: Any, headers: dict[str, str], via: str) -> None:
        """Keep a request for /_sim/requests (`via`: "sync" or "batch")."""
        self._received.append((path, model, body, headers, via))

    def settle_batches(self) -> None:
        """End every running batch whose latency has passed, its lines decided now (batches.py)."""
        now = time.monotonic()
        for batch in self.batches.running():
            if now >= batch.started + self._batch_latency_s(batch):
                self.batches.end(batch, self._settle_line)

    def _batch_latency_s(self, batch: SimBatch) -> float:
        """The longest `batch_latency_s` of the batch's models (Anthropic's batches may mix them), scaled; the
        config's own `batch_latency_s` when set."""
        if self.config.batch_latency_s is not None:
            return self.config.batch_latency_s
        models = {line.call.model for line in batch.lines}
        latencies = [b.batch_latency_s for b in map(self.config.models.get, models) if b is not None]
        return max(latencies, default=0.0) * self.config.latency_scale

    def _settle_line(self, batch: SimBatch, line: SimLine) -> None:
        """A line's result as its batch ends: expired, a server error or the synchronous answer."""
        call = line.call
        behaviour = self.config.models.get(call.model)
        expiry, error = (behaviour.batch_expiry_share, behaviour.batch_error_share) if behaviour else (0.0, 0.0)
        outcome = line_outcome(self.config.seed, batch.number, line.custom_id, expiry, error)
        if outcome == "expired":
            line.outcome = outcome
            return
        if outcome == "errored":
            reply = wire.error(call.wire, behaviour.flavor if behaviour else "", "server", call.model)
        else:
            reply = line.refused or self._batch_answer(call)
        line.status, line.headers, line.body = reply
        line.outcome = "answered" if line.status == 200 else "errored"

    def _batch_answer(self, call: Call) -> wire.Reply:
        """The synchronous answer to `call`, without its latency, rate limits or error mix, billed at the
        model's batch discount; or the error the request gets whatever the load."""
        decided = self._decide(call)
        if not isinstance(decided, Decided):
            return decided
        behaviour = decided.behaviour
        cost = self._bill_for(call.key, call.model).add_batch(behaviour, decided.input_tokens, decided.output_tokens)
        model_stats = self._model_stats(call.model)
        for stats in (self.stats, model_stats):
            stats.batch_requests += 1
            stats.batch_cost_usd += cost
        self.stats.cost_usd += cost
        self._grade(model_stats, decided.answer)
        return wire.success(
            call.wire, call.model, decided.answer, decided.input_tokens, behaviour.thinking_tokens, {}, NO_CACHE
        )

    @staticmethod
    def _grade(model_stats: ModelStats, reply: Answer) -> None:
        if reply.correct is not None:
            if reply.correct:
                model_stats.correct += 1
            else:
                model_stats.wrong += 1

    def _bill_for(self, key: str, model: str) -> Bill:
        """The bill of `key` for `model`."""
        label = self._labels.get(key)
        if label is None:
            label = self._labels[key] = key_label(key)  # a digest a request would cost more than the bill
        bills = self.stats.bills.get(label)
        if bills is None:
            bills = self.stats.bills[label] = {}
        bill = bills.get(model)
        if bill is None:
            bill = bills[model] = Bill()
        return bill

    @staticmethod
    def _context_error(wire_name: str, behaviour: ModelBehaviour, input_tokens: int, max_tokens: int) -> str:
        window = behaviour.context_window
        if wire_name == "anthropic":
            return (
                f"prompt is too long: {input_tokens} tokens > {window} maximum"
                if input_tokens + max_tokens > window
                else ""
            )
        if wire_name == "gemini":
            return (
                f"The input token count ({input_tokens}) exceeds the maximum number of tokens allowed ({window})."
                if input_tokens > window
                else ""
            )
        if input_tokens + max_tokens > window:
            if behaviour.flavor == "vllm":
                return (
                    f"This model's maximum context length is {window} tokens. However, you requested "
                    f"{input_tokens + max_tokens} tokens ({input_tokens} in the messages, {max_tokens} in the "
                    "completion). Please reduce the length of the messages or completion."
                )
            return (
                f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                f"{input_tokens} tokens and {max_tokens} completion tokens were requested. Please reduce the length "
                "of the messages."
            )
        return ""

    def _limits_for(self, key: str, model: str, behaviour: ModelBehaviour) -> Limits:
        wanted = {
            "requests": behaviour.requests_per_minute,
            "tokens": behaviour.tokens_per_minute,
            "input_tokens": behaviour.input_tokens_per_minute,
            "output_tokens": behaviour.output_tokens_per_minute,
        }
        limits = self._limits.get((key, model))
        if limits is None:
            limits = self._limits[(key, model)] = Limits(wanted, time.monotonic())
        else:
            limits.reconfigure(wanted, time.monotonic())
        return limits

    def _model_stats(self, model: str) -> ModelStats:
        stats = self.stats.models.get(model)
        if stats is None:
            stats = self.stats.models[model] = ModelStats(statuses=defaultdict(int))
        return stats

    def _reply(self, reply: wire.Reply, model: str) -> Response:
        status, headers, body = reply
        key = str(status)
        self.stats.statuses[key] = self.stats.statuses.get(key, 0) + 1
        model_stats = self._model_stats(model or "(none)")
        model_stats.requests += 1
        model_stats.statuses[key] = model_stats.statuses.get(key, 0) + 1
        if status == 200:
            self.stats.ok += 1
            model_stats.ok += 1
        elif status == 429:
            self.stats.rate_limited_sent += 1
        return Response(status, headers, body)

    async def _get_stats(self, request: Request) -> Response:
        self.settle_batches()  # a batch past its latency is billed whether or not anyone asked about it
        return json_response(msgspec.json.encode(self.stats))

    async def _get_requests(self, request: Request) -> Response:
        """The last `limit` requests received (default 20), the latest last; headers without API keys."""
        try:
            limit = max(0, int(request.query.get("limit", "20")))
        except ValueError:
            return json_response(msgspec.json.encode({"error": "limit: not an integer"}), status=400)
        received = list(self._received)[-limit:] if limit else []
        return json_response(
            msgspec.json.encode(
                [
                    {
                        "path": path,
                        "model": model,
                        "body": body,
                        "headers": {k: v for k, v in headers.items() if k.lower() not in KEY_HEADERS},
                        "via": via,
                    }
                    for path, model, body, headers, via in received
                ]
            )
        )

    async def _reset(self, request: Request) -> Response:
        in_flight = self.stats.in_flight
        self.stats = Stats(in_flight=in_flight)
        self._limits.clear()
        self._cache.clear()
        self._received.clear()
        self.batches.clear()
        return json_response(msgspec.json.encode(self.stats))

    async def _get_models(self, request: Request) -> Response:
        return json_response(msgspec.json.encode(self.config.models))

    async def _patch_model(self, request: Request) -> Response:
        return await self._update_model(request, merge=True)

    async def _put_model(self, request: Request) -> Response:
        return await self._update_model(request, merge=False)

    async def _update_model(self, request: Request, merge: bool) -> Response:
        name = request.match_info["model"]
        current = self.config.models.get(name)
        if current is None and merge:
            return json_response(msgspec.json.encode({"error": f"no model {name!r}"}), status=404)
        try:
            fields = msgspec.json.decode(await request.read())
            if merge:
                assert current is not None  # a merge into an unknown model was answered 404 above
                errors = msgspec.to_builtins(current.errors) | fields.get("errors", {})
                fields = msgspec.to_builtins(current) | fields | {"errors": errors}
            updated = msgspec.convert(fields, ModelBehaviour)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, AttributeError) as exc:
            return json_response(msgspec.json.encode({"error": str(exc)}), status=400)
        self.config.models[name] = updated
        return json_response(msgspec.json.encode(updated))


class SimulatorServer:
    """The simulator on host:port inside the running event loop (for the demo and tests)."""

    def __init__(self, config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = Simulator(config)
        self.host = host
        self.port = port
        self._server: LeanServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        self._server = LeanServer(self.simulator.routes())
        self.port = await self._server.start(self.host, self.port)
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


def run_simulator(config: SimulatorConfig, host: str, port: int, loop: EventLoopChoice = "auto") -> None:
    """Serve until interrupted (`llm-router simulate`), on the event loop `loop` names."""

    async def serve() -> None:
        server = SimulatorServer(config, host, port)
        await server.start()
        tune_gc()  # thousands of calls in flight: full collections would hold the answers due meanwhile
        print(f"simulator listening on http://{host}:{server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await server.stop()

    runtime.run(serve(), loop)
