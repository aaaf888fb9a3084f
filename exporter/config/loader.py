"""Reading configuration YAML: `!env`/`!file` tags, `${VAR}` substitution and line numbers.

A document becomes plain Python data plus a map from key path to line, so that errors found
later by validation can say which line to fix. The errors themselves are defined here too: every
problem with a configuration is one `ConfigError` whose text is a single line,
`<key path>: <what is wrong> (line N)`.

PyYAML keeps the last of two equal keys without a word; a pasted device block would then
silently replace another, so duplicate keys are errors here.

Every file is read with a bounded read after checking it is a regular file, so a FIFO, a device
such as /dev/zero or a huge file is one error line, not a hang; and a document's aliases may
repeat only so many values, so a few hundred bytes of nested aliases cannot take the memory.
"""

from __future__ import annotations

import datetime
import errno
import glob
import os
import re
import stat
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from exporter.config.model import ErrorDetails, Section, ValidationError

Loc = tuple[str | int, ...]
LineMap = dict[Loc, int]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ENV_REF = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)
_STR_TAG = "tag:yaml.org,2002:str"
# A 10,000-device file is about 1 MiB; the rest is room for comments.
MAX_FILE_BYTES = 4 * 1024 * 1024
# What `!file` and `token_file` read is a secret of a few dozen bytes.
MAX_SECRET_BYTES = 64 * 1024
# Values that aliases may add to a document beyond those written out: a `<<: *defaults` merge
# in each of 10,000 devices adds about 150,000. A few hundred bytes of nested aliases
# would otherwise expand to a billion values.
MAX_ALIAS_VALUES = 250_000
# Settings nest five levels deep at most; the limit keeps building far from Python's recursion
# limit (libyaml itself stops at 1,000).
MAX_DEPTH = 32
# Keys whose value must not come out empty from an environment variable or a file.
SECRET_KEYS = frozenset({"password", "token"})
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigError(Exception):
    """A configuration problem, rendered as one line: `[file: ]key.path: message (line N)`.

    `file` is set when the problem is not inside the main configuration's settings: a file that
    cannot be read or parsed, or a device file listed under `device_files`.
    """

    def __init__(
        self,
        message: str,
        *,
        key: Loc = (),
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.key = key_path(key)
        self.file = file
        self.line = line
        self.column = column
        self.others: tuple[ConfigError, ...] = ()  # further problems of the same file
        super().__init__(str(self))

    def problems(self) -> list[ConfigError]:
        """Every problem found, this one first: a configuration is reported whole, a line each."""
        return [self, *self.others]

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        where = ""
        if self.line is not None:
            column = f", column {self.column}" if self.column is not None else ""
            where = f" (line {self.line}{column})"
        return ": ".join([*parts, self.message]) + where


class ConfigFileError(ConfigError):
    """A file (the configuration, a device file, a `!file` target) cannot be read."""


class ConfigSyntaxError(ConfigError):
    """Not valid YAML, or YAML this loader refuses: duplicate keys, unknown tags, tabs."""


class ConfigValueError(ConfigError):
    """Valid YAML whose settings are wrong: unknown keys, bad values, unset variables."""


def key_path(loc: Loc) -> str:
    """Render a location as users write it: `devices[2].labels.site`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def line_of(lines: LineMap, loc: Loc) -> int | None:
    """The line of `loc`, or of its nearest enclosing key when `loc` is not in the file."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def read_text(
    path: Path,
    *,
    display: str,
    key: Loc = (),
    file: str | None = None,
    line: int | None = None,
    limit: int = MAX_FILE_BYTES,
) -> str:
    """Read a UTF-8 file, turning every failure into one ConfigFileError line.

    Without `key` the file is the configuration itself and becomes the error's locator;
    with `key` it is a file some setting points at, named in the message.
    """
    where: dict[str, Any] = {"key": key, "file": file, "line": line} if key else {"file": display}
    name = f"{display} " if key else ""
    try:
        data = read_bounded(path, limit)
    except FileNotFoundError:
        raise ConfigFileError(f"file {name}not found", **where) from None
    except IsADirectoryError:
        raise ConfigFileError(f"{name}is a directory, not a file", **where) from None
    except NotRegularFileError as exc:
        raise ConfigFileError(f"{name}is {exc.kind}, not a regular file", **where) from None
    except FileTooLargeError:
        message = f"file {name}is larger than the limit of {_size(limit)}"
        raise ConfigFileError(message, **where) from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read {name}file: {exc.strerror}", **where) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        message = f"file {name}is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {bad_line}"
        raise ConfigFileError(message, **where) from None


