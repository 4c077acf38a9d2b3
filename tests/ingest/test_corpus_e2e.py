"""The message corpus, end to end: every message in tests/ingest/corpus/*.jsonl goes through a real
Mosquitto and `edge-gateway run` (default routes, `#` subscribed), and what the gateway stored for
it, readings or one quarantine row, is compared with what the line expects.

The line format is in docs/ingest-formats.md ("Message corpus"). Each file runs in file order
through one gateway of its own (Sparkplug aliases, Shelly status merging and sequence numbers
depend on order). Each message is published and accounted for (the gateway's message counter
reaches it) before the next one leaves, so the new rows of `readings` and `quarantine` are that
message's. A line with `known_issue` documents a message the gateway reads wrongly today: it is
reported as an expected failure (xfail) while the gateway still gets it wrong, and fails once it
gets it right, so the fix removes the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.apiclient import ApiError, GatewayApi
from gateway.config import GatewayConfig
from gateway.ingest.routing import TopicRouter
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayProcess, publisher, wait_until

CORPUS = Path(__file__).parent / "corpus"
REPO = Path(__file__).resolve().parents[2]
FILES = sorted(CORPUS.glob("*.jsonl"))

MESSAGE_KEYS = {"source", "topic", "payload", "payload_base64", "retain"}
LINE_KEYS = MESSAGE_KEYS | {"readings", "quarantine", "known_issue"}
READING_KEYS = {"device", "metric", "value", "text", "unit"}
OPTIONAL_READING_KEYS = {"event_time", "tags"}

# Retained before the gateway starts: the broker delivers it once the gateway's `#` subscription
# is in place, so the first corpus message cannot be published before anyone listens for it.
PROBE_TOPIC = "zigbee2mqtt/bridge/corpus_harness"
MESSAGE_TIMEOUT = 15.0  # seconds for the gateway to account for one message


class CorpusError(ValueError):
    """A corpus line that does not follow the format; the message names file:line."""


@dataclass(frozen=True)
class ExpectedReading:
    device: str
    metric: str
    value: float | None
    text: str | None
    unit: str | None
    event_time: datetime | None
    tags: dict[str, str] | None

    def matches(self, row: dict[str, Any]) -> bool:
        """`row` is a stored reading: the fields equal, event time equal when given, the
        expected tags a subset of the stored ones."""
        if (row["device"], row["metric"], row["text"], row["unit"]) != (
            self.device,
            self.metric,
            self.text,
            self.unit,
        ):
            return False
        if row["value"] != self.value:  # exact: both sides parse the same decimal text
            return False
        if self.event_time is not None and row["event_time"] != self.event_time:
            return False
        return self.tags is None or self.tags.items() <= row["tags"].items()

    def show(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "device": self.device,
            "metric": self.metric,
            "value": self.value,
            "text": self.text,
            "unit": self.unit,
        }
        if self.event_time is not None:
            shown["event_time"] = self.event_time.isoformat()
        if self.tags is not None:
            shown["tags"] = self.tags
        return shown


@dataclass(frozen=True)
class Entry:
    """One corpus message and what the gateway should make of it."""

    where: str  # file:line
    source: str
    topic: str
    payload: bytes
    retain: bool
    readings: list[ExpectedReading] | None  # None: the message is expected in the quarantine
    quarantine: str | None  # a substring of the quarantine reason
    known_issue: str | None


def _display(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"key {key!r} appears twice")
        found[key] = value
    return found


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _text(obj: dict[str, Any], key: str, *, nullable: bool = False, empty: bool = False) -> Any:
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or (not value and not empty):
        kind = "a string or null" if nullable else "a non-empty string"
        raise ValueError(f"{key!r} must be {kind}, not {value!r}")
    return value


def _reading(raw: Any, index: int) -> ExpectedReading:
    if not isinstance(raw, dict):
        raise ValueError(f"readings[{index}] must be an object")
    keys = set(raw)
    if not keys >= READING_KEYS or not keys <= READING_KEYS | OPTIONAL_READING_KEYS:
        missing = sorted(READING_KEYS - keys)
        unknown = sorted(keys - READING_KEYS - OPTIONAL_READING_KEYS)
        raise ValueError(f"readings[{index}]: missing keys {missing}, unknown keys {unknown}")
    value = raw["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"readings[{index}]: 'value' must be a number or null, not {value!r}")
    if value is not None and not math.isfinite(value):
        raise ValueError(f"readings[{index}]: 'value' must be finite")
    event_time = None
    if "event_time" in raw:
        stamp = _text(raw, "event_time")
        try:
            event_time = datetime.fromisoformat(stamp)
        except ValueError:
            raise ValueError(f"readings[{index}]: event_time {stamp!r} is not ISO 8601") from None
        if event_time.tzinfo is None:
            raise ValueError(f"readings[{index}]: event_time {stamp!r} names no zone (add Z)")
    tags = raw.get("tags")
    if "tags" in raw and (
        not isinstance(tags, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    ):
        raise ValueError(f"readings[{index}]: 'tags' must be an object of strings")
    return ExpectedReading(
        device=_text(raw, "device"),
        metric=_text(raw, "metric"),
        value=None if value is None else float(value),
        text=_text(raw, "text", nullable=True, empty=True),
        unit=_text(raw, "unit", nullable=True),
        event_time=event_time,
        tags=tags,
    )


def parse_line(text: str, where: str) -> Entry:
    """One corpus line, checked strictly; CorpusError names `where` (file:line)."""
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant
        )
        if not isinstance(obj, dict):
            raise ValueError("a line must be one JSON object")
        unknown = set(obj) - LINE_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        for key in ("source", "topic"):
            if key not in obj:
                raise ValueError(f"{key!r} is required")
        topic = _text(obj, "topic")
        if "+" in topic or "#" in topic or "\0" in topic:
            raise ValueError(f"topic {topic!r} is not a topic name one can publish to")
        if ("payload" in obj) == ("payload_base64" in obj):
            raise ValueError("give exactly one of 'payload' and 'payload_base64'")
        if "payload" in obj:
            payload = _text(obj, "payload", empty=True).encode()
        else:
            try:
                payload = base64.b64decode(_text(obj, "payload_base64"), validate=True)
            except binascii.Error as exc:
                raise ValueError(f"'payload_base64' is not base64: {exc}") from None
        retain = obj.get("retain", False)
        if not isinstance(retain, bool):
            raise ValueError("'retain' must be true or false")
        if ("readings" in obj) == ("quarantine" in obj):
            raise ValueError("give exactly one of 'readings' and 'quarantine'")
        readings = None
        if "readings" in obj:
            if not isinstance(obj["readings"], list):
                raise ValueError("'readings' must be a list")
            readings = [_reading(r, i) for i, r in enumerate(obj["readings"])]
        return Entry(
            where=where,
            source=_text(obj, "source"),
            topic=topic,
            payload=payload,
            retain=retain,
            readings=readings,
            quarantine=_text(obj, "quarantine") if "quarantine" in obj else None,
            known_issue=_text(obj, "known_issue") if "known_issue" in obj else None,
        )
    except (ValueError, KeyError) as exc:
        raise CorpusError(f"{where}: {exc}") from None


def load_corpus(path: Path) -> list[Entry]:
    """Every message of a corpus file, in file order; blank lines and `#` lines are comments."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            entries.append(parse_line(line, f"{_display(path)}:{number}"))
    if not entries:
        raise CorpusError(f"{_display(path)}: no messages")
    return entries


