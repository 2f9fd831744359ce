"""The base of the request models (each service's shapes.py): a request's JSON object
parsed into a pydantic model once, at the edge, with the field names, types and limits of
botocore's service-2.json input shapes, so that the operations read typed fields.

A field of the wrong type or out of its limits is the service's ValidationException, its
message naming the field (`MaxResults must be an integer between 1 and 100`: the field's
description says what it must be). A check that AWS answers with another code (an unknown
log group, a filterPattern fleet does not match) raises that error class from the model's
validator: pydantic passes any exception that is not a ValueError through unchanged.
Fields a model does not name are ignored, as AWS ignores them; a JSON null is an absent
field (botocore never sends one)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.serve.errors import ServiceError, ValidationException


def _not_nan(value: float) -> float:
    if math.isnan(value):
        raise ValueError("not a number")
    return value


# botocore's `timestamp` of the JSON protocols: epoch seconds, an integer or a fraction
EpochSeconds = Annotated[float, Field(strict=True), AfterValidator(_not_nan)]


class Shape(BaseModel):
    """An operation's input shape."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    invalid: ClassVar[type[ServiceError]] = ValidationException

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @classmethod
    def parse(cls, document: dict[str, Any]) -> Self:
        """The request's fields, or `invalid` naming the first bad one."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise cls.invalid(cls._message(exc)) from None

    @classmethod
    def _message(cls, exc: ValidationError) -> str:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else cls.__name__
        field = next((f for key, f in cls.model_fields.items() if name in (key, f.alias)), None)
        if error["type"] == "value_error":
            return f"{name}: {error['ctx']['error']}"
        if field is not None and field.description:
            return f"{name} {field.description}"
        return f"{name}: {error['msg']}"
