"""`config show` (the effective configuration, secrets redacted) and `config check` (load, validate, warn)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import orjson

from worker.config import CONFIG_ENV, DEFAULT_CONFIG, Config, ConfigError, load_config

REDACTED = "***"
# A key one of whose words is one of these holds a secret; a key ending in `_env` holds the NAME of the
# variable that holds it (api_key_env, sasl_password_env), which is shown.
_SECRET_WORDS = {"password", "passwd", "secret", "token", "key", "apikey", "credential", "credentials"}


def is_secret_key(key: str) -> bool:
    """Whether a configuration key names a secret (`password`, `api_key`), not the variable holding one
    (`api_key_env`) nor a count (`tokens_per_minute`)."""
    words = re.split(r"[_\-.]", key.lower())
    return words[-1] != "env" and bool(_SECRET_WORDS.intersection(words))


def redact(value: Any, key: str = "") -> Any:
    """`value` with every string under a secret key, and the password of every URL, replaced by ***."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return REDACTED if value and is_secret_key(key) else _redact_url(value)
    return value


def _redact_url(text: str) -> str:
    if "://" not in text or "@" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def to_toml(table: dict[str, Any]) -> str:
    """A mapping of builtins (str, int, float, bool, lists, nested mappings) as TOML; None values left out."""
    lines: list[str] = []
    _write_table(lines, [], table)
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if v is not None and not _is_table(v) and not _is_table_array(v)}
    if path and (scalars or not any(_is_table(v) for v in table.values())):
        lines += ["", f"[{'.'.join(_key(p) for p in path)}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for k, v in table.items():
        if _is_table(v):
            _write_table(lines, [*path, k], v)
        elif _is_table_array(v):
            for item in v:
                lines += ["", f"[[{'.'.join(_key(p) for p in [*path, k])}]]"]
                lines += [f"{_key(ik)} = {_value(iv)}" for ik, iv in item.items() if iv is not None]


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else orjson.dumps(key).decode()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def config_path(args: argparse.Namespace) -> Path:
    """The file load_config reads for --config."""
    return Path(args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def cmd_config_show(args: argparse.Namespace) -> int:
    """`config show`: the effective configuration (file and environment), secrets redacted, as TOML or JSON."""
    config = load_config(args.config)
    shown = redact(msgspec.to_builtins(config))
    if args.json:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"# {config_path(args)}, with the environment's overrides\n" + to_toml(shown), end="")
    return 0


def missing_keys(config: Config, env: dict[str, str] | os._Environ[str]) -> list[str]:
    """A warning per provider whose API-key variable is named but unset or empty."""
    return [
        f"warning: providers.{name}: {provider.api_key_env} is not set"
        for name, provider in config.providers.items()
        if provider.kind != "echo" and provider.api_key_env and not env.get(provider.api_key_env)
    ]


def cmd_config_check(args: argparse.Namespace) -> int:
    """`config check`: `ok: PATH` (exit 0) with a warning per provider without its key; a ConfigError (exit 2)
    when the configuration is wrong or no provider has its key (the worker would not start)."""
    config = load_config(args.config)
    missing = missing_keys(config, os.environ)
    if len(missing) == len(config.providers):  # the worker would not start: say so as it would
        variables = ", ".join(p.api_key_env for p in config.providers.values())
        raise ConfigError(f"no usable provider: set at least one of {variables}")
    for line in missing:
        print(line, file=sys.stderr)
    print(f"ok: {config_path(args)}")
    return 0