def pair_up(expected: list[ExpectedReading], stored: list[dict[str, Any]]) -> bool:
    """Whether each expected reading can be given a stored one of its own and none is left over
    (a multiset match; bipartite, since optional fields let one expectation fit several rows)."""
    if len(expected) != len(stored):
        return False
    owner: dict[int, int] = {}  # stored row -> the expectation it is given to

    def place(e: int, seen: set[int]) -> bool:
        for s, row in enumerate(stored):
            if s not in seen and expected[e].matches(row):
                seen.add(s)
                if s not in owner or place(owner[s], seen):
                    owner[s] = e
                    return True
        return False

    return all(place(e, set()) for e in range(len(expected)))


def mismatch(entry: Entry, readings: list[dict[str, Any]], quarantine: list[dict[str, Any]]) -> str:
    """What is wrong with the rows stored for `entry`, or "" when they are what it expects."""
    strays = [r["topic"] for r in readings + quarantine if r["topic"] != entry.topic]
    if strays:
        return f"rows of other topics among this message's: {strays}"
    if entry.quarantine is not None:
        if readings or len(quarantine) != 1:
            return (
                f"expected one quarantine row and no readings, got {len(quarantine)} "
                f"and {len(readings)}"
            )
        if entry.quarantine not in quarantine[0]["reason"]:
            return f"the quarantine reason does not contain {entry.quarantine!r}"
        return ""
    assert entry.readings is not None
    if quarantine:
        return "expected no quarantine row"
    return "" if pair_up(entry.readings, readings) else "the stored readings differ"