class NotRegularFileError(OSError):
    """A FIFO, device or socket where a file was expected: reading it could block or never end."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"is {kind}, not a regular file")
        self.kind = kind


class FileTooLargeError(OSError):
    """A file longer than the limit its reader allows."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _size(limit: int) -> str:
    return f"{limit // 1024 // 1024} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, without ever blocking.

    Raises IsADirectoryError, NotRegularFileError, FileTooLargeError or another OSError. The
    type is checked before opening (opening some devices has effects) and again on the open
    file, which O_NONBLOCK keeps from waiting for a FIFO's writer if it was swapped in between;
    the read stops after `limit` bytes whatever the size claims, as /proc and growing files lie.
    """
    check_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        check_regular(os.fstat(fd).st_mode)
        return _read_at_most(fd, limit)
    finally:
        os.close(fd)


def check_regular(mode: int) -> None:
    """Raise IsADirectoryError or NotRegularFileError unless `mode` is a regular file's."""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory")
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(_kind(mode))


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise FileTooLargeError(errno.EFBIG, "File too large")


def expand_pattern(pattern: str, base_dir: Path) -> list[Path]:
    """The files a `device_files` pattern names (`**` and `~` allowed), sorted.

    Directories are left out; a FIFO or device is kept, so that reading it names the problem.
    """
    matches = sorted(glob.glob(os.path.expanduser(pattern), root_dir=base_dir, recursive=True))
    paths = [base_dir / m for m in matches]
    return [p for p in paths if p.exists() and not p.is_dir()]


