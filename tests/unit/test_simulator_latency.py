"""The simulator's latency runs from a request's arrival, not from when its handler got to it."""

import asyncio
import time

import msgspec
import orjson

from worker.simulator.lean_server import Request
from worker.simulator.server import Simulator
from worker.simulator.settings import load_simulator_config


def _simulator() -> Simulator:
    config = load_simulator_config()
    # gpt-4o's answer has a fixed length with one output token; its latency is per 100 output tokens.
    model = msgspec.structs.replace(
        config.models["gpt-4o"], latency_jitter=0.0, output_tokens=1, requests_per_minute=0, tokens_per_minute=0
    )
    config = msgspec.structs.replace(config, latency_scale=1.0, models=config.models | {"gpt-4o": model})
    return Simulator(config)


async def _call(simulator: Simulator, arrived: float) -> tuple[float, dict]:
    handler, _, _ = simulator.routes().find("POST", "/v1/chat/completions")
    assert handler is not None
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64})
    request = Request("POST", "/v1/chat/completions", {"authorization": "Bearer k"}, {}, body, arrived=arrived)
    started = time.monotonic()
    response = await handler(request)
    return time.monotonic() - started, orjson.loads(response.body)


def test_a_reply_comes_its_latency_after_the_request_arrived_however_late_the_handler_started():
    simulator = _simulator()

    async def main() -> tuple[float, float, float]:
        # The latency of one answer at this model's settings, from a request handled as it arrives.
        on_time, reply = await _call(simulator, time.monotonic())
        assert reply["choices"][0]["message"]["content"]
        # The same request, handled half that after it arrived (a busy simulator): only the rest is waited.
        late, _ = await _call(simulator, time.monotonic() - on_time / 2)
        # Handled after its whole latency had passed: answered at once.
        overdue, _ = await _call(simulator, time.monotonic() - 10)
        return on_time, late, overdue

    on_time, late, overdue = asyncio.run(main())
    assert on_time > 0.08  # the model has a latency worth measuring
    assert abs(late - on_time / 2) < 0.025, (on_time, late)
    assert overdue < 0.05, overdue
