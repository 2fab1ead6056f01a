"""Configuration: `config/router.toml` loaded into typed Structs, with environment overrides.

Environment variables named `LLM_ROUTER__<SECTION>__<KEY>` (path segments joined by `__`,
case-insensitive, `-` and `.` in names written as `_`) override any key of the file; their values
are read as TOML values where they parse (numbers, booleans, arrays), else as strings.
`KAFKA_BOOTSTRAP_SERVERS` overrides `kafka.bootstrap_servers`. A wrong or unknown key fails at
start with its path.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

ENV_PREFIX = "LLM_ROUTER__"
CONFIG_ENV = "LLM_ROUTER_CONFIG"


def _defaults_dir() -> Path:
    """The folder of the default configurations: the repo's config/, which a wheel carries as
    worker/defaults/ (pyproject.toml maps the one onto the other, so there is no copy to keep in step)."""
    package = Path(__file__).resolve().parent
    installed = package / "defaults"
    # An editable install or a bare checkout has no worker/defaults/: the files are in config/ beside it.
    return installed if installed.is_dir() else package.parent / "config"


DEFAULTS_DIR = _defaults_dir()
DEFAULT_CONFIG = DEFAULTS_DIR / "router.toml"

PosInt = Annotated[int, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]


EventLoopChoice = Literal["auto", "uvloop", "asyncio"]  # worker/runtime.py
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # providers.*.max_response_bytes: hundreds of times an LLM's answer


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key's path."""


class Topics(Struct, forbid_unknown_fields=True):
    jobs: str = "llm.jobs"
    results: str = "llm.results"
    costs: str = "llm.costs"
    dlq: str = "llm.dlq"
    state: str = "llm.router-state"
    finished: str = "llm.finished"
    feedback: str = "llm.feedback"
    routes: str = "llm.routes"
    evidence: str = "llm.router-evidence"
    # Jobs parked for a provider's batch API and their open batches (compacted: a record per job and batch).
    batches: str = "llm.batches"


class KafkaConfig(Struct, forbid_unknown_fields=True):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "llm-router"
    group_id: str = "llm-router"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username_env: str = "KAFKA_SASL_USERNAME"
    sasl_password_env: str = "KAFKA_SASL_PASSWORD"
    # SSL and SASL_SSL: the broker's certificate is always verified, against the system's CAs and the CAs in
    # `ssl_cafile` besides (a PEM file, or a directory hashed by `openssl rehash`; "": the system's only), and
    # must name the host connected to unless `ssl_check_hostname` is false.
    ssl_cafile: str = ""
    ssl_check_hostname: bool = True
    # A client certificate for brokers that ask for one (ssl.client.auth): its PEM chain, its private key ("":
    # in `ssl_certfile`), and the environment variable holding the key's password when the key is encrypted.
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password_env: str = "KAFKA_SSL_KEY_PASSWORD"
    # How long a command (and the worker at start) waits for a broker before it gives up (exit 1); a broker
    # that refuses the credentials, or whose certificate fails verification, stops it at once (exit 2).
    connect_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    linger_ms: Annotated[int, Meta(ge=0)] = 5
    max_request_bytes: PosInt = 8 * 1024 * 1024
    session_timeout_ms: PosInt = 10000
    heartbeat_interval_ms: PosInt = 1000
    max_poll_interval_ms: PosInt = 300000
    # Exactly-once delivery only (worker.delivery): the producer's transactional id ("" gives
    # "{group_id}-{hostname}-{pid}"; a stable id per replica lets a restarted replica fence its
    # predecessor at once), and how long a dead replica's open transaction blocks read_committed readers.
    transactional_id: str = ""
    transaction_timeout_ms: PosInt = 10000
    # How long the routes topic keeps a job's route: feedback for an older job is an unknown job.
    routes_retention_s: PosInt = 604800
    topics: Topics = msgspec.field(default_factory=Topics)


