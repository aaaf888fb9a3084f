"""The configuration's section model: coercions, bounds, every error collected, frozen copies."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated, Any, Literal

import pytest

from exporter.config.model import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    Section,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from exporter.config.schema import ConfigValueError, parse_config


class Inner(Section):
    level: Literal["low", "high"] = "low"


class Sample(Section):
    name: str
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    ratio: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    on: bool = False
    tags: dict[str, str] = {}
    items: Annotated[list[int], Field(min_length=1)] = [1]
    inner: Inner = Field(default_factory=Inner)
    maybe: Inner | None = None
    secret: SecretStr | None = None
    start: str = Field("00:00", alias="from")
    doubled: Annotated[int, BeforeValidator(lambda v: v * 2 if isinstance(v, int) else v)] = 0
    _private: str = PrivateAttr()

    @field_validator("name")
    @classmethod
    def _strip(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be blank")
        return name.strip()

    @model_validator(mode="after")
    def _remember(self, info: ValidationInfo) -> Sample:
        self._private = str((info.context or {}).get("where", ""))
        return self


def errors_of(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        Sample.model_validate(data)
    return [(e["loc"], e["type"]) for e in caught.value.errors()]


def test_inputs_are_coerced_as_yaml_users_write_them() -> None:
    made = Sample.model_validate(
        {"name": " a ", "port": "8080", "ratio": 2, "on": "yes", "items": [3.0], "from": "07:00"},
        context={"where": "here"},
    )

    assert (made.name, made.port, made.ratio, made.on, made.items) == ("a", 8080, 2.0, True, [3])
    assert made.start == "07:00" and made._private == "here"
    assert made.inner == Inner() and made.maybe is None
    assert made.model_fields_set == {"name", "port", "ratio", "on", "items", "start"}


def test_every_wrong_field_is_reported_at_once_with_its_key_path() -> None:
    found = errors_of(
        {
            "port": 0,
            "ratio": "nan",
            "on": "maybe",
            "tags": {"a": 5},
            "items": [],
            "inner": {"level": "mid", "extra": 1},
            "typo": 1,
        }
    )

    assert found == [
        (("name",), "missing"),
        (("port",), "greater_than_equal"),
        (("ratio",), "finite_number"),
        (("on",), "bool_parsing"),
        (("tags", "a"), "string_type"),
        (("items",), "too_short"),
        (("inner", "level"), "literal_error"),
        (("inner", "extra"), "extra_forbidden"),
        (("typo",), "extra_forbidden"),
    ]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"name": 5}, "string_type"),  # a number is not silently a name
        ({"name": "a", "port": True}, "int_type"),  # nor is a boolean a port
        ({"name": "a", "port": 80.5}, "int_from_float"),
        ({"name": "a", "port": "eighty"}, "int_parsing"),
        ({"name": "a", "ratio": False}, "float_type"),
        ({"name": "a", "on": 2}, "bool_type"),
        ({"name": "a", "items": "1,2"}, "list_type"),
        ({"name": "a", "inner": "high"}, "model_type"),
        ({"name": "a", "maybe": [1]}, "model_type"),
        ({"name": " "}, "value_error"),
    ],
)
def test_wrong_kinds_are_refused(data: dict[str, Any], kind: str) -> None:
    assert [k for _, k in errors_of(data)] == [kind]


def test_the_before_validator_sees_the_raw_input() -> None:
    assert Sample.model_validate({"name": "a", "doubled": 4}).doubled == 8


def test_secrets_never_show_in_reprs_or_errors() -> None:
    made = Sample.model_validate({"name": "a", "secret": "hunter2"})

    assert made.secret is not None and made.secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(made) and "hunter2" not in str(made.secret)
    with pytest.raises(ValidationError) as caught:
        Sample.model_validate({"name": "a", "secret": "hunter2", "port": "x"})
    assert "hunter2" not in str(caught.value)


def test_sections_are_frozen_and_copied_with_changes() -> None:
    made = Sample(name="a")
    copied = made.model_copy(update={"port": 81})

    with pytest.raises(ValueError, match="frozen"):
        made.port = 81  # type: ignore[misc]
    assert (made.port, copied.port, copied.name) == (80, 81, "a")
    assert copied != made and copied == Sample(name="a", port=81)
    assert "port" in copied.model_fields_set


def test_mutable_defaults_are_not_shared() -> None:
    one, two = Sample(name="a"), Sample(name="b")

    one.items.append(2)

    assert two.items == [1]


def test_messages_from_the_loader_stay_one_line_and_name_the_key() -> None:
    with pytest.raises(ConfigValueError) as caught:
        parse_config("tariffs: {table: {t: {currency: EUR, periods: []}}}", environ={})

    assert str(caught.value) == (
        "tariffs.table.t.periods: must have at least 1 entry, got 0 (line 1)"
    )


def test_the_exporter_starts_without_a_general_validation_library() -> None:
    probe = (
        "import sys, exporter.cli, exporter.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"
