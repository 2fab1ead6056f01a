"""The event loop chosen by `worker.event_loop`: uvloop where installed ("auto"), or asyncio's own."""

import asyncio

import pytest
import uvloop

from worker import runtime
from worker.config import ConfigError, load_config


async def running_loop() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop_and_asyncio_on_the_standard_loop():
    assert runtime.run(running_loop(), "auto") is uvloop.Loop
    assert runtime.run(running_loop(), "uvloop") is uvloop.Loop
    standard = runtime.run(running_loop(), "asyncio")
    assert standard is not uvloop.Loop and issubclass(standard, asyncio.BaseEventLoop)
    assert [runtime.loop_name(c) for c in ("auto", "uvloop", "asyncio")] == ["uvloop", "uvloop", "asyncio"]


def test_auto_falls_back_to_asyncio_and_uvloop_says_what_is_missing_when_uvloop_cannot_be_imported(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert runtime.loop_factory("auto") is None
    assert runtime.run(running_loop(), "auto") is not uvloop.Loop
    with pytest.raises(ConfigError, match="uvloop cannot be imported"):
        runtime.loop_factory("uvloop")


def test_the_choice_is_configured_and_checked():
    assert load_config(env={}).worker.event_loop == "auto"
    assert load_config(env={"LLM_ROUTER__WORKER__EVENT_LOOP": "asyncio"}).worker.event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(env={"LLM_ROUTER__WORKER__EVENT_LOOP": "trio"})
    with pytest.raises(ValueError, match="unknown event loop"):
        runtime.loop_factory("trio")  # type: ignore[arg-type]  # a value the type forbids, on purpose