class WorkerConfig(Struct, forbid_unknown_fields=True):
    max_in_flight: PosInt = 4096
    batch_max_records: PosInt = 200
    poll_timeout_ms: PosInt = 200
    commit_interval_ms: PosInt = 500
    shutdown_grace_s: NonNegFloat = 30.0
    max_job_bytes: PosInt = 1024 * 1024
    default_max_output_tokens: PosInt = 1024
    max_retries_per_job: Annotated[int, Meta(ge=0)] = 3
    retry_base_s: NonNegFloat = 0.5
    retry_cap_s: NonNegFloat = 8.0
    # "at_least_once": outputs are published as jobs finish, offsets committed after them (a killed
    # replica's in-flight jobs are redone: duplicates possible, nothing lost). "exactly_once": each
    # commit is one Kafka transaction holding the outputs of the finished prefix and its offsets, so
    # read_committed consumers see each result once (Apache Kafka; provider calls can still repeat).
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # The event loop of the worker's process (worker/runtime.py): "auto" is uvloop where installed.
    event_loop: EventLoopChoice = "auto"
    # Idempotence by job id (worker/pipeline/finished.py): a job whose id finished within this many
    # seconds is not run again, its first result is published again; 0 turns it off.
    dedupe_window_s: Annotated[int, Meta(ge=0)] = 86400
    # The most finished ids a replica remembers (the oldest forgotten first); a forgotten id runs again.
    dedupe_max_ids: PosInt = 1_000_000
    # The HTTP endpoint (worker/observability/endpoint.py): /metrics (Prometheus text), /healthz and
    # /readyz on this port while the worker runs; 0 turns it off. On every interface unless http_host names one.
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    http_host: str = ""


# The provider kinds whose batch API is used unless a provider's `batch_api` says otherwise.
BATCH_API_KINDS = frozenset({"openai", "anthropic", "gemini"})


class ProviderConfig(Struct, forbid_unknown_fields=True):
    kind: Literal["openai", "anthropic", "gemini", "openai_compatible", "echo"]
    # The environment variable holding the API key; "" for a server that takes none (self-hosted).
    api_key_env: str = ""
    base_url: str = ""
    # OpenAI-compatible servers' quirks: "vllm", "ollama", "together", "groq" (or "" for OpenAI itself).
    compat: Literal["", "vllm", "ollama", "together", "groq"] = ""
    anthropic_version: str = "2023-06-01"
    # anthropic only: mark a system prompt long enough to be cached with `cache_control` (cache reads bill 0.1x).
    prompt_cache: bool = True
    timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    max_connections: PosInt = 1000
    http_client: Literal["lean", "aiohttp", "httpx"] = "lean"
    # CAs trusted besides the system's (a PEM file, or a directory hashed by `openssl rehash`); "": none.
    ca_bundle: str = ""
    # The largest answer body taken, after gzip decoding; a larger one fails the attempt (kind "server").
    max_response_bytes: PosInt = MAX_RESPONSE_BYTES
    # Rate limits per minute (0: none), for this provider's key across every replica.
    requests_per_minute: Annotated[int, Meta(ge=0)] = 0
    tokens_per_minute: Annotated[int, Meta(ge=0)] = 0
    input_tokens_per_minute: Annotated[int, Meta(ge=0)] = 0
    output_tokens_per_minute: Annotated[int, Meta(ge=0)] = 0
    # echo only: simulated call time and share of refused attempts.
    latency_ms: NonNegFloat = 0.0
    failure_rate: Probability = 0.0
    # Whether jobs may go through the provider's batch API (worker.providers.batch_api). Unset: true for the
    # kinds that have one (openai, anthropic, gemini), false for the others. An OpenAI-compatible server may
    # set it when it serves OpenAI's Files and Batches endpoints (as Together's and Fireworks' do; vLLM's
    # and Ollama's servers do not); echo may (its batches are in-process, for the benchmark).
    batch_api: bool | None = None
    # What the provider bills for a batch line, as a share of the synchronous price (0.5: half price).
    batch_discount: Annotated[float, Meta(gt=0, le=1)] = 0.5

    def __post_init__(self) -> None:
        if self.batch_api is None:
            self.batch_api = self.kind in BATCH_API_KINDS


# (cached read, cache write) prices as shares of the input price, by provider kind, from the providers'
# published pricing: OpenAI bills cached input at half price and no write premium (openai.com/api/pricing,
# "Prompt caching" guide; gpt-4o $2.50 -> $1.25); Anthropic bills cache reads 0.1x and 5-minute cache
# writes 1.25x (docs.anthropic.com "Prompt caching" pricing); Gemini 2.5 bills cached input 0.25x and
# implicit caching no writes (ai.google.dev/gemini-api/docs/pricing, "context caching price"; newer
# Vertex docs give 0.1x for 2.5 models: set cached_input_usd_per_mtok where that is the bill). An
# OpenAI-compatible server's caching is its own: 1x unless configured.
CACHE_PRICE_RATIOS: dict[str, tuple[float, float]] = {
    "openai": (0.5, 1.0),
    "anthropic": (0.1, 1.25),
    "gemini": (0.25, 1.0),
    "openai_compatible": (1.0, 1.0),
    "echo": (1.0, 1.0),
}


