"""Nouns whose code lives beside their subsystem, mounted without importing it until used.

Typer builds the whole command tree before it parses anything, and listing a command in
`edge-gateway --help` means importing its module. The modules behind `sinks`, `replay`,
`rules`, `buffer` and `simulate` (gateway/sinks/commands.py, ...) import rich and urllib at
their top, about 75 ms that `--help` does not need. A `Mount` names the module and states the
command's one-line help; the module is imported when the command is looked up to run, to
complete, or to show its own help.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_group

if TYPE_CHECKING:
    # typer vendors click as typer._click; only its types are needed here.
    from typer._click import Command, Context, HelpFormatter


@dataclass(frozen=True)
class Mount:
    """`attr` of `module`: a typer.Typer (a group of subcommands) or one command function."""

    module: str
    attr: str
    help: str  # its first help line, as the module says it (tests/foundation checks)

    def load(self, name: str) -> Command:
        target = getattr(importlib.import_module(self.module), self.attr)
        # Built as app.add_typer()/app.command() would build it under the root, with the
        # root's plain help formatting (root.py says why not rich).
        holder = typer.Typer(rich_markup_mode=None)
        if isinstance(target, typer.Typer):
            holder.add_typer(target, name=name)
        else:
            holder.command(name)(target)
        return get_group(holder).commands[name]


class Commands(MutableMapping[str, "Command"]):
    """A group's commands by name, in `order`; a mounted one is loaded when first read.

    Typer and click look commands up by `commands.get(name)` and suggest names for typos from
    `commands.keys()`: both work unchanged, and only a lookup imports anything.
    """

    def __init__(
        self, loaded: Mapping[str, Command], mounts: Mapping[str, Mount], order: Sequence[str]
    ) -> None:
        self._loaded = dict(loaded)
        self._mounts = dict(mounts)
        known = [*self._loaded, *self._mounts]
        self._names = [n for n in order if n in known] + [n for n in known if n not in order]

    def peek(self, name: str) -> Command | None:
        """The command if it is already loaded, without loading it."""
        return self._loaded.get(name)

    def mount(self, name: str) -> Mount | None:
        return self._mounts.get(name)

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded and name in self._mounts:
            self._loaded[name] = self._mounts[name].load(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._loaded[name] = command
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._loaded.pop(name, None)
        self._mounts.pop(name, None)
        self._names.remove(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


class LazyGroup(TyperGroup):
    """A group with `mounts` besides the commands typer registered, listed in `order`.

    Subclass it, set both, and pass it as `typer.Typer(cls=...)`.
    """

    mounts: ClassVar[Mapping[str, Mount]] = {}
    order: ClassVar[Sequence[str]] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lazy = Commands(self.commands, self.mounts, self.order)
        self.commands = self.lazy

    def list_commands(self, ctx: Context) -> list[str]:
        # The base reads commands.items(), which would load every mount.
        return list(self.lazy)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """The base, except that a mount not yet loaded shows the help line it states."""
        commands: list[tuple[str, Command]] = []
        for name in self.list_commands(ctx):
            command = self.lazy.peek(name)
            mount = self.lazy.mount(name)
            if command is None and mount is not None:
                command = TyperCommand(name, help=mount.help)
            if command is not None and not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            rows = [(name, command.get_short_help_str(limit)) for name, command in commands]
            with formatter.section("Commands"):
                formatter.write_dl(rows)
