"""Reads a YAML file (config, rules), turning read and syntax failures into one located problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(Exception):
    """`problem` says what went wrong and where (`line 3, column 7: ...`); callers name the file."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def read_yaml_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(f"cannot read file: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlFileError(f"{where}: {problem}") from None
