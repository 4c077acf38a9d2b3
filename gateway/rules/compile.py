"""Compiling a rule set: each enabled rule's selector, conditions, actions and trigger runner,
checked against the gateway's config (ids unique, a location for anything about the sun)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from fnmatch import translate

import orjson

from gateway.errors import RuleError
from gateway.rules.conditions import Check, Env, compile_conditions, uses_sun
from gateway.rules.schema import LoadedRule, Rule, Select
from gateway.rules.steps import RuleActions
from gateway.rules.triggers.base import Host, Runner, TriggerContext, TriggerError
from gateway.rules.triggers.registry import build_runner
from gateway.topics import matcher

Matcher = Callable[[str, str, str, str | None], bool]  # (device, metric, topic, tags JSON)


def _names_matcher(names: list[str] | None) -> Callable[[str], bool] | None:
    if names is None:
        return None
    exact = {n for n in names if not any(c in n for c in "*?[")}
    globs = [re.compile(translate(n)) for n in names if n not in exact]
    if not globs:
        return exact.__contains__
    return lambda name: name in exact or any(g.match(name) for g in globs)


def _topic_matcher(pattern: str | None) -> Callable[[str], bool] | None:
    return None if pattern is None else matcher(pattern)


def compile_select(select: Select) -> Matcher:
    device = _names_matcher(select.device)
    metric = _names_matcher(select.metric)
    topic = _topic_matcher(select.topic)
    tags = dict(select.tags)

    def matches(d: str, m: str, t: str, tags_json: str | None) -> bool:
        if device is not None and not device(d):
            return False
        if metric is not None and not metric(m):
            return False
        if topic is not None and not topic(t):
            return False
        if tags:
            have = orjson.loads(tags_json) if tags_json else {}
            if any(str(have.get(k)) != v for k, v in tags.items()):
                return False
        return True

    return matches


class CompiledRule:
    """A rule ready to run: what it selects, its conditions, actions and trigger runner.

    `digest` identifies the definition; saved state is restored only into the same one."""

    __slots__ = ("actions", "check", "digest", "id", "index", "matches", "rule", "runner", "source")

    def __init__(self, index: int, loaded: LoadedRule) -> None:
        rule = loaded.rule
        self.index = index
        self.rule: Rule = rule
        self.id = rule.id
        self.source = loaded.source
        self.digest = hashlib.sha256(rule.model_dump_json(by_alias=True).encode()).hexdigest()[:16]
        self.matches = compile_select(rule.select)
        self.check: Check | None = compile_conditions(rule.conditions)
        self.actions = RuleActions(rule)
        self.runner: Runner


def _rule_error(loaded: LoadedRule, field_name: str, message: str) -> RuleError:
    return RuleError(f"{loaded.source}: rule {loaded.rule.id!r}: {field_name}: {message}")


def compile_rules(
    rules: Sequence[LoadedRule], host: Host, env: Env, misfire_grace: float
) -> list[CompiledRule]:
    """The enabled rules, compiled, their runners talking to `host`; raises RuleError naming
    file, rule and field."""
    compiled_rules: list[CompiledRule] = []
    seen: set[str] = set()
    for loaded in rules:
        rule = loaded.rule
        if not rule.enabled:
            continue
        if rule.id in seen:
            raise _rule_error(loaded, "id", "defined twice")
        seen.add(rule.id)
        compiled = CompiledRule(len(compiled_rules), loaded)
        context = TriggerContext(
            select=rule.select,
            zone=env.zone,
            latitude=env.latitude,
            longitude=env.longitude,
            misfire_grace=misfire_grace,
        )
        try:
            compiled.runner = build_runner(compiled.index, host, rule.trigger, context)
        except TriggerError as exc:
            raise _rule_error(loaded, "trigger", str(exc)) from None
        if uses_sun(rule.conditions) and env.latitude is None:
            raise _rule_error(
                loaded,
                "conditions",
                "`sun` needs latitude and longitude in the gateway config's `location:`",
            )
        compiled_rules.append(compiled)
    return compiled_rules