def load_yaml(
    text: str, *, source: str, base_dir: Path, environ: Mapping[str, str], file: str | None
) -> tuple[Any, LineMap]:
    """Parse one YAML document into plain data and a key path → line map.

    `file` names the document in errors about its settings (None for the main configuration,
    whose key paths need no prefix); errors about the document as a whole always name `source`.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text, source) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        message = f"invalid YAML: character #x{exc.character:04x} is not allowed"
        raise ConfigSyntaxError(message, file=source, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigSyntaxError(f"invalid YAML: {_one_line(str(exc))}", file=source) from None
    finally:
        loader.dispose()
    if root is None:
        raise ConfigValueError("file is empty, expected a mapping of settings", file=source)
    # An alias needs an anchor, `&name`: without a `&` anywhere there is nothing to count.
    written, expanded = _count_values(root) if "&" in text else (0, 0)
    if expanded - written > MAX_ALIAS_VALUES:
        message = (
            f"aliases expand to more than {MAX_ALIAS_VALUES:,} values;"
            " write the values out or use fewer nested aliases"
        )
        raise ConfigSyntaxError(message, file=source)
    builder = _Builder(loader, base_dir=base_dir, environ=environ, file=file, source=source)
    data = builder.build(root, ())
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a single value"
        message = f"top level must be a mapping of settings, got {kind}"
        raise ConfigValueError(message, file=source, line=root.start_mark.line + 1)
    return data, builder.lines


# libyaml composes ten times faster than pure Python: a 5000-device file in 0.4 s, not 4 s.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]
    """Composes nodes only; `_Builder` turns them into data so it can track key paths."""


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    return [part for pair in node.value for part in pair]


def _count_values(root: Node) -> tuple[int, int]:
    """Values in a composed document as written, and once every alias is expanded.

    Aliases share one node, so this counts in time proportional to the document as written,
    without building anything. Scalars count one each; a cycle (an alias inside its own anchor)
    counts once and is reported by the builder.
    """
    if isinstance(root, ScalarNode):
        return 1, 1
    expanded: dict[int, int] = {}
    written = 1
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            total = 1
            for child in _children(node):
                total += 1 if isinstance(child, ScalarNode) else expanded.get(id(child), 1)
            expanded[key] = total
        elif key not in expanded and key not in open_nodes:
            open_nodes.add(key)
            stack.append((node, True))
            children = _children(node)
            written += len(children)
            stack.extend((c, False) for c in children if not isinstance(c, ScalarNode))
    return written, expanded[id(root)]


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, source: str) -> ConfigSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if problem.startswith("but ") and exc.context:
        problem = f"{exc.context}, {problem}"
    if mark is None:
        return ConfigSyntaxError(f"invalid YAML: {_one_line(problem)}", file=source)
    lines = text.splitlines()
    if mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
        problem = "tab character found; YAML indentation must use spaces"
    message = f"invalid YAML: {_one_line(problem)}"
    return ConfigSyntaxError(message, file=source, line=mark.line + 1, column=mark.column + 1)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    def __init__(
        self,
        loader: _Loader,
        *,
        base_dir: Path,
        environ: Mapping[str, str],
        file: str | None,
        source: str,
    ) -> None:
        self._loader = loader
        self._source = source
        self._base_dir = base_dir
        self._environ = environ
        self._file = file
        self._active: set[int] = set()
        self._checked: set[int] = set()
        self.lines: LineMap = {}

    def error(self, message: str, loc: Loc, node: Node) -> ConfigValueError:
        file = self._file if loc else self._file or self._source
        return ConfigValueError(message, key=loc, file=file, line=_line(node))

    def build(self, node: Node, loc: Loc) -> Any:
        if len(loc) > MAX_DEPTH:
            raise self.error(f"values nest deeper than {MAX_DEPTH} levels", loc[:4], node)
        self.lines.setdefault(loc, _line(node))
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if node.tag.startswith("!"):
            raise self.error(f"tag {node.tag} only applies to a single value", loc, node)
        if id(node) in self._active:
            raise self.error("alias refers to itself", loc, node)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            return self._mapping(node, loc)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            first: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self._key(key_node, loc)
                if key in first:
                    message = f"duplicate key {key!r}, first defined on line {first[key]}"
                    raise ConfigSyntaxError(
                        message, key=(*loc, key), file=self._file, line=_line(key_node)
                    )
                first[key] = _line(key_node)
            try:
                self._loader.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                message = f"bad merge key: {_one_line(exc.problem or '')}"
                raise self.error(message, loc, node) from None
        # Merged (`<<`) pairs come first, so the mapping's own keys override them.
        winners = {self._key(k, loc): (k, v) for k, v in node.value}
        result: dict[str, Any] = {}
        for key, (key_node, value_node) in winners.items():
            self.lines[(*loc, key)] = _line(key_node)
            result[key] = self.build(value_node, (*loc, key))
        return result

    def _key(self, node: Node, loc: Loc) -> str:
        if not isinstance(node, ScalarNode) or node.tag.startswith("!"):
            raise self.error("mapping keys must be plain names", loc, node)
        return str(node.value)

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        if node.tag == "!env":
            name = str(node.value).strip()
            if name not in self._environ:
                raise self.error(f"environment variable {name} (from !env) is not set", loc, node)
            return self._not_empty(self._environ[name], f"environment variable {name}", loc, node)
        if node.tag == "!file":
            path = self._base_dir / str(node.value).strip()
            display = str(node.value).strip()
            text = read_text(
                path,
                display=display,
                key=loc,
                file=self._file,
                line=_line(node),
                limit=MAX_SECRET_BYTES,
            )
            return self._not_empty(text.rstrip("\r\n"), f"file {display}", loc, node)
        if node.tag.startswith("!"):
            raise self.error(f"unknown tag {node.tag}; use !env or !file", loc, node)
        try:
            value = self._loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise self.error(_one_line(exc.problem or "invalid value"), loc, node) from None
        if node.tag == _STR_TAG and isinstance(value, str):
            return self._substitute(value, loc, node)
        return value

    def _not_empty(self, value: str, origin: str, loc: Loc, node: Node) -> str:
        # An empty variable or file is a deployment mistake; a device would answer 401 forever.
        if not value and loc and loc[-1] in SECRET_KEYS:
            raise self.error(f"{origin} is empty; a {loc[-1]} must not be empty", loc, node)
        return value

    def _substitute(self, value: str, loc: Loc, node: Node) -> str:
        used: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group("name")
            if name is None:
                raise self.error("malformed ${...}: write ${NAME} or ${NAME:-default}", loc, node)
            used.append(name)
            found = self._environ.get(name, "")
            if found:
                return found
            default = match.group("default")
            if default is not None:
                return default
            if name in self._environ:
                return found
            raise self.error(f"environment variable {name} is not set", loc, node)

        result = _ENV_REF.sub(replace, value)
        if used:
            unset = "" if used[0] in self._environ else " is not set and its default"
            self._not_empty(result, f"environment variable {used[0]}{unset}", loc, node)
        return result


# ---- validation ------------------------------------------------------------------------------


class FieldProblem(ValueError):
    """A validation failure about a key below the model that found it, e.g. `labels.__x`.

    `other` is a second location the message refers to (the first of two duplicate names);
    it is rendered with its file and line, which only the loader knows.
    """

    def __init__(self, loc: Loc, message: str, *, other: Loc | None = None) -> None:
        self.loc = loc
        self.message = message
        self.other = other
        super().__init__(self.render(key_path))

    def render(self, describe: Callable[[Loc], str]) -> str:
        return self.message if self.other is None else f"{self.message} {describe(self.other)}"


def describe_kind(value: object) -> str:
    """What a YAML value is, for messages that must not echo it: "a list", "a number"."""
    if value is None:
        return "nothing (null)"
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        ((int, float), "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
        ((datetime.date, datetime.datetime), "a date"),
    ]
    for classes, name in kinds:
        if isinstance(value, classes):
            return name
    return f"a {type(value).__name__}"


Settings = TypeVar("Settings", bound=Section)


@dataclass
class DeviceFileMemory:
    """The devices each device file last gave, so that a running exporter's reload survives one
    bad file.

    With a memory, a device file that cannot be read or holds a bad device keeps the devices it
    gave last time (none if it never loaded), and its one-line error, saying which, is put in
    `problems` instead of failing the whole load, as Prometheus does with file-based discovery.
    Mistakes in the main configuration, and conflicts between files, still fail the load.
    """

    good: dict[Path, tuple[_Source, list[Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_settings(
    model: type[Settings],
    text: str,
    *,
    source: str,
    base_dir: Path,
    environ: Mapping[str, str],
    memory: DeviceFileMemory | None = None,
) -> Settings:
    """Parse and validate the main configuration, merging in the devices of `device_files`.

    The main file is validated alone first, so its own mistakes are reported before any device
    file is read; then once more with every device, which checks names across the whole fleet.
    """
    data, lines = load_yaml(text, source=source, base_dir=base_dir, environ=environ, file=None)
    main = _Source(source, lines, is_main=True)
    context = {"base_dir": base_dir}
    settings = _validate(model, data, _Locator(main), context)
    patterns: list[str] = data.get("device_files") or []
    if memory is not None:
        memory.problems = []
    if not patterns:
        return settings
    devices: list[Any] = list(data.get("devices") or [])
    origins = [(main, i) for i in range(len(devices))]
    seen: set[Path] = set()
    good: dict[Path, tuple[_Source, list[Any]]] = {}
    for k, pattern in enumerate(patterns):
        paths = expand_pattern(pattern, base_dir)
        if not paths:
            loc: Loc = ("device_files", k)
            raise ConfigValueError(f"{pattern!r} matches no files", key=loc, line=lines.get(loc))
        for path in paths:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                device_source, items = _read_device_file(path, environ)
                if memory is not None:  # alone, so that a bad device is blamed on its file
                    alone = _Locator(main, [(device_source, i) for i in range(len(items))])
                    _validate(model, {**data, "devices": items}, alone, context)
            except ConfigError as exc:
                if memory is None:
                    raise
                if path not in memory.good:
                    memory.problems.append(f"{exc}; not loaded, it gave no devices before")
                    continue
                device_source, items = memory.good[path]
                kept = f"{len(items)} device{'s' if len(items) != 1 else ''}"
                memory.problems.append(f"{exc}; keeping the {kept} it gave before")
            good[path] = (device_source, items)
            origins.extend((device_source, i) for i in range(len(items)))
            devices.extend(items)
    merged = _validate(model, {**data, "devices": devices}, _Locator(main, origins), context)
    if memory is not None:
        memory.good = good
    return merged


def _read_device_file(path: Path, environ: Mapping[str, str]) -> tuple[_Source, list[Any]]:
    display = str(path)
    text = read_text(path, display=display)
    if path.suffix.lower() == ".json":
        # YAML refuses tabs that JSON allows; in valid JSON every raw tab is only whitespace.
        text = text.replace("\t", " ")
    data, lines = load_yaml(
        text, source=display, base_dir=path.parent, environ=environ, file=display
    )

    def fail(message: str, loc: Loc) -> ConfigValueError:
        return ConfigValueError(message, key=loc, file=display, line=line_of(lines, loc))

    for key in data:
        if key != "devices":
            raise fail("unknown key; a device file holds only a devices list", (key,))
    if "devices" not in data:
        raise fail("a device file must hold a devices list", ())
    devices = data["devices"] if data["devices"] is not None else []
    if not isinstance(devices, list):
        raise fail(f"expected a list of devices, got {describe_kind(devices)}", ("devices",))
    return _Source(display, lines, is_main=False), devices


@dataclass(frozen=True)
class _Source:
    name: str
    lines: LineMap
    is_main: bool

    @property
    def file(self) -> str | None:
        """How errors name this file: the main configuration's key paths need no prefix."""
        return None if self.is_main else self.name


