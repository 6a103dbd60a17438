"""A settings dataclass as command-line flags and JSON config files: one name per setting everywhere.

Each field `name: annotation = arg(default, help)` is the flag `--name`, the key `name` of a --config
JSON file, and the key of the saved config; the annotation (a string: `from __future__ import
annotations`) picks the flag's type, and `check_types` checks values that came from JSON against it.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import field, fields
from pathlib import Path

from .errors import ConfigError


def arg(default, help: str):
    """A dataclass field with its --help text."""
    return field(default=default, metadata={"help": help})


def _json_or_text(text: str):
    """A JSON value; text that is not JSON (and does not look like an object or list) stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith(("{", "[")):
            raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.colno})") from None
        return text


_ARGPARSE = {
    "int": {"type": int}, "float": {"type": float}, "str": {"type": str},
    "list[int]": {"type": int, "nargs": "+"}, "list[float]": {"type": float, "nargs": "+"},
    "list[str]": {"type": str, "nargs": "*"}, "dict": {"type": _json_or_text}, "str | dict": {"type": _json_or_text},
    "list[dict]": {"type": _json_or_text}, "bool": {"action": argparse.BooleanOptionalAction},
}


def parse(cls, argv, doc: str, program: str) -> dict:
    """The values of `cls`'s fields given by a --config file and the flags in `argv` (flags win);
    `doc`: the program's docstring, its first paragraph the description, the rest the epilog."""
    description, epilog = doc.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=description, epilog=epilog, argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=str, help="JSON file with any of these fields; flags override it")
    for f in fields(cls):
        default = "" if f.default is None else f" [default: {f.default}]"
        parser.add_argument(f"--{f.name}", help=f.metadata["help"] + default, **_ARGPARSE[f.type.removesuffix(" | None")])
    given = vars(parser.parse_args(argv))
    values = read_config_file(given.pop("config"), cls, program) if "config" in given else {}
    values.update(given)
    return values


def read_config_file(path, cls, program: str) -> dict:
    """A --config JSON object of `cls` fields; a ConfigError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at byte {e.start}); "
                          "save it as UTF-8") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of {cls.__name__} fields")
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"--config {path}: unknown field(s) {unknown}; the fields are the flags of {program} --help")
    return values


def type_ok(value, annotation: str) -> bool:
    """Whether `value` (as JSON gives it) fits `annotation`, e.g. "list[int] | None"."""
    for option in annotation.split(" | "):
        if option == "None" and value is None:
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in ("str", "dict") and isinstance(value, {"str": str, "dict": dict}[option]):
            return True
        if option.startswith("list[") and isinstance(value, list):
            inner = option[5:-1]
            if all(type_ok(v, inner) for v in value):
                return True
    return False


def check_types(settings) -> None:
    """A ConfigError naming the flag of the first field whose value does not fit its type, or is not finite."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if not type_ok(value, f.type):
            raise ConfigError(f"--{f.name} must be {f.type.replace(' | ', ' or ')}, got {value!r}")
        if "float" in f.type and any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"--{f.name} must be finite, got {value!r}")