# What a model can do beyond text, JSON mode and non-strict schemas (docs/architecture.md, capabilities):
# call tools, read images, answer under a strict JSON Schema natively, and take a sampling seed.
CAPABILITIES = ("tools", "vision", "json_schema", "seed")


class ModelConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    provider: str
    # The provider's own name for the model (default: the name in this table).
    api_model: str = ""
    input_usd_per_mtok: NonNegFloat
    output_usd_per_mtok: NonNegFloat
    # Input tokens read from / written to the provider's prompt cache (default: CACHE_PRICE_RATIOS of the input price).
    cached_input_usd_per_mtok: NonNegFloat | None = None
    cache_write_usd_per_mtok: NonNegFloat | None = None
    context_window: PosInt
    latency_ms_per_100_output_tokens: NonNegFloat = 1000.0
    quality: dict[str, Probability] = {}
    # Rate limits per minute (0: none), for this model on its provider's key across every replica.
    requests_per_minute: Annotated[int, Meta(ge=0)] = 0
    tokens_per_minute: Annotated[int, Meta(ge=0)] = 0
    input_tokens_per_minute: Annotated[int, Meta(ge=0)] = 0
    output_tokens_per_minute: Annotated[int, Meta(ge=0)] = 0
    # What the model can do: a job needing a capability is routed only to models that have it ("seed" is
    # soft: without it the job's seed is left out of the call and named in the attempt's dropped_params).
    capabilities: list[str] = []


class TaskConfig(Struct, forbid_unknown_fields=True):
    models: Annotated[list[str], Meta(min_length=1)]
    quality: str = ""
    max_output_tokens: PosInt | None = None
    # The soft floor of the task's jobs that set none (absent: routing.default_accuracy_floor, or
    # default_verified_floor for verifiable jobs).
    accuracy_floor: Probability | None = None


class ClassifierRule(Struct, forbid_unknown_fields=True):
    task: str
    keywords: list[str] = []
    # Python regular expressions, searched in the prompt (case-insensitive).
    patterns: list[str] = []


class ClassifierConfig(Struct, forbid_unknown_fields=True):
    default_task: str
    long_context_task: str = ""
    long_context_chars: PosInt = 10000
    rules: list[ClassifierRule] = []


class RoutingConfig(Struct, forbid_unknown_fields=True):
    # cheapest_correct: the chain with the lowest expected cost per correct answer; fixed: the task's
    # first model only (the reference router); single: `single_model` for every job.
    policy: Literal["cheapest_correct", "fixed", "single"] = "cheapest_correct"
    single_model: str = "gpt-4o"
    # Floors for jobs that set none, soft (when no chain reaches one, the most reliable chain is used):
    # one for jobs whose wrong answers cannot be caught, one for verifiable jobs (checks, JSON), which
    # reach a high floor cheaply through a chain.
    default_accuracy_floor: Probability = 0.92
    default_verified_floor: Probability = 0.95
    max_chain: Annotated[int, Meta(ge=1, le=5)] = 3
    # Output tokens expected, as a share of the job's output cap, for cost and latency estimates.
    expected_output_share: Annotated[float, Meta(gt=0, le=1)] = 0.5
    prior_strength: Annotated[float, Meta(gt=0)] = 20.0
    decay: Annotated[float, Meta(gt=0, le=1)] = 0.98
    unknown_quality: Probability = 0.5
    breaker_failures: PosInt = 5
    breaker_cooldown_s: NonNegFloat = 10.0
    job_deadline_s: Annotated[float, Meta(gt=0)] = 600.0
    state_publish_interval_s: Annotated[float, Meta(gt=0)] = 5.0
    # A provider out of rotation (quota, auth) gets one probe job this many seconds later.
    rotation_retry_s: Annotated[float, Meta(gt=0)] = 300.0
    # Agreement plans for jobs without checks: up to this many models asked in parallel, their answer taken
    # when they all agree (1: no agreement plans).
    max_agreement: Annotated[int, Meta(ge=1, le=4)] = 2
    # How often two models' wrong answers to the same prompt agree, before feedback teaches it.
    wrong_agreement_prior: Probability = 0.2
    # A judge for every unverifiable job of judge_tasks (empty: every task type): the model that grades.
    judge_model: str = ""
    judge_tasks: list[str] = []