class _Locator:
    """Maps a location in the merged settings back to the file and key path it came from."""

    def __init__(self, main: _Source, devices: list[tuple[_Source, int]] | None = None) -> None:
        self._main = main
        self._devices = devices or []

    def place(self, loc: Loc) -> tuple[_Source, Loc]:
        if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
            origin = self._devices[loc[1]] if loc[1] < len(self._devices) else None
            if origin:
                return origin[0], ("devices", origin[1], *loc[2:])
        return self._main, loc

    def describe(self, loc: Loc, seen_from: _Source) -> str:
        """`loc` for a message about a key in `seen_from`: names the file if it is another."""
        source, local = self.place(loc)
        text = key_path(local)
        if source is not seen_from:
            text += f" in {source.name}"
        line = line_of(source.lines, local)
        return text if line is None else f"{text} on line {line}"

    def explain(self, exc: ValidationError, model: type[Section]) -> ConfigValueError:
        errors = _relevant(exc.errors(include_url=False))
        found = [self._one(error, model) for error in errors[:MAX_PROBLEMS]]
        first = found[0]
        first.others = tuple(found[1:])
        return first

    def _one(self, error: ErrorDetails, model: type[Section]) -> ConfigValueError:
        loc: Loc = tuple(part for part in error["loc"] if part != "[key]")
        problem = error.get("ctx", {}).get("error")
        if isinstance(problem, FieldProblem):
            loc = (*loc, *problem.loc)
        source, local = self.place(loc)
        if isinstance(problem, FieldProblem):
            message = problem.render(lambda other: self.describe(other, source))
        else:
            message = _message(error, model, loc)
        return ConfigValueError(
            message, key=local, file=source.file, line=line_of(source.lines, local)
        )


