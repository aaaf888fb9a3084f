"""Frozen configuration sections declared by type hints, validated from parsed YAML.

A section is a class of annotated fields (`interval: Duration = 15.0`) with optional field and
model validators; `Section.model_validate(data, context=...)` checks a mapping against it and
either returns a frozen instance or raises `ValidationError` listing every problem found, each
as a dict with a machine-readable `type`, the key path `loc`, the offending `input` and a
`ctx`, which `config.loader` turns into one-line messages with file and line.

It understands only what the configuration uses: str, int, float, bool, `SecretStr`,
`Literal[...]`, `X | None`, `list[X]`, `dict[str, X]`, nested sections, and `Annotated` with
`Field` bounds (ge, le, gt, lt, min_length, max_length, allow_inf_nan) or `BeforeValidator`.
Inputs are coerced as YAML users expect: "80" is a port, 5.0 is a whole number, "yes" is true,
but 5 is not a string and true is not a number. It replaces a general validation library that
costs about 11 MiB of RSS and a tenth of a second at every start, which on a small board is a
fifth of what the whole exporter needs.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import re
import types
from collections.abc import Callable
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    NotRequired,
    TypedDict,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

__all__ = [
    "BeforeValidator",
    "ErrorDetails",
    "Field",
    "FieldInfo",
    "PrivateAttr",
    "SecretStr",
    "Section",
    "ValidationError",
    "ValidationInfo",
    "field_validator",
    "model_validator",
]

Loc = tuple[str | int, ...]


class ErrorDetails(TypedDict):
    type: str
    loc: Loc
    msg: str
    input: Any
    ctx: NotRequired[dict[str, Any]]


class ValidationError(ValueError):
    """Every problem found in one validation, in the order the fields are declared."""

    def __init__(self, title: str, errors: list[ErrorDetails]) -> None:
        self.title = title
        self._errors = errors
        super().__init__(str(self))

    def errors(self, *, include_url: bool = False) -> list[ErrorDetails]:
        return list(self._errors)

    def __str__(self) -> str:
        count = len(self._errors)
        lines = [f"{count} validation error{'s' if count != 1 else ''} for {self.title}"]
        for e in self._errors:
            lines.append(".".join(str(part) for part in e["loc"]) or "(root)")
            lines.append(f"  {e['msg']}")  # never the input: it may be a secret
        return "\n".join(lines)


class ValidationInfo:
    """What validators that take a second argument get: the caller's context."""

    __slots__ = ("context",)

    def __init__(self, context: dict[str, Any] | None) -> None:
        self.context = context


