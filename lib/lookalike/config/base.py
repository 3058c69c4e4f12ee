"""What every config section is built from: a frozen, strict pydantic model whose fields carry
the sentence docs/configuration.md shows for them."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lookalike.config.messages import config_error


def setting(default: Any, description: str, allowed: str | None = None, **constraints: Any) -> Any:
    """A config field: its sentence for the docs and, for a range, what the error says is allowed."""
    extra: dict[str, Any] | None = {"allowed": allowed} if allowed else None
    return Field(default, description=description, json_schema_extra=extra, **constraints)


POSITIVE = "a positive integer"
AUTO_OR_POSITIVE = "0 (auto) or a positive integer"


class Settings(BaseModel):
    """A section: unknown keys refused; strict, so that a string or a bool is never taken for a
    number (ints are still accepted, as floats, where floats are expected)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # The dotted prefix of this section's keys in error messages ("" for the whole config).
    prefix: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        # Code builds sections too (tests, tools); they get the same one-line ConfigError.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None