MAX_PROBLEMS = 20


def _relevant(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """The errors worth a line, misspellings first: a required key reported missing beside
    an unknown key that looks like it (`hots` for `host`) is that misspelling, said once."""
    import difflib  # only a configuration with mistakes needs it

    unknown: dict[tuple[Any, ...], list[str]] = {}
    for e in errors:
        if e["type"] == "extra_forbidden" and e["loc"]:
            unknown.setdefault(tuple(e["loc"][:-1]), []).append(str(e["loc"][-1]))
    kept = []
    for e in errors:
        if e["type"] == "missing" and e["loc"]:
            near = unknown.get(tuple(e["loc"][:-1]), [])
            if difflib.get_close_matches(str(e["loc"][-1]), near, n=1):
                continue
        kept.append(e)
    kept.sort(key=lambda e: e["type"] != "extra_forbidden")
    return kept or errors


def _validate(
    model: type[Settings], data: Any, locator: _Locator, context: dict[str, Any]
) -> Settings:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise locator.explain(exc, model) from None


def _short(value: object) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return describe_kind(value)


def _message(error: ErrorDetails, model: type[Section], loc: Loc) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        import difflib

        names = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), names, n=1) if loc else []
        return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {describe_kind(value)}"
    if kind == "list_type":
        return f"expected a list, got {describe_kind(value)}"
    if kind == "string_type":
        quote = "" if isinstance(value, list | dict) or value is None else "; put it in quotes"
        return f"must be a string, got {describe_kind(value)}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, got {_short(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {_short(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {_short(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {_short(value)}"
    if kind == "string_too_short":
        shortest = ctx.get("min_length", 1)
        return "must not be empty" if shortest <= 1 else f"must be at least {shortest} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, got {ctx['actual']}"
    if kind in ("too_short", "too_long"):
        words, bound = (
            ("at least", "min_length") if kind == "too_short" else ("at most", "max_length")
        )
        n = ctx[bound]
        return f"must have {words} {n} entr{'y' if n == 1 else 'ies'}, got {ctx['actual']}"
    if kind == "finite_number":
        return f"must be a finite number, got {_short(value)}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("greater than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]}, got {_short(value)}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return _one_line(str(ctx["error"]))
    return _one_line(error["msg"])


def _field_names(model: type[Section], loc: Loc) -> list[str]:
    """Keys allowed at `loc`, for "did you mean" hints; [] where `loc` is not a model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, Section):
            field = current.model_fields.get(part)
            current = field.annotation if field else None
        else:
            return []
        if get_origin(current) in (Union, types.UnionType):
            options = [arg for arg in get_args(current) if arg is not type(None)]
            current = options[0] if len(options) == 1 else None
    if get_origin(current) is None and isinstance(current, type) and issubclass(current, Section):
        return list(current.model_fields)
    return []