class SecretStr:
    """A string that never shows itself in reprs, logs or error messages."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def get_secret_value(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(self._secret)

    def __len__(self) -> int:
        return len(self._secret)


_MISSING: Any = object()


class FieldInfo:
    """A field's default, alias and bounds; `annotation` is its type without `Annotated`."""

    __slots__ = (
        "alias",
        "allow_inf_nan",
        "annotation",
        "default",
        "default_factory",
        "ge",
        "gt",
        "le",
        "lt",
        "max_length",
        "min_length",
    )

    def __init__(
        self,
        default: Any = _MISSING,
        *,
        default_factory: Callable[[], Any] | None = None,
        alias: str | None = None,
        ge: float | None = None,
        le: float | None = None,
        gt: float | None = None,
        lt: float | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        allow_inf_nan: bool = True,
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.alias = alias
        self.ge, self.le, self.gt, self.lt = ge, le, gt, lt
        self.min_length, self.max_length = min_length, max_length
        self.allow_inf_nan = allow_inf_nan
        self.annotation: Any = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def make_default(self) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        # Each instance gets its own copy of a mutable default, as a dataclass field would.
        return copy.copy(self.default) if isinstance(self.default, list | dict) else self.default


def Field(default: Any = _MISSING, **kwargs: Any) -> Any:
    """A field's default and bounds: `Field(default_factory=...)`, `Annotated[int, Field(ge=1)]`."""
    return FieldInfo(default, **kwargs)


class BeforeValidator:
    """In `Annotated[...]`: a function run on the raw input before the type is checked."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


class _Private:
    __slots__ = ()


def PrivateAttr() -> Any:
    """A non-field attribute that validators may set on a frozen instance."""
    return _Private()


class _Decorated:
    """A validator method, until its class is set up."""

    def __init__(self, method: Any, fields: tuple[str, ...], mode: str, kind: str) -> None:
        self.method = method
        self.fields = fields
        self.mode = mode
        self.kind = kind


F = TypeVar("F")


def field_validator(*fields: str, mode: Literal["before", "after"] = "after") -> Callable[[F], F]:
    """A classmethod `(cls, value[, info]) -> value` run on the named fields."""

    def mark(method: F) -> F:
        return _Decorated(method, fields, mode, "field")  # type: ignore[return-value]

    return mark


def model_validator(*, mode: Literal["before", "after"]) -> Callable[[F], F]:
    """Before: a classmethod `(cls, data[, info]) -> data` on the raw mapping. After: a method
    `(self[, info]) -> self` run once every field is valid."""

    def mark(method: F) -> F:
        return _Decorated(method, (), mode, "model")  # type: ignore[return-value]

    return mark


def _takes_info(func: Callable[..., Any], positional: int) -> bool:
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params) > positional


# A check takes (value, loc, errors, info) and returns the value, or _BAD with errors appended.
Check = Callable[[Any, Loc, list[ErrorDetails], ValidationInfo], Any]
_BAD: Any = object()


def _error(
    errors: list[ErrorDetails], kind: str, loc: Loc, value: Any, msg: str, **ctx: Any
) -> Any:
    detail: ErrorDetails = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        detail["ctx"] = ctx
    errors.append(detail)
    return _BAD


def _raised(errors: list[ErrorDetails], exc: Exception, loc: Loc, value: Any) -> Any:
    if isinstance(exc, AssertionError):
        return _error(errors, "assertion_error", loc, value, f"Assertion failed, {exc}", error=exc)
    return _error(errors, "value_error", loc, value, f"Value error, {exc}", error=exc)


_INT = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _check_str(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
    if isinstance(value, str):
        return value
    return _error(errors, "string_type", loc, value, "Input should be a valid string")


def _check_secret(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, str):
        return SecretStr(value)
    return _error(errors, "string_type", loc, value, "Input should be a valid string")


def _check_int(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        return _error(errors, "int_type", loc, value, "Input should be a valid integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        return _error(errors, "int_from_float", loc, value, "Input should be a whole number")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if _INT.fullmatch(text) and len(text) <= 4300:
            return int(text)
        return _error(errors, "int_parsing", loc, value, "Input should be a valid integer")
    return _error(errors, "int_type", loc, value, "Input should be a valid integer")


def _check_float(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        return _error(errors, "float_type", loc, value, "Input should be a valid number")
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return _error(errors, "float_parsing", loc, value, "Input should be a valid number")
    return _error(errors, "float_type", loc, value, "Input should be a valid number")


def _check_bool(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        return _error(errors, "bool_parsing", loc, value, "Input should be a valid boolean")
    return _error(errors, "bool_type", loc, value, "Input should be a valid boolean")


def _any(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
    return value


_SCALARS: dict[Any, Check] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    SecretStr: _check_secret,
    Any: _any,
}


def _expected(options: tuple[Any, ...]) -> str:
    shown = [repr(o) for o in options]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _literal(options: tuple[Any, ...]) -> Check:
    allowed = frozenset(options)
    expected = _expected(options)

    def check(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        try:
            if value in allowed and not isinstance(value, bool):
                return value
        except TypeError:  # an unhashable input: a list or a mapping
            pass
        return _error(
            errors, "literal_error", loc, value, f"Input should be {expected}", expected=expected
        )

    return check


def _nullable(inner: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        return None if value is None else inner(value, loc, errors, info)

    return check


def _list(item: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        if not isinstance(value, list | tuple):
            return _error(errors, "list_type", loc, value, "Input should be a valid list")
        before = len(errors)
        out = [item(v, (*loc, i), errors, info) for i, v in enumerate(value)]
        return _BAD if len(errors) > before else out

    return check


def _dict(key: Check, item: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            return _error(errors, "dict_type", loc, value, "Input should be a valid dictionary")
        before = len(errors)
        out = {}
        for k, v in value.items():
            checked = key(k, (*loc, k, "[key]"), errors, info)
            out[checked] = item(v, (*loc, k), errors, info)
        return _BAD if len(errors) > before else out

    return check


def _bounded(inner: Check, spec: FieldInfo) -> Check:
    limits: list[tuple[float | None, str, str, Callable[[Any, Any], bool], str]] = [
        (spec.ge, "greater_than_equal", "ge", operator.ge, "greater than or equal to"),
        (spec.le, "less_than_equal", "le", operator.le, "less than or equal to"),
        (spec.gt, "greater_than", "gt", operator.gt, "greater than"),
        (spec.lt, "less_than", "lt", operator.lt, "less than"),
    ]
    numeric = [limit for limit in limits if limit[0] is not None]
    shortest, longest, finite = spec.min_length, spec.max_length, not spec.allow_inf_nan

    def check(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        value = inner(value, loc, errors, info)
        if value is _BAD or value is None:
            return value
        if finite and isinstance(value, float) and not math.isfinite(value):
            return _error(errors, "finite_number", loc, value, "Input should be a finite number")
        for bound, kind, key, holds, words in numeric:
            if not holds(value, bound):
                msg = f"Input should be {words} {bound}"
                return _error(errors, kind, loc, value, msg, **{key: bound})
        if shortest is not None or longest is not None:
            text = isinstance(value, str)
            n = len(value)
            if shortest is not None and n < shortest:
                kind = "string_too_short" if text else "too_short"
                msg = f"Input should have at least {shortest} item{'s' * (shortest != 1)}"
                return _error(errors, kind, loc, value, msg, min_length=shortest, actual=n)
            if longest is not None and n > longest:
                kind = "string_too_long" if text else "too_long"
                msg = f"Input should have at most {longest} item{'s' * (longest != 1)}"
                return _error(errors, kind, loc, value, msg, max_length=longest, actual=n)
        return value

    return check


def _before(inner: Check, func: Callable[[Any], Any]) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        try:
            value = func(value)
        except (ValueError, AssertionError) as exc:
            return _raised(errors, exc, loc, value)
        return inner(value, loc, errors, info)

    return check


def _compile(hint: Any) -> tuple[Check, Any, FieldInfo | None]:
    """The check for a type hint, the hint without `Annotated`, and its `Field` if any."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        check, bare, _ = _compile(base)
        spec = next((e for e in extras if isinstance(e, FieldInfo)), None)
        if spec is not None:
            check = _bounded(check, spec)
        for extra in reversed(extras):
            if isinstance(extra, BeforeValidator):
                check = _before(check, extra.func)
        return check, bare, spec
    if hint in _SCALARS:
        return _SCALARS[hint], hint, None
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint._check, hint, None
    if origin is Literal:
        return _literal(get_args(hint)), hint, None
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1 and len(get_args(hint)) == 2:
            return _nullable(_compile(options[0])[0]), hint, None
    if origin is list:
        return _list(_compile(get_args(hint)[0])[0]), hint, None
    if origin is dict:
        key, value = get_args(hint)
        return _dict(_compile(key)[0], _compile(value)[0]), hint, None
    raise TypeError(f"configuration fields cannot be of type {hint!r}")


class _Field:
    __slots__ = ("after", "before", "check", "info", "key", "name")

    def __init__(self, name: str, info: FieldInfo, check: Check) -> None:
        self.name = name
        self.key = info.alias or name  # what the YAML says, and what errors name
        self.info = info
        self.check = check
        self.before: list[tuple[Callable[..., Any], bool]] = []
        self.after: list[tuple[Callable[..., Any], bool]] = []


class Section:
    """A frozen configuration section: unknown keys are errors, fields are type-checked."""

    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    _fields: ClassVar[list[_Field]] = []
    _keys: ClassVar[dict[str, _Field]] = {}
    _before: ClassVar[list[tuple[Callable[..., Any], bool]]] = []
    _after: ClassVar[list[tuple[Callable[..., Any], bool]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        decorated = {}
        for name, value in list(vars(cls).items()):
            if isinstance(value, _Decorated):
                decorated[name] = value
                setattr(cls, name, value.method)  # callable as written, once set up
        hints = get_type_hints(cls, include_extras=True)
        fields: list[_Field] = []
        for name, hint in hints.items():
            if name.startswith("_") or get_origin(hint) is ClassVar:
                if isinstance(vars(cls).get(name), _Private):
                    delattr(cls, name)  # unset until a validator sets it
                continue
            check, bare, spec = _compile(hint)
            default = getattr(cls, name, _MISSING)
            info = default if isinstance(default, FieldInfo) else FieldInfo(default)
            bounds = ("ge", "le", "gt", "lt", "min_length", "max_length")
            if any(getattr(info, b) is not None for b in bounds) or not info.allow_inf_nan:
                check = _bounded(check, info)  # `x: int = Field(5, ge=1)`
            if spec is not None:  # what Annotated bounds, for whoever reads model_fields
                for slot in bounds:
                    if getattr(info, slot) is None:
                        setattr(info, slot, getattr(spec, slot))
            info.annotation = bare
            fields.append(_Field(name, info, check))
        by_name = {f.name: f for f in fields}
        cls._before, cls._after = [], []
        for name, mark in decorated.items():
            func = getattr(cls, name)
            if mark.kind == "model":
                takes = _takes_info(func, 1)
                (cls._before if mark.mode == "before" else cls._after).append((func, takes))
                continue
            for field_name in mark.fields:
                if field_name not in by_name:
                    raise TypeError(f"{cls.__name__}.{name} validates unknown field {field_name}")
                target = by_name[field_name]
                (target.before if mark.mode == "before" else target.after).append(
                    (func, _takes_info(func, 1))
                )
        cls._fields = fields
        cls._keys = {f.key: f for f in fields} | {f.name: f for f in fields}
        cls.model_fields = {f.name: f.info for f in fields}

    def __init__(self, **data: Any) -> None:
        made = type(self).model_validate(data)
        object.__setattr__(self, "__dict__", made.__dict__)

    @classmethod
    def model_validate(cls: type[S], data: Any, *, context: dict[str, Any] | None = None) -> S:
        errors: list[ErrorDetails] = []
        made = cls._check(data, (), errors, ValidationInfo(context))
        if errors:
            raise ValidationError(cls.__name__, errors)
        return made  # type: ignore[no-any-return]

    @classmethod
    def _check(cls, data: Any, loc: Loc, errors: list[ErrorDetails], info: ValidationInfo) -> Any:
        if isinstance(data, cls):
            return data
        for func, takes in cls._before:
            try:
                data = func(data, info) if takes else func(data)
            except (ValueError, AssertionError) as exc:
                return _raised(errors, exc, loc, data)
        if not isinstance(data, dict):
            msg = "Input should be a valid dictionary or instance"
            return _error(errors, "model_type", loc, data, msg)
        before = len(errors)
        values: dict[str, Any] = {}
        given: set[str] = set()
        for f in cls._fields:
            at = (*loc, f.key)
            if f.key in data:
                raw = data[f.key]
            elif f.name in data:
                raw = data[f.name]
            elif f.info.required:
                _error(errors, "missing", at, data, "Field required")
                continue
            else:
                values[f.name] = f.info.make_default()
                continue
            given.add(f.name)
            values[f.name] = (
                f.check(raw, at, errors, info)
                if not f.before
                else _run_field(f, raw, at, errors, info)
            )
            if f.after and values[f.name] is not _BAD:
                values[f.name] = _after_field(f, values[f.name], at, errors, info)
        for key, value in data.items():
            if key not in cls._keys:
                _error(
                    errors, "extra_forbidden", (*loc, key), value, "Extra inputs are not permitted"
                )
        if len(errors) > before:
            return _BAD
        made = cls.__new__(cls)
        values["_Section__given"] = frozenset(given)
        object.__setattr__(made, "__dict__", values)
        for func, takes in cls._after:
            try:
                made = func(made, info) if takes else func(made)
            except (ValueError, AssertionError) as exc:
                return _raised(errors, exc, loc, data)
        return made

    @property
    def model_fields_set(self) -> frozenset[str]:
        """The fields the input gave, as opposed to those left at their defaults."""
        given: frozenset[str] = self.__dict__.get("_Section__given", frozenset())
        return given

    def model_copy(self: S, *, update: dict[str, Any] | None = None) -> S:
        """A shallow copy with some fields replaced; the replacements are not validated."""
        made = type(self).__new__(type(self))
        values = {**self.__dict__, **(update or {})}
        values["_Section__given"] = self.model_fields_set | set(update or ())
        object.__setattr__(made, "__dict__", values)
        return made

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        raise ValueError(f"{type(self).__name__} is frozen: {name} cannot be changed")

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__.get(f.name) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Section)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={self.__dict__.get(f.name)!r}" for f in self._fields)
        return f"{type(self).__name__}({shown})"


S = TypeVar("S", bound=Section)


def _run_field(
    f: _Field, raw: Any, at: Loc, errors: list[ErrorDetails], info: ValidationInfo
) -> Any:
    for func, takes in f.before:
        try:
            raw = func(raw, info) if takes else func(raw)
        except (ValueError, AssertionError) as exc:
            return _raised(errors, exc, at, raw)
    return f.check(raw, at, errors, info)


def _after_field(
    f: _Field, value: Any, at: Loc, errors: list[ErrorDetails], info: ValidationInfo
) -> Any:
    for func, takes in f.after:
        try:
            value = func(value, info) if takes else func(value)
        except (ValueError, AssertionError) as exc:
            return _raised(errors, exc, at, value)
    return value
