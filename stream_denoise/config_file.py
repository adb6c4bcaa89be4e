"""Config files: TOML read and validated once (with the CLI's flags merged in), every problem
reported with its line. The config tree itself is :mod:`stream_denoise.config`."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import DeploymentConfig, RunConfig
from .errors import ConfigError


def parse(model: type[BaseModel], data: dict[str, Any], origin: str = "flags") -> Any:
    """Validate ``data`` (not from a file: CLI flags) into ``model``; ConfigError naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{origin}: {loc + ': ' if loc else ''}{_message(err)}") from None


def _message(err: Any) -> str:
    """pydantic's message without its "Value error, " prefix (the message is ours)."""
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """(text, parsed data) of a TOML file; a missing or malformed file is a one-line ConfigError."""
    try:
        text = Path(path).read_text()
        return text, tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


class ConfigProblems(ConfigError):
    """Every problem of a config file; ``problems`` holds one ``FILE:LINE: key: message`` per bad field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def check_config(path: str | Path | None, merge: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 ) -> RunConfig | DeploymentConfig:
    """The one validation of a deployment's settings: the TOML file ``path`` (None: no file), with
    ``merge`` (the CLI's flags) applied to its data, validated once. A DeploymentConfig when it has
    ``cameras``, else a RunConfig.

    Strict: values must already have the right TOML type (``"5"`` is not a
    number, ``"yes"`` is not a boolean). Raises :class:`ConfigProblems` listing every bad field: with
    its line in the file, or as ``flags`` when a flag set it.
    """
    import copy
    import json

    text, data = read_toml(Path(path)) if path is not None else ("", {})
    given = merge(copy.deepcopy(data)) if merge is not None else data
    model: type[RunConfig] | type[DeploymentConfig] = DeploymentConfig if "cameras" in given else RunConfig
    errors: list[Any] = []
    cfg: RunConfig | DeploymentConfig | None = None
    try:
        cfg = model.model_validate(given)
    except ValidationError as exc:
        errors = list(exc.errors())
    try:  # the same data as JSON, strictly: catches values that only coerce ("5" for 5)
        model.model_validate_json(json.dumps(given, default=str), strict=True)
    except ValidationError as exc:
        seen = {tuple(e["loc"]) for e in errors}
        errors += [e for e in exc.errors() if _given(given, e["loc"]) and tuple(e["loc"]) not in seen]
    if errors or cfg is None:
        lines = _key_lines(text)

        def origin(loc: tuple[int | str, ...]) -> tuple[str, int]:
            from_file = path is not None and (not _given(given, loc) or _at(data, loc) == _at(given, loc))
            return (str(path), _line_for(loc, lines) or 0) if from_file else ("flags", 0)

        located = sorted(((*origin(tuple(e["loc"])), e) for e in errors), key=lambda p: (p[0] == "flags", p[1]))
        raise ConfigProblems([_describe(where, e, line) for where, line, e in located])
    return cfg


def _at(data: Any, loc: tuple[int | str, ...]) -> Any:
    """The value at ``loc`` (None where it is absent)."""
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _given(data: Any, loc: tuple[int | str, ...]) -> bool:
    """Whether ``loc`` names a value present in the file (strict checks of defaults are not the user's)."""
    for part in loc:
        in_table = isinstance(data, dict) and part in data
        in_array = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_table or in_array):
            return False
        data = data[part]
    return True


def _describe(origin: str, err: Any, line: int) -> str:
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    where = f"{origin}:{line}: " if line else f"{origin}: "
    return f"{where}{key + ': ' if key else ''}{_message(err)}"


def _line_for(loc: tuple[int | str, ...], lines: dict[tuple[int | str, ...], int]) -> int | None:
    """Line of the deepest part of ``loc`` written in the file (skipping parts that are not keys)."""
    prefixes = {k[:n] for k in lines for n in range(1, len(k) + 1)}
    path: tuple[int | str, ...] = ()
    best = None
    for part in loc:
        if path + (part,) in prefixes:
            path += (part,)
            best = lines.get(path, best)
    return best


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=(.*)$""")


def _split_key(key: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def _key_lines(text: str) -> dict[tuple[int | str, ...], int]:
    """Line (1-based) of every key and table of a TOML text, by path; ``[[array]]`` entries get indices.

    Enough TOML for config files: tables, arrays of tables, dotted and quoted keys, values spanning
    lines (arrays, inline tables, multi-line strings) skipped. Keys inside inline tables map to the
    line of the table's own key.
    """
    out: dict[tuple[int | str, ...], int] = {}
    counts: dict[tuple[int | str, ...], int] = {}
    table: tuple[int | str, ...] = ()

    def resolve(keys: tuple[str, ...]) -> tuple[int | str, ...]:
        path: tuple[int | str, ...] = ()
        for k in keys:
            path += (k,)
            if path in counts:
                path += (counts[path],)
        return path

    skip_until: str | None = None  # closing delimiter of a multi-line value
    depth = 0
    for no, line in enumerate(text.splitlines(), start=1):
        if skip_until is not None:
            if skip_until in line:
                skip_until = None
            continue
        if depth:
            depth += _depth(line)
            continue
        if m := _HEADER.match(line):
            keys = _split_key(m.group(2))
            if m.group(1) == "[[":
                parent = resolve(keys[:-1]) + (keys[-1],)
                counts[parent] = counts.get(parent, -1) + 1
                out.setdefault(parent, no)
                table = parent + (counts[parent],)
            else:
                table = resolve(keys)
            out.setdefault(table, no)
        elif m := _KEY.match(line):
            out.setdefault(table + _split_key(m.group(1)), no)
            value = m.group(2).strip()
            for quote in ('"""', "'''"):
                if value.startswith(quote) and value.count(quote) == 1:
                    skip_until = quote
            if skip_until is None and value[:1] in "[{":
                depth = _depth(value)
    return out


def _depth(s: str) -> int:
    """Net bracket depth of ``s``, ignoring brackets inside simple strings and comments."""
    s = re.sub(r'"(\\.|[^"\\])*"|\'[^\']*\'', "", s).split("#", 1)[0]
    return s.count("[") + s.count("{") - s.count("]") - s.count("}")
