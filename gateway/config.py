"""Configuration: pydantic models that mirror the YAML file one-to-one, and the loader.

Secrets are written as `${VAR}` in the file and read from the environment; they are held as
`SecretStr` so they never show in logs, errors or `config check` output.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.sinks.config import SinkConfig
from gateway.topics import validate_filter
from gateway.units import Duration, Size
from gateway.yamlfile import YamlFileError, read_yaml_file


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Model):
    """TLS towards the broker; without `ca_file` the system's trusted CAs are used."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None
    insecure: bool = False  # skip host name verification (test brokers only)


class Subscription(_Model):
    topic: str
    qos: Literal[0, 1, 2] = 1

    @field_validator("qos")
    @classmethod
    def _no_qos2(cls, qos: int) -> int:
        if qos == 2:
            raise ValueError(
                "qos 2 is not supported: paho-mqtt confirms a QoS 2 message to the broker "
                "(PUBREC) as it arrives, before the gateway has committed it, so a crash would "
                "lose it; subscribe with qos 1 (the gateway recognises redeliveries itself)"
            )
        return qos

    @field_validator("topic")
    @classmethod
    def _valid_filter(cls, topic: str) -> str:
        return validate_filter(topic)


class ReconnectConfig(_Model):
    """Capped exponential backoff with full jitter between reconnect attempts."""

    min_delay: Duration = 0.5
    max_delay: Duration = Field(default=30.0, le=30.0)


class MqttConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str = "edge-gateway"
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    # A persistent session makes the broker keep QoS 1/2 messages for us while we are down.
    clean_start: bool = False
    session_expiry: Duration = 7 * 86400.0  # MQTT 5 only; 3.1.1 sessions never expire
    # Unacked QoS 1 messages the broker may send us at once (MQTT 5 Receive Maximum). Packet
    # ids are 16 bits: past 65,535 unacked, two messages would share one. With 3.1.1 the
    # broker's own max_inflight_messages must keep it below that (deploy/mosquitto.conf).
    max_inflight: int = Field(default=20_000, ge=1, le=65_535)
    subscriptions: list[Subscription] = Field(
        default_factory=lambda: [
            Subscription(topic="sensors/#", qos=1),
            Subscription(topic="zigbee2mqtt/#", qos=1),
            Subscription(topic="tele/+/SENSOR", qos=1),
        ],
        min_length=1,
    )
    reconnect: ReconnectConfig = ReconnectConfig()

    @field_validator("port", mode="before")
    @classmethod
    def _port_range(cls, port: Any) -> Any:
        if isinstance(port, int) and not 1 <= port <= 65535:
            raise ValueError("must be 1..65535")
        return port


DecoderName = Literal[
    "auto",
    "number",
    "text",
    "json",
    "zigbee2mqtt",
    "tasmota",
    "tasmota_stat",
    "statestream",
    "shelly",
    "shelly_gen1",
    "sparkplug",
    "esphome",
    "homie",
    "availability",
    "ignore",
    "zigbee2mqtt_devices",
]