def report(
    entry: Entry, problem: str, readings: list[dict[str, Any]], quarantine: list[dict[str, Any]]
) -> str:
    def rows(items: list[dict[str, Any]]) -> str:
        return "".join(
            f"\n    {json.dumps(item, ensure_ascii=False, default=str)}" for item in items
        )

    expected = (
        f"quarantine reason containing {entry.quarantine!r}"
        if entry.quarantine is not None
        else rows([r.show() for r in entry.readings or []]) or " no readings"
    )
    stored = [{k: v for k, v in r.items() if k != "topic"} for r in readings]
    return (
        f"{entry.where}: {entry.topic}: {problem}\n  expected:{expected}\n"
        f"  stored readings:{rows(stored) or ' none'}\n"
        f"  stored quarantine:{rows([{'reason': q['reason']} for q in quarantine]) or ' none'}"
    )


def write_config(tmp_path: Path, broker: Mosquitto) -> Path:
    """The default routes (no `routes:`), every topic subscribed, the API on a free port."""
    data = {
        "gateway_id": "corpus",
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": "gw-corpus",
            "subscriptions": [{"topic": "#", "qos": 1}],
        },
        "buffer": {"path": str(tmp_path / "buffer.duckdb"), "flush_interval": "10ms"},
        "api": {"host": "127.0.0.1", "port": 0},  # its address lands in <buffer>.runtime.json
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def running_api(buffer: Path, gateway: GatewayProcess) -> GatewayApi:
    """The API of the gateway on `buffer` once it answers (its runtime file names the port)."""
    found: list[GatewayApi] = []

    def up() -> bool:
        api = GatewayApi.find(buffer)
        if api is not None:
            found.append(api)
        return bool(found) or not gateway.alive()

    wait_until(up, timeout=30)
    if not found:
        pytest.fail(f"the gateway's API did not come up\n{gateway.tail()}")
    return found[0]