class BatchConfig(Struct, forbid_unknown_fields=True):
    """Provider batch APIs for jobs that can wait (`complete_within_s`): docs/architecture.md, "Batch APIs"."""

    enabled: bool = True
    # A job goes by batch only while its deadline is at least this far: room for the batch and, when the
    # batch is late, a synchronous chain (routing.job_deadline_s) after it. Most batches end within the hour.
    min_window_s: Annotated[float, Meta(gt=0)] = 3600.0
    # A batch goes when it holds max_requests requests or its first request has waited max_wait_s.
    max_wait_s: Annotated[float, Meta(gt=0)] = 60.0
    # Under every provider's own limit (OpenAI 50,000, Anthropic 100,000) and small enough that the batch's
    # record (its job ids) fits in one Kafka message.
    max_requests: Annotated[int, Meta(ge=1, le=10000)] = 5000
    poll_interval_s: Annotated[float, Meta(gt=0)] = 30.0
    # Each provider's batch queue limit: the tokens of its open batches (prompt estimates and output caps);
    # 0: none. Batch traffic counts here, not against the synchronous requests and tokens per minute.
    max_enqueued_tokens: Annotated[int, Meta(ge=0)] = 0


class RateLimitsConfig(Struct, forbid_unknown_fields=True):
    # A share of every limit kept unused, for the jitter between our clock and the provider's.
    margin: Annotated[float, Meta(ge=0, lt=1)] = 0.02
    # "local": each replica takes its share of every limit by its partitions of the jobs topic (no
    # extra infrastructure). "redis://host:port/db": one exact limiter in Redis for all replicas.
    backend: str = "local"
    # With Redis: the allowance is taken in blocks of this many seconds' worth of each limit.
    block_s: Annotated[float, Meta(gt=0, le=5)] = 0.1
    redis_prefix: str = "llm-router:rate-limits:"
    # When this many jobs wait for a model's allowance, a job goes to the next model of its chain that
    # has capacity now, if the reordered chain still clears its floor and budget (0: never). Beyond
    # that, jobs wait, and worker.max_in_flight pauses the partitions rather than buffer more.
    reroute_waiting: Annotated[int, Meta(ge=0)] = 50

    def __post_init__(self) -> None:
        if self.backend != "local" and not self.backend.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f'backend must be "local" or a redis://, rediss:// or unix:// URL, not {self.backend!r}')


class TelemetryConfig(Struct, forbid_unknown_fields=True):
    # A job's process span is a child of the producer's send span ("producer": one trace from the
    # producer to the result) or the root of a trace of its own ("link"); it links to the producer's
    # span either way. Exporters, sampling and endpoints come from the standard OTEL_* variables.
    process_parent: Literal["producer", "link"] = "producer"


class TenantConfig(Struct, forbid_unknown_fields=True):
    """A tenant's settings (`[tenants.NAME]`, NAME the `tenant` its jobs carry)."""

    # USD its jobs may spend a UTC day, summed from their cost events across every replica; once reached,
    # its jobs fail with budget_exceeded. 0: no budget (a tenant named here is exempt from tenant_defaults).
    budget_usd_per_day: NonNegFloat = 0.0


class TenantDefaults(Struct, forbid_unknown_fields=True):
    """What a tenant not named in `[tenants]` gets (jobs without a tenant count as the tenant "")."""

    # Its budget: USD a UTC day; 0: none.
    budget_usd_per_day: NonNegFloat = 0.0


