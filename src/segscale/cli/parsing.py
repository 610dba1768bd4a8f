"""How the command line reads its arguments, compatible with the argparse CLI it replaced: value types whose
errors say what argparse said, unique prefixes of long flags (`--snap` for `--snapshot-date`), `-h`, a lowercase
`usage:` line, and usage errors as `segscale CMD: error: ...` with exit 2."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import sys
from collections.abc import Callable
from typing import Any

import typer
from pydantic_core import PydanticCustomError

# Typer 0.29 carries its own copy of Click: its contexts, parameters and usage errors are these, not the click
# package's.
from typer import _click as click
from typer._click.exceptions import MissingParameter, UsageError
from typer.core import TyperArgument, TyperGroup, TyperOption

HELP_OPTIONS = ["-h", "--help"]


class ArgumentError(UsageError):
    """A usage error whose message is already in argparse's words; `error_line` prints it as it is."""


# ---- value types ---------------------------------------------------------------------------------------------
class Value:
    """A flag's `parser`: `parse` raises ValueError with the message argparse gave for a bad value, which Typer
    (validating through pydantic) reports as it is."""

    def __init__(self, name: str, parse: Callable[[str], Any]):
        self.__name__ = name
        self.parse = parse

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            raise PydanticCustomError("segscale_argument", "{message}", {"message": str(exc)}) from None


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"invalid {kind.__name__} value: {text!r}") from None
    return parse


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time like 2024-12-31T08:00:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _days(text: str) -> int:
    match = re.fullmatch(r"(\d+)([dw])", text.strip())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{text!r} is not an interval like 1d, 7d or 2w")
    return int(match.group(1)) * (7 if match.group(2) == "w" else 1)


def choice(*options: str) -> Value:
    """One of `options`, exactly."""
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"invalid choice: {text!r} (choose from {', '.join(map(repr, options))})")
        return text
    return Value("choice", parse)


INT = Value("integer", _number(int))
FLOAT = Value("float", _number(float))
DATE = Value("date", _date)
TIMESTAMP = Value("timestamp", _timestamp)
DAYS = Value("interval", _days)


# ---- argument lists ------------------------------------------------------------------------------------------
def _expand(command: click.Command, ctx: click.Context, args: list[str]) -> list[str]:
    """`args` with each long flag's unique prefix written out in full. Unknown flags, extra positional arguments
    and ambiguous prefixes are refused as argparse refused them. A group stops at its subcommand's name."""
    if any(a in HELP_OPTIONS for a in args[:args.index("--") if "--" in args else len(args)]):
        return args  # help wins over every other problem, as with argparse
    options = {name: param for param in command.params if isinstance(param, TyperOption)
               for name in param.opts + param.secondary_opts}
    positionals = sum(1 for p in command.params if isinstance(p, TyperArgument))
    is_group = isinstance(command, TyperGroup)
    out: list[str] = []
    unknown: list[str] = []
    seen = 0
    tokens = iter(args)
    for token in tokens:
        if token == "--" or (is_group and not token.startswith("-")):
            out.append(token)
            out.extend(tokens)
            break
        if token.startswith("-") and token != "-":
            name, equals, value = token.partition("=")
            matches = [name] if name in options else [o for o in options if o.startswith("--") and
                                                       name.startswith("--") and o.startswith(name)]
            if len(matches) > 1:
                raise ArgumentError(f"ambiguous option: {name} could match {', '.join(matches)}", ctx)
            if not matches:
                unknown.append(token)
                continue
            option = options[matches[0]]
            out.append(matches[0] + equals + value)
            if not option.is_flag and not equals:
                out.extend(itertools.islice(tokens, 1))  # its value, whatever it looks like
            continue
        seen += 1
        (out if seen <= positionals else unknown).append(token)
    if unknown:
        raise ArgumentError(f"unrecognized arguments: {' '.join(unknown)}", ctx.find_root())
    return out


# ---- commands ------------------------------------------------------------------------------------------------
class _ArgparseCompatible:
    """Mixed into Typer's command classes: the usage line and the argument checks above."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, " ".join(self.collect_usage_pieces(ctx)), prefix="usage: ")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _expand(self, ctx, args))


class Command(_ArgparseCompatible, typer.core.TyperCommand):
    """A segscale command."""


class Group(_ArgparseCompatible, TyperGroup):
    """`segscale`: its commands in the order they were declared, exactly one of them per invocation."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        if not ctx._protected_args:
            raise ArgumentError("the following arguments are required: COMMAND", ctx)
        return rest

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                          list[str]]:
        if args and args[0] not in self.commands:
            raise ArgumentError(f"argument COMMAND: invalid choice: {args[0]!r} (choose from "
                                f"{', '.join(map(repr, self.list_commands(ctx)))})", ctx)
        return super().resolve_command(ctx, args)


def _display(param: click.Parameter) -> str:
    return "/".join(param.opts) if isinstance(param, TyperOption) else param.name


def report_usage_error(exc: UsageError) -> int:
    """Print a usage error as argparse did (the usage line, then `PROG: error: MESSAGE`) and return exit code 2."""
    ctx = exc.ctx
    if isinstance(exc, ArgumentError):
        message = exc.message
    elif isinstance(exc, MissingParameter) and ctx is not None:
        missing = [p for p in ctx.command.params if p.required and p.name not in ctx.params]
        message = "the following arguments are required: " + ", ".join(map(_display, missing or [exc.param]))
    elif isinstance(exc, typer.BadParameter) and exc.param is not None:
        message = f"argument {_display(exc.param)}: {exc.message}"
    else:
        message = exc.format_message()
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
    print(f"{ctx.command_path if ctx is not None else 'segscale'}: error: {message}", file=sys.stderr)
    return 2
