"""Turn jsonargparse's parse errors into one line: the full config key and the accepted options.

An unknown key inside a subclass value (`--data.init_args.bogus_key=1`, or a typo in a YAML file)
makes jsonargparse print a 10–20-line dump of every union member it tried. `unknown_key_error`
reads that dump back (the nesting of `Parser key "…"` and `Problem with given class_path '…'`
lines), rebuilds the key and lists what the class accepts, closest matches first.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from common.errors import ConfigError

log = logging.getLogger("experiments")
T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """argparse for the non-Trainer commands: a usage error is one logged line naming the command's
    `--help`, and exit status 2 (like the rest of the CLI)."""

    def error(self, message: str) -> NoReturn:
        log.error("%s (run `%s --help` for every option)", message, self.prog)
        sys.exit(2)


_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"(?:given class_path |class_path=)'([\w.]+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_NOT_EXPECTED = re.compile(r'Key "([^"]+)" is not expected')
_UNRECOGNIZED = re.compile(r"nrecognized arguments: --?([\w.+-]+)")


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def class_options(class_path: str) -> list[str]:
    """The `init_args` a class accepts (its constructor's parameters, inherited ones included)."""
    from jsonargparse import ArgumentParser

    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(_import(class_path), fail_untyped=False, sub_configs=True)
    except Exception:  # an unimportable class: no list, the key alone is still named
        return []
    return _top_level(parser, "")


def _top_level(parser: Any, prefix: str) -> list[str]:
    names = set()
    for action in parser._actions:
        dest = getattr(action, "dest", "")
        if not dest.startswith(prefix) or dest in ("help", "config", "print_config"):
            continue
        head = dest[len(prefix) :].split(".")[0]
        if head and not head.endswith("help") and head != "__default_config__":
            names.add(head)
    return sorted(names)


def _describe(key: str, options: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, options, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    listed = ", ".join(options) if options else "see --help"
    return f"unknown option; {hint}accepted: {listed}"


def unknown_key_error(text: str, parser: Any | None = None) -> ConfigError | None:
    """A one-line `ConfigError` for an unknown key in jsonargparse's error `text`, else None."""
    unrecognized = _UNRECOGNIZED.search(text)
    if unrecognized:
        key = unrecognized.group(1).split("=")[0].rstrip("+")
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        options = _top_level(parser, prefix) if parser is not None else []
        return ConfigError(key, _describe(key, options))
    stack: list[tuple[int, str, str | None]] = []  # (indent, key segment, class path)
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" -"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        leaf = _NOT_ACCEPTED.search(line) or _NOT_EXPECTED.search(line)
        parser_key = _PARSER_KEY.search(line)
        class_path = _CLASS_PATH.search(line)
        if leaf:
            owner = class_path.group(1) if class_path else None
            if owner is None:
                owner = next((c for _, _, c in reversed(stack) if c), None)
            segments = [s for _, s, _ in stack if s]
            if class_path and "given class_path" not in line:  # "…callable class: Option 'x'…"
                segments.append("init_args")
            key = ".".join([*segments, leaf.group(1)])
            options = class_options(owner) if owner else []
            if not options and parser is not None and not owner:
                options = _top_level(parser, ".".join(segments) + "." if segments else "")
            return ConfigError(key, _describe(key, options))
        if parser_key:
            stack.append((indent, parser_key.group(1), None))
        elif class_path:
            stack.append((indent, "init_args", class_path.group(1)))
    return None


def config_parser(prog: str, description: str, config_class: type, force_help: str) -> Any:
    """The jsonargparse parser of a data command: `--config` files (repeatable, with the CLI's
    `!include`), every field of `config_class` as an option (its docstring is the help), and
    `--force` (`force_help`). Errors are raised, not printed (`parse_arguments` words them)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from experiments import include

    parser = ArgumentParser(
        prog=prog,
        description=description,
        exit_on_error=False,
        default_env=False,
        parser_mode=include.register(),
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config file (repeatable)")
    parser.add_class_arguments(config_class, fail_untyped=True, sub_configs=True)
    parser.add_argument("--force", action="store_true", help=force_help)
    return parser


_TYPED_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<message>.*)$')


def parse_arguments(parser: Any, argv: Sequence[str] | None) -> Any:
    """Parse and instantiate `argv` (default `sys.argv[1:]`) with a jsonargparse `parser` of a data
    command (`--config` files and options); an unknown or ill-typed option becomes a one-line
    `ConfigError` naming the key, a user error raised while instantiating is re-raised as is."""
    from jsonargparse import ArgumentError

    from common.errors import find_user_error

    try:
        namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        return instantiate(namespace)
    except ArgumentError as error:
        user = find_user_error(error) or unknown_key_error(str(error), parser)
        if user is not None:
            raise user from None
        text = " ".join(str(error).split())
        typed = _TYPED_KEY.match(text)  # `Parser key "count_sft": Expected a <class 'int'>. ...`
        if typed:
            raise ConfigError(typed["key"], typed["message"]) from None
        raise ConfigError("command line", text) from None


def run_main(prog: str, run: Callable[[], T], logger: logging.Logger) -> T:
    """Run a data command's `run()` with logging set up; a user error (bad data, bad config values)
    logs one line naming `python -m <prog> --help` and exits with status 2."""
    import os

    from common.errors import find_user_error

    logging.basicConfig(
        level=os.environ.get("ADAPTLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run()
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        logger.error("%s (run `python -m %s --help` for every option)", user_error, prog)
        sys.exit(2)
