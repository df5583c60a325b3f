"""Broker configuration: one TOML file, overridden by environment variables.

``broker serve --config broker.toml`` reads the file; any setting can then be overridden by an
environment variable ``BROKER__<SECTION>__<KEY>`` (double underscores separate levels), for
example ``BROKER__SERVER__LISTEN=0.0.0.0:50051``. Values in the environment are parsed as JSON
when they parse (numbers, booleans, lists) and taken as strings otherwise.

Every setting has a default that starts a working single node: listen on 127.0.0.1:50051,
data under ``./var``, SQLite in WAL mode. Unknown keys are errors, so a typo never silently
leaves a security setting at its default.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "BROKER__"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    """Server TLS, and mutual TLS when ``client_ca_file`` is set."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ServerConfig(_Section):
    """The gRPC listener.

    ``workers`` broker processes share the listening port (``SO_REUSEPORT``: the kernel spreads
    incoming connections over them), each with a pool of ``max_workers`` threads for its calls.
    """

    listen: str = "127.0.0.1:50051"
    workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="broker processes behind the one listening port (default: one per core)",
    )
    max_workers: int = Field(default=16, ge=1, le=1024)
    aio: bool = Field(
        default=False,
        description="serve from a grpc.aio event loop (experimental): a call waiting for its "
        "request message holds no thread; the servicers still run in max_workers threads",
    )
    request_message_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a call whose request message has not arrived this long after the call "
        "started is ended (DEADLINE_EXCEEDED)",
    )
    max_waiting_per_client: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="calls of one client address that may wait for their request message at "
        "once (after 0.25 s); more stalled calls are refused (RESOURCE_EXHAUSTED). Without aio "
        "each such call holds a thread, so the limit is also at most a quarter of max_workers, "
        "and all addresses together may have half of max_workers waiting",
    )
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_metadata_bytes: int = Field(default=16 * 1024, ge=1024)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    reflection: bool = True
    database_probe_seconds: float = Field(
        default=1.0,
        ge=0,
        description="health turns NOT_SERVING while a probe of the database fails; 0: no probe",
    )
    tls: TlsConfig | None = None

    @property
    def sync_waiting_share(self) -> int:
        """Waiting calls one client may hold on the sync server, where each holds a thread.

        At most a quarter of ``max_workers``, so that one client address cannot hold the
        threads that every other client's calls need.
        """
        return max(1, min(self.max_waiting_per_client, self.max_workers // 4))

    @property
    def sync_waiting_total(self) -> int:
        """Waiting calls all clients together may hold on the sync server: half the threads."""
        return max(1, self.max_workers // 2)

    @property
    def worker_count(self) -> int:
        """How many broker processes serve: ``workers``, or the cores this process may use."""
        if self.workers is not None:
            return self.workers
        return max(1, len(os.sched_getaffinity(0)))


class LimitsConfig(_Section):
    """Limits on what one call may carry and how many calls one tenant may run at once."""

    max_payload_bytes: int = Field(default=1024 * 1024, ge=2)
    max_depth: int = Field(default=64, ge=1, le=1000)
    max_fields: int = Field(default=10_000, ge=1)
    tenant_concurrency: int = Field(default=64, ge=1)


class QuotaConfig(_Section):
    """One quota rule of ``[[metering.quotas]]``: a buyer tenant, optionally one model.

    ``model`` is ``vendor/name`` (every version of it); empty means all of the tenant's calls.
    Each limit is optional: ``calls_per_second`` with ``burst`` (a token bucket kept in the
    database, so it holds across worker processes and replicas), ``monthly_spend_micros`` of
    ``currency`` (micros: millionths of one currency unit) and ``monthly_tokens`` (input and
    output), both per calendar month in UTC.
    """

    tenant: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    model: str = Field(default="", pattern=r"^([A-Za-z0-9._-]{1,128}/[a-z0-9][a-z0-9._-]{0,62})?$")
    calls_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    monthly_spend_micros: int | None = Field(default=None, ge=0)
    currency: str = Field(default="", pattern=r"^([A-Z]{3})?$")
    monthly_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _coherent(self) -> QuotaConfig:
        if self.monthly_spend_micros is not None and not self.currency:
            raise ValueError("monthly_spend_micros needs the currency it is in, like USD")
        if self.burst is not None and self.calls_per_second is None:
            raise ValueError("burst applies only with calls_per_second")
        return self


class MeteringConfig(_Section):
    """Quotas and rate limits per buyer tenant and per (tenant, model); none by default."""

    quotas: tuple[QuotaConfig, ...] = ()


class IssuerConfig(_Section):
    """One trusted token issuer.

    Keys come from a JWKS file, from PEM public key files, or (HS256 only) from a shared secret
    read from a file or an environment variable. ``algorithms`` is the explicit allow-list; HS256
    is accepted only for an issuer that has a secret, and never together with public keys.
    """

    issuer: str
    audience: str
    algorithms: list[Literal["RS256", "ES256", "EdDSA", "HS256"]] = Field(min_length=1)
    jwks_file: Path | None = None
    public_key_files: dict[str, Path] = Field(
        default_factory=dict, description="kid -> PEM public key file"
    )
    hs256_secret_file: Path | None = None
    hs256_secret_env: str | None = None
    typ: str | None = Field(default=None, description="required JOSE typ header, e.g. 'at+jwt'")


class DevIssuerConfig(_Section):
    """A development token issuer whose keys live under the data directory. Never for production."""

    enabled: bool = False
    issuer: str = "https://dev-issuer.broker.invalid"
    audience: str = "model-broker"


class AuthConfig(_Section):
    """How bearer tokens become principals."""

    issuers: list[IssuerConfig] = Field(default_factory=list)
    dev_issuer: DevIssuerConfig = DevIssuerConfig()
    roles_claim: str = "roles"
    tenant_claim: str = "tenant"
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    max_token_bytes: int = Field(default=8 * 1024, ge=256)
    cache_size: int = Field(default=10_000, ge=0)


class DatabaseConfig(_Section):
    """Where state lives: SQLite by default, PostgreSQL for several replicas."""

    url: str = ""
    auto_migrate: bool = True
    echo: bool = False


class RegistryConfig(_Section):
    """The model-resolution cache on the call path (staleness bound: broker.registry.cache)."""

    resolve_cache_seconds: float = Field(default=2.0, ge=0, description="0 disables the cache")
    resolve_cache_negative_seconds: float = Field(default=0.5, ge=0)
    resolve_cache_entries: int = Field(default=10_000, ge=0)


class BackendsConfig(_Section):
    """Outbound connections to remote model endpoints."""

    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    default_timeout_seconds: float = Field(default=30.0, gt=0)
    max_answer_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)


class PolicyConfig(_Section):
    """Where the Rego policy comes from and how it is evaluated.

    ``engine``: ``regorus`` (embedded, the default), ``opa-embedded`` (OPA's own Go engine in
    process; needs the optional ``opa-golib-python-bindings``, which ``make install`` installs)
    or ``opa`` (an OPA server's Data API at ``opa_host``:``opa_port``; the bundle stays unused).
    """

    engine: Literal["regorus", "opa-embedded", "opa"] = "regorus"
    bundle_dir: Path = Path("policies")
    rule: str = "data.broker.decision"
    watch_interval_seconds: float = Field(default=2.0, ge=0, description="0 disables watching")
    cache_size: int = Field(default=10_000, ge=0)
    default_purpose: str = "default"
    claims: list[str] = Field(
        default_factory=list, description="token claims passed to the policy (part of cache key)"
    )
    opa_host: str = "127.0.0.1"
    opa_port: int = Field(default=8181, ge=1, le=65535)
    opa_tls: bool = False
    opa_token_env: str | None = None
    opa_revision: str = "opa"
    opa_timeout_seconds: float = Field(default=2.0, gt=0)


class EnforcementConfig(_Section):
    """How enforcement actions keep what they need."""

    token_ttl_seconds: float = Field(default=3600.0, gt=0)


class Pkcs11Config(_Section):
    """A retention root key that never leaves a PKCS#11 token (an HSM; SoftHSM2 in tests)."""

    library: Path
    token_label: str
    key_label: str = "broker-retention-root"
    pin_env: str = "BROKER_PKCS11_PIN"


class RetentionConfig(_Section):
    """Retained payloads: where the root key comes from, and how often deletions run.

    Exactly one of ``root_key_file``, ``root_key_env`` (the name of a variable holding the key)
    or ``pkcs11`` enables retention. A root key file inside ``data_dir`` is refused unless
    ``unsafe_allow_root_key_in_data_dir`` is set: a key stored beside the data it protects
    protects nothing once both are copied together.
    """

    root_key_file: Path | None = None
    root_key_env: str | None = None
    pkcs11: Pkcs11Config | None = None
    unsafe_allow_root_key_in_data_dir: bool = False
    scheduler_interval_seconds: float = Field(default=30.0, gt=0)
    batch_size: int = Field(default=200, ge=1, le=10_000)


class AuditConfig(_Section):
    """The tamper-evident audit log."""

    origin: str = Field(
        default="broker.local/audit",
        description="log origin in signed checkpoints (C2SP); also the signing key's name",
    )
    batch_ms: float = Field(
        default=0.0, ge=0, le=1000, description="extra wait for more entries per commit"
    )
    batch_max: int = Field(default=512, ge=1, le=100_000)


class SandboxConfig(_Section):
    """Sandbox workers: the host ids a root broker gives them, and per-worker cgroups.

    A root broker runs each live worker as a host uid (and gid) of its own from
    ``[worker_uid_base, worker_uid_base + worker_uid_count)``, so ``RLIMIT_NPROC`` is per worker,
    not shared by tenants. Pick a range no account uses; it bounds how many workers can live at
    once on the host. Locks in ``worker_uid_lock_dir`` keep an id to one live worker across
    broker processes. A non-root broker ignores these: its workers keep its own uid.
    ``cgroups`` bounds memory and process count per worker tree where the host delegates cgroups
    (see ``sandbox/README.md``); where it does not, the broker logs a warning and the
    per-process rlimits remain the only bound. ``zygote`` forks workers from a pre-started clean
    interpreter (a start costs about a quarter of a fresh one); off, every worker is a fresh
    interpreter, which also gives each its own address-space layout and string-hash secret
    (``sandbox/README.md``, "What it does not stop").
    """

    zygote: bool = True
    worker_uid_base: int = Field(default=200_000, ge=1, description="never 0: not host root")
    worker_uid_count: int = Field(default=1024, ge=1, le=1_000_000)
    worker_uid_lock_dir: Path = Path("/run/model-broker/worker-uids")
    cgroups: bool = True

    @model_validator(mode="after")
    def _range_fits(self) -> SandboxConfig:
        if self.worker_uid_base + self.worker_uid_count - 1 > 2**32 - 2:
            raise ValueError("worker_uid_base + worker_uid_count must stay below 2**32 - 1")
        return self


class MetricsConfig(_Section):
    """``[metrics]``: the Prometheus page (off unless ``listen`` is set)."""

    listen: str | None = Field(
        default=None,
        description="host:port of the /metrics page, e.g. 127.0.0.1:9464; unset: no metrics",
    )


class OidcSignInConfig(_Section):
    """``[[console.oidc]]``: sign officers in with this issuer's OIDC authorization-code flow.

    ``issuer`` must be one of ``auth.issuers``: the access token the flow yields is verified by
    the broker's own rules, and the ID token with that issuer's configured keys (no key is ever
    fetched from the network). The console asks for an access token for ``resource`` (RFC 8707;
    default: that issuer's ``audience``), so the token is one the broker's gRPC API accepts.
    """

    issuer: str
    client_id: str = Field(min_length=1)
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid"])
    resource: str | None = None
    name: str = Field(default="", description="the sign-in button's text; default: the issuer")

    @model_validator(mode="after")
    def _checked(self) -> OidcSignInConfig:
        if "openid" not in self.scopes:
            raise ValueError("console.oidc scopes must include 'openid'")
        if self.client_secret_file is not None and self.client_secret_env is not None:
            raise ValueError("console.oidc: set client_secret_file or client_secret_env, not both")
        return self


class ConsoleConfig(_Section):
    """``[console]``: the compliance console, a read-mostly web view of the audit trail.

    It is a gRPC client of this broker (``broker_target``, default ``server.listen``) that
    calls with the signed-in officer's own token, so the broker's role and tenant checks apply
    unchanged. Without ``tls_cert_file`` it serves plain HTTP, which is allowed on a loopback
    address only: the session cookie cannot be ``Secure`` there (see the README).
    """

    listen: str | None = Field(
        default=None,
        description="host:port of the console, e.g. 127.0.0.1:8080; unset: `make run` skips it",
    )
    broker_target: str | None = Field(
        default=None, description="the broker's gRPC address; default: server.listen"
    )
    session_minutes: int = Field(
        default=30, ge=1, le=720, description="a session ends this long after sign-in (or at exp)"
    )
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    oidc: list[OidcSignInConfig] = Field(default_factory=list)
    log_vkey: str | None = Field(
        default=None,
        description="the audit log's verifier key (name+id+key) that Verify checks checkpoints "
        "against; unset: the key the broker serves (which an officer must then compare)",
    )
    public_url: str | None = Field(
        default=None,
        description="the URL browsers reach the console at (OIDC redirect); default: the bound URL",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ConsoleConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("console.tls_cert_file and tls_key_file go together")
        return self


class TracingConfig(_Section):
    """``[tracing]``: OpenTelemetry spans to an OTLP/gRPC collector (off unless set)."""

    otlp_endpoint: str | None = Field(
        default=None, description="host:port of an OTLP/gRPC collector (plaintext); unset: off"
    )
    service_name: str = "model-broker"
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="share of new traces kept; a caller's choice wins"
    )


class LoggingConfig(_Section):
    """Structured logging.

    At ``info`` (the default) and above, nothing a sandboxed package prints reaches the log:
    its stdout/stderr is logged (``sandbox_worker_output``) at ``debug`` only, because vendor
    code may print the payload it was given.
    """

    level: Literal["debug", "info", "warning", "error"] = "info"
    json_output: bool = True


class Config(_Section):
    """The whole broker configuration."""

    data_dir: Path = Path("var")
    keys_dir: Path | None = Field(
        default=None,
        description=(
            "where the node's keys live (enforcement master key, audit digest root key, log "
            "signing key, dev issuer key); default: data_dir. Replicas of one cluster share one "
            "(a mounted secret), so tokens, digests and checkpoints are the same on every one"
        ),
    )
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    database: DatabaseConfig = DatabaseConfig()
    registry: RegistryConfig = RegistryConfig()
    backends: BackendsConfig = BackendsConfig()
    policy: PolicyConfig = PolicyConfig()
    enforcement: EnforcementConfig = EnforcementConfig()
    audit: AuditConfig = AuditConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()
    tracing: TracingConfig = TracingConfig()
    retention: RetentionConfig = RetentionConfig()
    sandbox: SandboxConfig = SandboxConfig()
    metering: MeteringConfig = MeteringConfig()

    @field_validator("data_dir")
    @classmethod
    def _not_empty(cls, value: Path) -> Path:
        if str(value).strip() == "":
            raise ValueError("data_dir must name a directory")
        return value

    @property
    def key_dir(self) -> Path:
        """The directory the node's keys are read from (and created in, on first use)."""
        return self.keys_dir if self.keys_dir is not None else self.data_dir

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        return self.database.url or f"sqlite:///{self.data_dir / 'broker.db'}"


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (if given), apply environment overrides, and validate.

    Raises ConfigError naming the file and the offending setting.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (invalid byte at offset {exc.start})"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except RecursionError as exc:  # tomllib parses nested arrays and tables recursively
            raise ConfigError(f"config file {path} nests arrays or tables too deeply") from exc
    _apply_env_overrides(raw, os.environ if environ is None else environ)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration{where}: {problems}") from exc


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name} overrides a non-table setting")
            node = child
        node[keys[-1]] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    """A JSON value if the text is one (``8``, ``true``, ``["a"]``), else the text itself.

    Nesting too deep for ``json`` counts as "not JSON", like any other text it cannot parse.
    """
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value