class RouteConfig(_Model):
    """Maps topics to device, metric and tags, and picks the decoder.

    `pattern` is an MQTT-style filter whose levels may be named: `sensors/{site}/{device}/{metric}`.
    `{device}` and `{metric}` fill those fields; other names become tags.
    """

    pattern: str
    decoder: DecoderName = "auto"
    device: str | None = None  # fixed device when the pattern has no {device}
    metric: str | None = None  # fixed metric when the pattern has no {metric}
    unit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # For payloads that carry a device time or sequence number: the same topic and payload
    # again within this window is a copy, not a reading (a broker restored from its last save
    # delivers messages the gateway already acked again, as new). None: every message counts.
    dedup_window: Duration | None = Field(default=None, gt=0, le=7 * 86400)
    # Device times: the zone of those that name none (Tasmota's `Time` is the device's local
    # time), and how far from the arrival time one may be before `clock_skew` applies: rules
    # then run the reading on its arrival time (adjust) or not at all (drop). None: any time.
    timezone: str = "UTC"
    max_clock_skew: Duration | None = Field(default=300.0, gt=0)
    clock_skew: Literal["adjust", "drop"] = "adjust"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (an IANA name: Europe/Berlin)") from None
        return zone

    @model_validator(mode="after")
    def _names_device(self) -> RouteConfig:
        levels = self.pattern.split("/")
        if not {"{device}", "{device...}"} & set(levels) and self.device is None:
            raise ValueError(f"{self.pattern!r}: needs a {{device}} level or a fixed `device:`")
        return self

    @field_validator("pattern")
    @classmethod
    def _pattern_levels(cls, pattern: str) -> str:
        names: set[str] = set()
        levels = pattern.split("/")
        rest = 0
        for i, level in enumerate(levels):
            if level.startswith("{") and level.endswith("}"):
                name = level[1:-1]
                if name.endswith("..."):  # a multi-level capture: one or more levels
                    name = name[:-3]
                    rest += 1
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise ValueError(f"{pattern!r}: {level!r} is not a valid segment name")
                if name in names:
                    raise ValueError(f"{pattern!r}: segment {{{name}}} appears twice")
                names.add(name)
            elif level == "#" and i != len(levels) - 1:
                raise ValueError(f"{pattern!r}: '#' must be the last level")
            elif any(c in level for c in "{}+#") and level not in ("+", "#"):
                raise ValueError(f"{pattern!r}: level {level!r} mixes a wildcard with text")
        if rest > 1:
            raise ValueError(f"{pattern!r}: only one multi-level capture {{name...}} per pattern")
        if rest and levels[-1] == "#":
            raise ValueError(f"{pattern!r}: a multi-level capture {{name...}} and '#' cannot mix")
        return pattern


def _default_routes() -> list[RouteConfig]:
    return [
        RouteConfig(pattern="sensors/{site}/{device}/{metric}", decoder="auto"),
        # Zigbee2MQTT: friendly names may hold `/` (`kitchen/door`); its own sub-topics first.
        RouteConfig(
            pattern="zigbee2mqtt/bridge/devices",
            decoder="zigbee2mqtt_devices",
            device="zigbee2mqtt",
        ),
        RouteConfig(pattern="zigbee2mqtt/bridge/#", decoder="ignore", device="zigbee2mqtt"),
        RouteConfig(pattern="zigbee2mqtt/{device...}/availability", decoder="availability"),
        RouteConfig(pattern="zigbee2mqtt/{device...}/set", decoder="ignore"),
        RouteConfig(pattern="zigbee2mqtt/{device...}/set/+", decoder="ignore"),
        RouteConfig(pattern="zigbee2mqtt/{device...}/get", decoder="ignore"),
        RouteConfig(pattern="zigbee2mqtt/{device...}/get/+", decoder="ignore"),
        RouteConfig(pattern="zigbee2mqtt/{device...}", decoder="zigbee2mqtt"),
        RouteConfig(pattern="tele/{device}/SENSOR", decoder="tasmota"),
        RouteConfig(pattern="tele/{device}/STATE", decoder="tasmota"),
        RouteConfig(pattern="{device}/events/rpc", decoder="shelly"),
        RouteConfig(pattern="homeassistant/{domain}/{device}/{metric}", decoder="statestream"),
        # A Sparkplug host application's own online state (its id is the device).
        RouteConfig(pattern="spBv1.0/STATE/{device}", decoder="availability"),
        # Node messages name the node as device; device messages the device (tags: group, node).
        RouteConfig(pattern="spBv1.0/{group}/+/{device}", decoder="sparkplug"),
        RouteConfig(pattern="spBv1.0/{group}/+/{node}/{device}", decoder="sparkplug"),
        # The routes below come after all of the above, so none of them can take a topic from
        # those; among them the specific come first and the general (ESPHome's) last.
        # Tasmota beyond telemetry: its will, boot info, answers to commands, commands.
        RouteConfig(pattern="tele/{device}/LWT", decoder="availability"),
        RouteConfig(pattern="tele/{device}/INFO1", decoder="ignore"),
        RouteConfig(pattern="tele/{device}/INFO2", decoder="ignore"),
        RouteConfig(pattern="tele/{device}/INFO3", decoder="ignore"),
        RouteConfig(pattern="stat/{device}/{metric}", decoder="tasmota_stat"),
        RouteConfig(pattern="cmnd/{device}/+", decoder="ignore"),
        # Home Assistant's own birth and will (its statestream has 4 levels).
        RouteConfig(pattern="homeassistant/status", decoder="availability", device="homeassistant"),
        # Shelly Gen1: announcements, commands and the full status dump are not readings.
        RouteConfig(pattern="shellies/announce", decoder="ignore", device="shellies"),
        RouteConfig(pattern="shellies/command", decoder="ignore", device="shellies"),
        RouteConfig(pattern="shellies/{device}/online", decoder="availability"),
        RouteConfig(pattern="shellies/{device}/announce", decoder="ignore"),
        RouteConfig(pattern="shellies/{device}/info", decoder="ignore"),
        RouteConfig(pattern="shellies/{device}/command", decoder="ignore"),
        RouteConfig(pattern="shellies/{device}/{metric...}/command", decoder="ignore"),
        RouteConfig(pattern="shellies/{device}/{metric...}/command/+", decoder="ignore"),
        RouteConfig(pattern="shellies/{device}/{metric...}/set", decoder="ignore"),
        RouteConfig(pattern="shellies/{device}/{metric...}", decoder="shelly_gen1"),
        # Homie v3/v4: values, attributes, $state and commands, told apart by the decoder.
        RouteConfig(pattern="homie/{device}/{metric...}", decoder="homie"),
        # Shelly Gen2's will; ESPHome's birth and will, log, commands and states. These begin
        # with the device, so they match any first level: they stay last.
        RouteConfig(pattern="{device}/online", decoder="availability"),
        RouteConfig(pattern="{device}/status", decoder="availability"),
        RouteConfig(pattern="{device}/debug", decoder="ignore"),
        RouteConfig(pattern="{device}/{component}/{metric...}/command", decoder="ignore"),
        RouteConfig(pattern="{device}/{component}/{metric...}/state", decoder="esphome"),
    ]


