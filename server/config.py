"""The server's configuration: defaults, overridden by a TOML file, then by the environment.

Every setting has a file key and an ``IAM_EVAL_<KEY>`` environment variable
(``max_batch`` is ``IAM_EVAL_MAX_BATCH``); ``iam-eval serve`` options override both.
A bad value stops the server before it starts, naming the setting and where it came from.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "IAM_EVAL_"
TOKEN_SETTINGS = ("admin_token", "read_token", "check_token")
TOKEN_CHARACTERS = 16
"""The fewest characters a token may have; each is visible ASCII (no spaces), as gRPC metadata carries it."""


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and its source."""


@dataclass(frozen=True)
class ServerConfig:
    store: str = ""                 # a store directory, a store snapshot, or an account export (JSON)
    state_dir: str = ""             # where versions are kept; default: DIR/.versions or FILE.versions
    reseed: bool = False            # start a new version from ``store`` when it differs from the newest one kept
    aws_managed_policies: str = ""  # for an account export: where AWS's own managed policies are (JSON Lines)
    listen: str = "127.0.0.1:50051"  # host:port; port 0 picks a free port
    metrics_listen: str = "127.0.0.1:9464"  # Prometheus /metrics over HTTP; "" turns it off
    tls_cert: str = ""              # PEM server certificate chain; with tls_key, serve TLS
    tls_key: str = ""
    tls_client_ca: str = ""         # PEM CA bundle: require client certificates it signed (mutual TLS)
    admin_token: str = ""           # bearer token the PolicyAdmin API requires; "" disables that API
    read_token: str = ""            # bearer token for PolicyAdmin's reads only (admin_token reads too)
    check_token: str = ""           # bearer token the Authorizer API requires; "" lets any caller check
    max_batch: int = 10_000         # requests in one CheckBatch (or one stream message)
    max_message_bytes: int = 16 * 1024 * 1024  # largest request or response message
    max_inline_policy_bytes: int = 10_240  # largest policy document sent with a request (AWS: a role's inline)
    max_inline_policies_per_request: int = 20  # documents sent with one request or batch
    inline_cache_bytes: int = 64 * 1024 * 1024  # memory of the inline policy sets kept compiled, in each process
    spare_scratch_bytes: int = 512 * 1024 * 1024  # working buffers kept for reuse by all engines of a process
    workers: int = 16               # threads serving calls, in each process
    max_streams: int = 0            # CheckStreams open at once in each process; 0: half the workers
    stream_idle_seconds: float = 300.0  # a CheckStream that sends nothing for this long is cancelled
    processes: int = 1              # server processes sharing the port (SO_REUSEPORT) and the state directory
    watch_seconds: float = 0.5      # how often each process looks for versions another one wrote
    grace_seconds: float = 10.0     # how long SIGTERM waits for in-flight calls
    log_level: str = "info"
    log_format: str = "json"        # json (one object a line) or text

    @property
    def stream_limit(self) -> int:
        """Open CheckStreams allowed: each holds a worker thread for its life, so some must stay free."""
        return self.max_streams or max(1, self.workers // 2)

    @property
    def versions_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        store = Path(self.store)
        return store / ".versions" if store.is_dir() else store.with_name(store.name + ".versions")

    def check(self) -> ServerConfig:
        """Raise ``ConfigError`` for a value the server cannot run with."""
        if not self.store:
            raise ConfigError("store: no policy store given (--store DIR|FILE, or store in the config file)")
        if not Path(self.store).exists():
            raise ConfigError(f"store: {self.store} does not exist")
        for name in ("listen", "metrics_listen"):
            address = getattr(self, name)
            if address and not _is_address(address):
                raise ConfigError(f"{name}: {address!r} is not host:port")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key: give both (TLS) or neither (plaintext)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")
        if self.aws_managed_policies and not Path(self.aws_managed_policies).exists():
            raise ConfigError(f"aws_managed_policies: {self.aws_managed_policies} does not exist")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: {path} is not a readable file")
        for name in TOKEN_SETTINGS:
            token = getattr(self, name)
            if token and not _is_strong_token(token):  # never echoed: it is a secret
                raise ConfigError(f"{name}: a token must be at least {TOKEN_CHARACTERS} characters, each a "
                                  "letter, digit or punctuation mark (no spaces); leave it empty to go without")
        for name in ("max_batch", "max_message_bytes", "max_inline_policy_bytes", "max_inline_policies_per_request",
                     "workers", "processes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, not {getattr(self, name)}")
        for name in ("inline_cache_bytes", "spare_scratch_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be 0 or more, not {getattr(self, name)}")
        if not 0 <= self.max_streams < self.workers:
            raise ConfigError(f"max_streams: must be below workers ({self.workers}), so that streams never hold "
                              f"every thread, not {self.max_streams}")
        if self.stream_idle_seconds <= 0:
            raise ConfigError(f"stream_idle_seconds: must be positive, not {self.stream_idle_seconds}")
        if self.watch_seconds <= 0:
            raise ConfigError(f"watch_seconds: must be positive, not {self.watch_seconds}")
        if self.grace_seconds < 0:
            raise ConfigError(f"grace_seconds: must not be negative, not {self.grace_seconds}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format: {self.log_format!r} is not json or text")
        return self


def _is_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536


def _is_strong_token(token: str) -> bool:
    """Long enough not to be guessed, and only characters a client can send as they are: a blank or
    short token would otherwise be a credential anyone can present."""
    return len(token) >= TOKEN_CHARACTERS and all("!" <= char <= "~" for char in token)


def _typed(name: str, value: Any, source: str) -> Any:
    """``value`` as the setting's type; strings (from the environment) are converted."""
    kind = {f.name: f.type for f in fields(ServerConfig)}[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
                return value.lower() in ("1", "true", "yes")
            raise ValueError(value)
        if kind == "int" and not isinstance(value, bool):
            return int(value)
        if kind == "float" and not isinstance(value, bool):
            return float(value)
        if kind == "str" and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"{name} (from {source}): {value!r} is not a valid {kind}")


def load_config(file: str | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then ``file`` (TOML), then ``IAM_EVAL_*`` variables, then the non-None ``overrides``."""
    names = {f.name for f in fields(ServerConfig)}
    settings: dict[str, Any] = {}
    if file:
        try:
            with open(file, "rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"config file {file}: unknown setting(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(names))}")
        settings.update({name: _typed(name, value, file) for name, value in data.items()})
    environ = os.environ if environ is None else environ
    for name in names:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            settings[name] = _typed(name, environ[variable], variable)
    settings.update({name: _typed(name, value, "the command line")
                     for name, value in overrides.items() if value is not None})
    return replace(ServerConfig(), **settings).check()
