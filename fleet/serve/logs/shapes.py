"""CloudWatch Logs' input shapes as serve reads them (botocore's logs 2014-03-28
service-2.json: names, types, limits). Every operation reads the one log group serve has,
checked before any other field (an unknown group is ResourceNotFoundException whatever else
the request holds)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from fleet.serve.logs import events
from fleet.serve.logs.exceptions import InvalidParameterException, ResourceNotFoundException
from fleet.serve.shapes import Shape

LOG_GROUP = "/aws/sagemaker/ProcessingJobs"
# CloudWatch's Timestamp of the Logs API: a whole number of milliseconds since the epoch
Millis = Annotated[StrictInt, Field(ge=0)]
_MILLIS = "must be a whole number of milliseconds since the epoch"
EventsLimit = Annotated[StrictInt, Field(ge=1, le=events.PAGE_EVENTS)]
_EVENTS_LIMIT = f"must be an integer between 1 and {events.PAGE_EVENTS}"


class InLogGroup(Shape):
    logGroupName: Any = None

    @model_validator(mode="before")
    @classmethod
    def _group(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("logGroupName") != LOG_GROUP:
            raise ResourceNotFoundException("The specified log group does not exist.")
        return cls._checked(data)

    @classmethod
    def _checked(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The request once in the group: checks of the operation's own before its fields'."""
        return data


class DescribeLogStreams(InLogGroup):
    logStreamNamePrefix: Any = None  # anything but a name (a non-string, "") lists no stream
    descending: Any = False  # truthy or not, as today's clients send it
    nextToken: StrictStr | None = Field(None, min_length=1, description="must be a string")
    limit: Annotated[StrictInt, Field(ge=1, le=50)] = Field(50, description="must be an integer between 1 and 50")


class GetLogEvents(InLogGroup):
    logStreamName: StrictStr | None = Field(None, description="must be a string")
    startTime: Millis | None = Field(None, description=_MILLIS)
    endTime: Millis | None = Field(None, description=_MILLIS)
    # a position fleet gave: f/OFFSET or b/OFFSET
    nextToken: StrictStr | None = Field(None, pattern=r"^[fb]/\d{1,18}$", description="is invalid")
    startFromHead: StrictBool = Field(False, description="must be true or false")
    limit: EventsLimit = Field(events.PAGE_EVENTS, description=_EVENTS_LIMIT)


class FilterLogEvents(InLogGroup):
    logStreamNames: list[str] | None = None
    logStreamNamePrefix: StrictStr | None = Field(None, description="must be a string")
    startTime: Millis | None = Field(None, description=_MILLIS)
    endTime: Millis | None = Field(None, description=_MILLIS)
    filterPattern: StrictStr = Field("", description="must be a string")
    nextToken: StrictStr | None = Field(None, description="must be a string")
    startFromHead: Literal[True] = True
    limit: EventsLimit = Field(events.PAGE_EVENTS, description=_EVENTS_LIMIT)

    @classmethod
    def _checked(cls, data: dict[str, Any]) -> dict[str, Any]:
        names = data.get("logStreamNames")
        if names is not None and data.get("logStreamNamePrefix") is not None:
            raise InvalidParameterException("logStreamNames and logStreamNamePrefix cannot both be specified.")
        if names is not None and (not isinstance(names, list) or not 1 <= len(names) <= 100
                                  or not all(isinstance(n, str) for n in names)):
            raise InvalidParameterException("logStreamNames must be a list of 1 to 100 stream names")
        if data.get("startFromHead", True) is not True:
            raise InvalidParameterException("fleet serve answers FilterLogEvents oldest first only "
                                            "(startFromHead true)")
        return data

    @field_validator("filterPattern")
    @classmethod
    def _pattern(cls, text: str) -> str:
        try:
            events.parse_pattern(text)
        except ValueError as exc:
            raise InvalidParameterException(str(exc)) from None
        return text

    @field_validator("nextToken")
    @classmethod
    def _token(cls, token: str | None) -> str | None:
        try:
            if token is not None:
                events.parse_token(token)
        except ValueError as exc:
            raise InvalidParameterException(str(exc)) from None
        return token

    def pattern(self) -> events.Pattern | None:
        return events.parse_pattern(self.filterPattern)

    def after(self) -> tuple[int, str, int] | None:
        return events.parse_token(self.nextToken) if self.nextToken is not None else None