class RetentionConfig(_Model):
    """What the buffer keeps; readings a sink has not confirmed stay unless `on_full` says drop."""

    max_age: Duration = 30 * 86400.0
    max_bytes: Size = 8 * 1024**3
    check_interval: Duration = 60.0
    on_full: Literal["drop_oldest", "keep_unsent"] = "keep_unsent"
    # A disabled sink's cursor is kept like an enabled one's; the sinks named here give up
    # the readings they have not confirmed while they are disabled.
    release_disabled_sinks: list[str] = Field(default_factory=list)


class BufferConfig(_Model):
    path: Path = Path("data/buffer.duckdb")
    flush_interval: Duration = Field(default=0.05, gt=0, le=5)
    max_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    max_payload_bytes: Size = 256 * 1024
    # Messages received but not yet committed; past this, ingest stops reading the socket
    # and the broker holds the rest (nothing is dropped).
    max_pending: int = Field(default=200_000, ge=1000)
    # The same bound in payload bytes (large payloads), and the most payload bytes per commit.
    max_pending_bytes: Size = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    max_batch_bytes: Size = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    retention: RetentionConfig = RetentionConfig()


class ApiConfig(_Model):
    """The local HTTP API (also what `edge-gateway sql` uses while the gateway runs)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)  # 0 picks a free port
    token: SecretStr | None = None
    sql_row_limit: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> ApiConfig:
        if self.enabled and self.host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            raise ValueError(f"binding to {self.host} needs a token (api.token)")
        return self


class RulesConfig(_Model):
    """The local rules engine (docs/rules.md)."""

    files: list[Path] = Field(default_factory=list)  # rule files (YAML); none: engine off
    reload: bool = True  # reload when a file changes (SIGHUP always reloads)
    reload_interval: Duration = Field(default=2.0, gt=0)
    allowed_lateness: Duration = 2.0  # how late an out-of-order reading may arrive
    tick_interval: Duration = Field(default=0.25, gt=0, le=10)  # timers' resolution
    state_interval: Duration = Field(default=5.0, gt=0)  # how often state is saved
    misfire_grace: Duration = 60.0  # a schedule missed while down by more is skipped
    webhook_queue: int = Field(default=1000, ge=1)
    webhook_retries: int = Field(default=3, ge=0, le=10)


class LocationConfig(_Model):
    """Where the gateway is: sun triggers and conditions, and the time zone of schedules."""

    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _both_or_neither(self) -> LocationConfig:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        return self


class LoggingConfig(_Model):
    """Log lines on stderr (the journal under systemd), one line per event."""

    format: Literal["logfmt", "json", "text"] = "logfmt"  # key=value, JSON, or for a terminal
    # The same message more than `repeat_burst` times within `repeat_window` is held back;
    # the next one after that says how many were.
    repeat_window: Duration = 60.0
    repeat_burst: int = Field(default=5, ge=1)


class GatewayConfig(_Model):
    gateway_id: str = Field(default="edge-1", pattern=r"^[A-Za-z0-9_.-]+$")
    mqtt: MqttConfig = MqttConfig()
    routes: list[RouteConfig] = Field(default_factory=_default_routes)
    buffer: BufferConfig = BufferConfig()
    api: ApiConfig = ApiConfig()
    sinks: list[SinkConfig] = Field(default_factory=list)  # see docs/sinks.md
    rules: RulesConfig = RulesConfig()
    location: LocationConfig = LocationConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    logging: LoggingConfig = LoggingConfig()

    def warnings(self) -> list[str]:
        """What is valid but likely wrong: a route written in the file that the subscriptions
        deliver only part of, or nothing of (the default routes cover formats a box may not
        run, so they are left alone). Routes that ignore what they match need no subscription;
        a route whose first level is a wildcard (`{device}/status`) is meant to be subscribed
        to in part (one node's `livingroom/#`), so only receiving nothing of it is worth a word."""
        from gateway.topics import covers, overlaps, route_filter

        if "routes" not in self.model_fields_set:
            return []
        subscribed = [s.topic for s in self.mqtt.subscriptions]
        found: list[str] = []
        for index, route in enumerate(self.routes):
            if route.decoder == "ignore":
                continue
            needed = route_filter(route.pattern)
            if any(covers(topic, needed) for topic in subscribed):
                continue
            some = [topic for topic in subscribed if overlaps(topic, needed)]
            where = f"routes[{index}] {route.pattern!r}"
            if not some:
                found.append(
                    f"{where}: no subscription receives its topics; subscribe to {needed!r}"
                )
            elif needed.split("/")[0] not in ("+", "#"):
                found.append(
                    f"{where}: mqtt.subscriptions receive only some of its topics "
                    f"({', '.join(some)}); subscribe to {needed!r} to receive them all"
                )
        return found

    @model_validator(mode="after")
    def _released_sinks_exist(self) -> GatewayConfig:
        names = {sink.name for sink in self.sinks}
        for name in self.buffer.retention.release_disabled_sinks:
            if name not in names:
                raise ValueError(
                    f"buffer.retention.release_disabled_sinks: {name!r} is not the name of a "
                    f"configured sink"
                )
        return self


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: str, missing: list[str]) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of the parsed YAML."""
    if isinstance(node, dict):
        return {
            k: _expand_env(v, f"{path}.{k}" if path else str(k), missing) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, f"{path}.{i}", missing) for i, v in enumerate(node)]
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name, default)
            if value is None:
                missing.append(f"{path}: environment variable {name} is not set")
                return ""
            return value

        return _ENV_REF.sub(substitute, node)
    return node


def format_validation_error(error: ValidationError) -> list[str]:
    """`mqtt.port: must be 1..65535`-style lines, one per problem, without input values."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}")
    return problems


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate already-parsed YAML data; raises ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys to values"])
    missing: list[str] = []
    expanded = _expand_env(data, "", missing)
    if missing:
        raise ConfigError(source, missing)
    try:
        return GatewayConfig.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        data = read_yaml_file(path)
    except YamlFileError as exc:
        raise ConfigError(str(path), [exc.problem]) from None
    return parse_config(data, str(path))