class Stored:
    """Reads what a running gateway has accounted for and stored, through its SQL API."""

    def __init__(self, api: GatewayApi) -> None:
        self.api = api
        self.last_reading = self.last_quarantine = 0

    def has_accounted(self, messages: int, gateway: GatewayProcess) -> bool:
        """Whether the gateway has committed `messages` messages (readings, quarantine, nothing
        for an empty payload or an ignored topic alike); true too once it has died."""
        try:
            return int(self.api.get_json("/api/status")["ingest"]["messages"]) >= messages
        except ApiError:
            return not gateway.alive()

    def skip_to_now(self) -> None:
        self.new_readings()
        self.new_quarantine()

    def new_readings(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api.sql(
            "SELECT id, topic, device, metric, value, text, unit, event_time, tags FROM readings "
            f"WHERE id > {self.last_reading} ORDER BY id"
        ).to_pylist()
        if rows:
            self.last_reading = rows[-1]["id"]
        for row in rows:
            del row["id"]
            row["tags"] = json.loads(row["tags"]) if row["tags"] else {}
        return rows

    def new_quarantine(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api.sql(
            "SELECT id, topic, reason FROM quarantine "
            f"WHERE id > {self.last_quarantine} ORDER BY id"
        ).to_pylist()
        if rows:
            self.last_quarantine = rows[-1]["id"]
        return rows


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_file_end_to_end(
    path: Path,
    broker: Mosquitto,
    tmp_path: Path,
    start_gateway: Callable[[Path], GatewayProcess],
    subtests: pytest.Subtests,
) -> None:
    entries = load_corpus(path)
    pub = publisher(broker.host, broker.port, client_id="corpus-publisher")
    pub.publish(PROBE_TOPIC, b"ready", qos=1, retain=True).wait_for_publish(10)
    gateway = start_gateway(write_config(tmp_path, broker))
    stored = Stored(running_api(tmp_path / "buffer.duckdb", gateway))
    accounted = 1  # the probe
    if not wait_until(lambda: stored.has_accounted(accounted, gateway)) or not gateway.alive():
        pytest.fail(f"the gateway did not take the probe\n{gateway.tail()}")
    stored.skip_to_now()  # whatever the probe left is not the corpus'
    for entry in entries:
        info = pub.publish(entry.topic, entry.payload, qos=1, retain=entry.retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"{entry.where}: the broker did not take the message"
        accounted += 1
        taken = wait_until(partial(stored.has_accounted, accounted, gateway), MESSAGE_TIMEOUT)
        if not taken or not gateway.alive():
            pytest.fail(
                f"{entry.where}: {entry.topic}: the gateway did not account for the message "
                f"(running: {gateway.alive()})\n{gateway.tail()}"
            )
        readings, quarantine = stored.new_readings(), stored.new_quarantine()
        problem = mismatch(entry, readings, quarantine)
        with subtests.test(msg=entry.where):
            if entry.known_issue is not None:
                if problem:
                    pytest.xfail(f"known issue: {entry.known_issue}")
                pytest.fail(
                    f"{entry.where}: the gateway now reads this message as the line expects: "
                    f"remove its known_issue ({entry.known_issue})"
                )
            if problem:
                pytest.fail(
                    f"{report(entry, problem, readings, quarantine)}\n"
                    f"  gateway log (tail):\n{gateway.tail(1500)}"
                )
    pub.disconnect()
    pub.loop_stop()
    assert gateway.terminate() == 0, gateway.tail()


def test_the_corpus_covers_every_decoder_of_the_default_routes() -> None:
    router = TopicRouter(GatewayConfig().routes)
    used = set()
    for path in FILES:
        for entry in load_corpus(path):
            match = router.route(entry.topic)
            if match is not None:
                used.add(match.decoder)
    assert {r.decoder for r in GatewayConfig().routes} <= used


GOOD = {"source": "s", "topic": "a/b", "payload": "1", "readings": []}
READING = {"device": "d", "metric": "m", "value": 1, "text": None, "unit": None}


def with_reading(**fields: Any) -> str:
    return json.dumps({**GOOD, "readings": [{**READING, **fields}]})


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("{not json", "Expecting property name"),
        ("[1, 2]", "one JSON object"),
        (json.dumps({**GOOD, "extra": 1}), "unknown keys ['extra']"),
        (json.dumps({"topic": "a", "payload": "", "readings": []}), "'source' is required"),
        (json.dumps({**GOOD, "payload_base64": "MQ=="}), "exactly one of 'payload'"),
        (json.dumps({"source": "s", "topic": "a", "readings": []}), "exactly one of 'payload'"),
        (json.dumps({**GOOD, "quarantine": "x"}), "exactly one of 'readings'"),
        (json.dumps({**GOOD, "payload": 1}), "'payload' must be"),
        (json.dumps({**GOOD, "topic": "a/#"}), "not a topic name"),
        (json.dumps({**GOOD, "retain": "yes"}), "'retain' must be"),
        (json.dumps({**GOOD, "known_issue": ""}), "'known_issue' must be"),
        ('{"source": "s", "source": "t", "topic": "a", "payload": "", "readings": []}', "twice"),
        (
            json.dumps({"source": "s", "topic": "a", "payload_base64": "!!", "quarantine": "x"}),
            "base64",
        ),
        (json.dumps({**GOOD, "readings": [{"device": "d", "metric": "m"}]}), "missing keys"),
        (with_reading(colour="red"), "unknown keys ['colour']"),
        (with_reading(value="21.5"), "must be a number or null"),
        (with_reading(value=True), "must be a number or null"),
        (with_reading().replace('"value": 1', '"value": NaN'), "NaN is not JSON"),
        (with_reading(event_time="noon"), "is not ISO 8601"),
        (with_reading(event_time="2026-01-01T10:00:00"), "names no zone"),
        (with_reading(tags={"site": 1}), "'tags' must be an object of strings"),
    ],
)
def test_a_line_off_the_format_is_refused_with_its_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    corpus = tmp_path / "odd.jsonl"
    corpus.write_text(f"# a comment\n\n{json.dumps(GOOD)}\n{line}\n")
    with pytest.raises(CorpusError) as refused:
        load_corpus(corpus)
    assert "odd.jsonl:4: " in str(refused.value)
    assert complaint in str(refused.value)


def test_readings_are_matched_as_a_multiset_and_a_wrong_value_is_a_mismatch() -> None:
    entry = parse_line(
        json.dumps({**GOOD, "readings": [READING, {**READING, "tags": {"site": "home"}}]}), "x:1"
    )
    row = {"topic": "a/b", "device": "d", "metric": "m", "value": 1.0, "text": None, "unit": None}
    plain, tagged = {**row, "tags": {}}, {**row, "tags": {"site": "home", "more": "x"}}
    assert mismatch(entry, [tagged, plain], []) == ""  # greedy matching would pair them wrongly
    assert mismatch(entry, [plain, plain], []) == "the stored readings differ"
    assert mismatch(entry, [tagged, {**tagged, "value": 1.5}], []) == "the stored readings differ"
    assert mismatch(entry, [tagged], []) == "the stored readings differ"
    assert "other topics" in mismatch(entry, [tagged, {**plain, "topic": "c"}], [])


def test_a_quarantine_expectation_wants_one_row_with_the_reason_and_no_reading() -> None:
    line = {"source": "s", "topic": "a/b", "payload": "{", "quarantine": "bad JSON"}
    entry = parse_line(json.dumps(line), "x:1")
    row = {"topic": "a/b", "reason": "json decoder: bad JSON at 3"}
    assert mismatch(entry, [], [row]) == ""
    assert "does not contain" in mismatch(entry, [], [{**row, "reason": "no route"}])
    assert "one quarantine row" in mismatch(entry, [], [row, row])
    reading = {"topic": "a/b", **READING, "tags": {}}
    assert "one quarantine row" in mismatch(entry, [reading], [row])
