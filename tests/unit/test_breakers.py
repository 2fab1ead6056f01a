"""Circuit breakers: closed, open after failures, half-open for one probe after the cooldown."""

from worker.execution.breakers import Breaker, Breakers, BreakerState


def test_circuit_breaker_states():
    breaker = Breaker(threshold=3, cooldown_s=10)
    for t in (0, 1):
        breaker.failed(t)
        assert breaker.state(t) is BreakerState.CLOSED
    breaker.failed(2)
    assert breaker.state(2) is BreakerState.OPEN and not breaker.allows(5)
    assert breaker.state(12) is BreakerState.HALF_OPEN and breaker.allows(12)
    breaker.start_call(12)
    assert not breaker.allows(12), "one probe at a time"
    breaker.failed(13)
    assert breaker.state(13) is BreakerState.OPEN, "a failed probe opens it again"
    breaker.start_call(24)
    breaker.succeeded()
    assert breaker.state(24) is BreakerState.CLOSED and breaker.allows(24)


def test_breakers_block_a_provider_while_its_breaker_is_open_or_probing_and_not_once_it_closes():
    breakers = Breakers(threshold=2, cooldown_s=10)
    gemini, llama = breakers.of("gemini"), breakers.of("llama")
    assert breakers.blocked(0) == frozenset()
    gemini.failed(0)
    llama.failed(0)
    assert breakers.blocked(0) == frozenset(), "below the threshold"
    gemini.failed(1)
    assert breakers.blocked(1) == {"gemini"}
    assert breakers.blocked(11) == frozenset(), "half-open: the probe may go"
    gemini.start_call(11)
    assert breakers.blocked(11) == {"gemini"}, "while the probe is out"
    gemini.succeeded()
    llama.failed(12)
    assert breakers.blocked(12) == {"llama"}
    llama.succeeded()
    assert breakers.blocked(12) == frozenset()


def test_a_breaker_tells_when_it_opens_and_closes_not_at_each_failure():
    changes = []
    breakers = Breakers(threshold=2, cooldown_s=10, on_change=lambda *change: changes.append(change))
    gemini = breakers.of("gemini")
    gemini.failed(0)
    assert changes == []
    gemini.failed(1)
    assert changes == [("gemini", BreakerState.OPEN, 2)]
    gemini.start_call(12)
    gemini.failed(12)  # the probe failed: still open, nothing new to say
    gemini.failed(13)
    assert changes == [("gemini", BreakerState.OPEN, 2)]
    gemini.start_call(24)
    gemini.succeeded()
    assert changes[-1][:2] == ("gemini", BreakerState.CLOSED) and len(changes) == 2
    gemini.succeeded()
    assert len(changes) == 2, "closed already"
    assert breakers.states(24) == {"gemini": BreakerState.CLOSED}
