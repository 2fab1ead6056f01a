"""A provider that accepts connections and never answers: each attempt times out after the
provider's timeout_s, is retried, then the job escalates to the next model and finishes ok."""

import asyncio

from tests.integration.helpers import Setup, collect, job_bytes, make_topics, produce
from worker.cli.runs import running_worker
from worker.messages import Result
from worker.providers import build_providers

JOBS = 40
TIMEOUT_S = 1
HANGING_MODEL = "gemini-2.5-flash"  # the first model of a simple question's plan


class HangingServer:
    """A TCP server on loopback that reads whatever comes and never writes a byte back."""

    def __init__(self) -> None:
        self.connections = 0
        self.bytes_read = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            while chunk := await reader.read(65536):
                self.bytes_read += len(chunk)
        finally:
            self._open.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()


def test_a_provider_that_never_answers_times_out_each_attempt_and_the_jobs_escalate_and_finish_ok(
    bootstrap, report, summary
):
    server = HangingServer()

    async def scenario() -> list[Result]:
        port = await server.start()
        setup = Setup(
            bootstrap,
            # The gemini provider becomes an OpenAI-compatible server on the hanging port (no key);
            # the others stay in-process echo providers.
            LLM_ROUTER__PROVIDERS__GEMINI__KIND="openai_compatible",
            LLM_ROUTER__PROVIDERS__GEMINI__BASE_URL=f"http://127.0.0.1:{port}/v1",
            LLM_ROUTER__PROVIDERS__GEMINI__API_KEY_ENV='""',
            LLM_ROUTER__PROVIDERS__GEMINI__TIMEOUT_S=TIMEOUT_S,
            # One retry of the same model, then the next model; the breaker stays closed so that
            # every job meets the hang (an open breaker would plan around it).
            LLM_ROUTER__WORKER__MAX_RETRIES_PER_JOB=1,
            LLM_ROUTER__WORKER__RETRY_BASE_S=0.1,
            LLM_ROUTER__ROUTING__BREAKER_FAILURES=1000,
        )
        assert (
            setup.config.providers["gemini"].api_key_env == ""
            and setup.config.providers["gemini"].kind == "openai_compatible"
        )
        await make_topics(setup)
        ids = [f"hang-{i}" for i in range(JOBS)]
        try:
            async with running_worker(setup.config, build_providers(setup.config, env={})):
                await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
                outputs = await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=90, settle_s=0.5)
        finally:
            await server.stop()
        return outputs.results

    results = asyncio.run(scenario())
    by_job = {r.job_id: r for r in results}
    timeouts = [a for r in results for a in r.attempts if a.model == HANGING_MODEL]
    finals = {r.model for r in results}
    summary(
        f"hanging provider: jobs={JOBS} ok={sum(r.status == 'ok' for r in results)} "
        f"timeouts_on_{HANGING_MODEL}={len(timeouts)} "
        f"connections={server.connections} answered_by={sorted(m for m in finals if m)}"
    )
    report(
        f"hanging provider: attempt latencies on {HANGING_MODEL} "
        f"{min(a.latency_ms for a in timeouts):.0f}..{max(a.latency_ms for a in timeouts):.0f} ms "
        f"(timeout_s={TIMEOUT_S}); job latencies "
        f"{min(r.latency_ms for r in results):.0f}..{max(r.latency_ms for r in results):.0f} ms"
    )
    assert len(by_job) == JOBS
    assert server.connections > 0 and server.bytes_read > 0, "the requests reached the hanging server"
    for result in by_job.values():
        assert result.status == "ok", f"{result.job_id} failed: {result.error}"
        hung = [a for a in result.attempts if a.model == HANGING_MODEL]
        assert [a.number for a in hung] == [1, 2], (
            f"{result.job_id}: tried on {HANGING_MODEL} first, then retried once: {result.attempts}"
        )
        for attempt in hung:
            assert attempt.outcome == "failed" and attempt.error is not None and attempt.error.kind == "timeout", (
                attempt
            )
            assert attempt.latency_ms >= TIMEOUT_S * 1000 * 0.9, f"the attempt waited out its timeout: {attempt}"
        last = result.attempts[-1]
        assert last.outcome == "ok" and last.model != HANGING_MODEL and result.model == last.model, result.attempts
        assert len(result.attempts) == 3