class Config(Struct, forbid_unknown_fields=True):
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    tasks: dict[str, TaskConfig]
    classifier: ClassifierConfig
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    rate_limits: RateLimitsConfig = msgspec.field(default_factory=RateLimitsConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    tenants: dict[str, TenantConfig] = {}
    tenant_defaults: TenantDefaults = msgspec.field(default_factory=TenantDefaults)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the configuration file (default: $LLM_ROUTER_CONFIG, else the shipped config/router.toml) and
    apply the environment's overrides."""
    env = os.environ if env is None else env
    path = Path(path or env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    raw = read_toml(path)
    overridden = apply_env_overrides(raw, env)
    return parse_config(raw, source=str(path), overridden=overridden)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a mapping; ConfigError naming the file when it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def parse_config(raw: dict[str, Any], source: str = "config", overridden: Mapping[str, str] | None = None) -> Config:
    """Validate a raw mapping into a Config, with errors that name the key's path and where its value came
    from: `source`, or the environment variable that `overridden` (key path -> variable) says set it."""
    overridden = overridden or {}
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_blame([describe_validation_error(exc, raw, Config)], source, overridden)) from None
    _check_references(config, source, overridden)
    _default_cache_prices(config)
    return config


def _default_cache_prices(config: Config) -> None:
    """Each model's cached and cache-write prices left unset: its provider kind's ratio to its input price."""
    for model in config.models.values():
        cached, write = CACHE_PRICE_RATIOS[config.providers[model.provider].kind]
        if model.cached_input_usd_per_mtok is None:
            model.cached_input_usd_per_mtok = model.input_usd_per_mtok * cached
        if model.cache_write_usd_per_mtok is None:
            model.cache_write_usd_per_mtok = model.input_usd_per_mtok * write


def _blame(errors: list[str], source: str, overridden: Mapping[str, str]) -> str:
    """The errors (each `key.path: why`) prefixed with their origin: the variable that set the key, else the file."""
    from_file, from_env = [], []
    for error in errors:
        key = error.partition(":")[0]
        variable = next(
            (v for path, v in overridden.items() if key == path or key.startswith((f"{path}.", f"{path}["))), None
        )
        if variable:
            from_env.append(f"environment {variable}: {error}")
        else:
            from_file.append(error)
    return "; ".join(([f"{source}: " + "; ".join(from_file)] if from_file else []) + from_env)


def describe_validation_error(exc: msgspec.ValidationError, raw: dict[str, Any], root: type | None = None) -> str:
    """Turn msgspec's `... - at `$.a[...].b`` into `a.<key>.b: ...`, naming the key itself."""
    message, _, where = str(exc).partition(" - at `$")
    tokens = re.findall(r"\.[^.\[`]+|\[[^\]]*\]", where.rstrip("`"))
    path = _resolve_keys(raw, tokens, message, root or Config)
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return f"{'.'.join([*path, unknown.group(1)])}: unknown key"
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if missing:
        return f"{'.'.join([*path, missing.group(1)])}: required key is missing"
    return f"{'.'.join(path) or '(top level)'}: {message}"


def _resolve_keys(raw: dict[str, Any], tokens: list[str], message: str, root: type) -> list[str]:
    """Name the dict keys msgspec reports as `[...]`: the one whose entry alone repeats the error."""
    path: list[str] = []
    node: Any = raw
    for token in tokens:
        if token.startswith("."):
            path.append(token[1:])
            node = node.get(token[1:]) if isinstance(node, dict) else None
        elif token == "[...]" and isinstance(node, dict):
            key = next((k for k in node if _fails_alone(raw, path, k, message, root)), "?")
            path.append(str(key))
            node = node.get(key)
        else:
            path[-1:] = [f"{path[-1] if path else ''}{token}"]
            index = token[1:-1]
            node = node[int(index)] if isinstance(node, list) and index.isdigit() and int(index) < len(node) else None
    return path


def _fails_alone(raw: dict[str, Any], path: list[str], key: str, message: str, root: type) -> bool:
    trial = copy.deepcopy(raw)
    table = trial
    for segment in path:
        table = table[segment.split("[")[0]]
    for other in [k for k in table if k != key]:
        del table[other]
    try:
        msgspec.convert(trial, root)
    except msgspec.ValidationError as exc:
        return str(exc).startswith(message)
    return False


def _check_references(config: Config, source: str, overridden: Mapping[str, str]) -> None:
    errors = []
    for name, model in config.models.items():
        if model.provider not in config.providers:
            errors.append(f"models.{name}.provider: unknown provider {model.provider!r}")
        errors.extend(
            f"models.{name}.capabilities[{i}]: unknown capability {capability!r} (known: {', '.join(CAPABILITIES)})"
            for i, capability in enumerate(model.capabilities)
            if capability not in CAPABILITIES
        )
    for name, task in config.tasks.items():
        for i, model_name in enumerate(task.models):
            if model_name not in config.models:
                errors.append(f"tasks.{name}.models[{i}]: unknown model {model_name!r}")
    for i, rule in enumerate(config.classifier.rules):
        if rule.task not in config.tasks:
            errors.append(f"classifier.rules[{i}].task: unknown task {rule.task!r}")
        if not rule.keywords and not rule.patterns:
            errors.append(f"classifier.rules[{i}]: needs keywords or patterns")
        for j, pattern in enumerate(rule.patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                errors.append(f"classifier.rules[{i}].patterns[{j}]: not a valid regular expression: {exc}")
    for key in ("default_task", "long_context_task"):
        task = getattr(config.classifier, key)
        if task and task not in config.tasks:
            errors.append(f"classifier.{key}: unknown task {task!r}")
    for name, provider in config.providers.items():
        if provider.kind not in ("echo",) and not provider.base_url:
            errors.append(f"providers.{name}.base_url: required for kind {provider.kind!r}")
    if config.routing.single_model not in config.models:
        errors.append(f"routing.single_model: unknown model {config.routing.single_model!r}")
    if config.batch.enabled and config.batch.min_window_s <= config.routing.job_deadline_s:
        errors.append(
            f"batch.min_window_s: {config.batch.min_window_s:g} leaves no room for a batch before the synchronous"
            f" chain a late batch falls back to (routing.job_deadline_s {config.routing.job_deadline_s:g})"
        )
    if config.routing.judge_model and config.routing.judge_model not in config.models:
        errors.append(f"routing.judge_model: unknown model {config.routing.judge_model!r}")
    errors.extend(
        f"routing.judge_tasks[{i}]: unknown task {task!r}"
        for i, task in enumerate(config.routing.judge_tasks)
        if task not in config.tasks
    )
    if config.kafka.max_request_bytes <= config.worker.max_job_bytes:
        errors.append(
            "kafka.max_request_bytes: must exceed worker.max_job_bytes (a dead letter carries the job's bytes)"
        )
    if errors:
        raise ConfigError(_blame(errors, source, overridden))


def _norm(name: str) -> str:
    return re.sub(r"[-.]", "_", name).lower()


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Write LLM_ROUTER__A__B=value (and KAFKA_BOOTSTRAP_SERVERS) into the raw mapping, in place; returns each
    overridden key's path (`a.b`) with the variable that set it, so that an error can name the variable."""
    overrides = [(k[len(ENV_PREFIX) :].split("__"), v, k) for k, v in env.items() if k.upper().startswith(ENV_PREFIX)]
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        overrides.append((["kafka", "bootstrap_servers"], env["KAFKA_BOOTSTRAP_SERVERS"], "KAFKA_BOOTSTRAP_SERVERS"))
    overridden: dict[str, str] = {}
    for segments, value, variable in sorted(overrides):
        if not all(segments):
            raise ConfigError(f"{ENV_PREFIX}{'__'.join(segments)}: empty path segment")
        table = raw
        path: list[str] = []
        for i, segment in enumerate(segments):
            key = next((k for k in table if _norm(k) == _norm(segment)), None)
            if key is None:
                key = segment.lower()
                if not _known_path([*path, key]):
                    raise ConfigError(
                        f"environment {ENV_PREFIX}{'__'.join(segments)}: unknown key {'.'.join([*path, key])}"
                    )
            path.append(key)
            if i == len(segments) - 1:
                table[key] = _parse_env_value(value)
                overridden[".".join(path)] = variable
            else:
                table = table.setdefault(key, {})
                if not isinstance(table, dict):
                    raise ConfigError(f"environment {ENV_PREFIX}{'__'.join(segments)}: {'.'.join(path)} is not a table")
    return overridden


def _known_path(path: list[str]) -> bool:
    """Whether a key absent from the file is still a field of the Config Structs (a default)."""
    node: Any = Config
    for key in path:
        if typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]  # any key of a table of Structs
            continue
        fields = (
            {f.name: f.type for f in msgspec.structs.fields(node)}
            if isinstance(node, type) and issubclass(node, Struct)
            else None
        )
        if fields is None or key not in fields:
            return False
        node = fields[key]
    return True


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
