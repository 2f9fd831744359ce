"""serve's services as botocore models them: each request shape's fields are the operation's
input members, with botocore's limits; each error class is one AWS error code of its
service; one paginator pages List and DescribeLogStreams; a bad field is the service's
error naming the field."""

from __future__ import annotations

import base64
import inspect
import json
from typing import Literal, get_args, get_origin

import pytest
from botocore.loaders import Loader

from fleet.serve import errors as serve_errors
from fleet.serve.errors import ServiceError, ValidationException
from fleet.serve.logs import exceptions as logs_errors, shapes as logs_shapes
from fleet.serve.logs.exceptions import InvalidParameterException, ResourceNotFoundException
from fleet.serve.paginator import paginate
from fleet.serve.sagemaker import exceptions as sagemaker_errors, shapes as sagemaker_shapes
from fleet.serve.shapes import Shape
from fleet.serve.sts import exceptions as sts_errors

LOG_GROUP = logs_shapes.LOG_GROUP
MODELS = {"sagemaker": Loader().load_service_model("sagemaker", "service-2"),
          "logs": Loader().load_service_model("logs", "service-2")}
SHAPES = [("sagemaker", "DescribeProcessingJob", sagemaker_shapes.JobNamed),
          ("sagemaker", "StopProcessingJob", sagemaker_shapes.JobNamed),
          ("sagemaker", "ListProcessingJobs", sagemaker_shapes.ListProcessingJobs),
          ("logs", "DescribeLogStreams", logs_shapes.DescribeLogStreams),
          ("logs", "GetLogEvents", logs_shapes.GetLogEvents),
          ("logs", "FilterLogEvents", logs_shapes.FilterLogEvents)]


def _bounds(shape: type[Shape], name: str) -> tuple[object, object]:
    low = high = None
    for meta in shape.model_fields[name].metadata:
        low = getattr(meta, "ge", low)
        high = getattr(meta, "le", high)
    return low, high


@pytest.mark.parametrize(("service", "operation", "shape"), SHAPES, ids=[s[1] for s in SHAPES])
def test_each_request_shape_reads_the_operations_input_members_with_botocores_limits(service, operation, shape):
    model = MODELS[service]
    members = model["shapes"][model["operations"][operation]["input"]["shape"]]["members"]
    for name in shape.model_fields:
        assert name in members, (operation, name)
        target = model["shapes"][members[name]["shape"]]
        if target["type"] in ("integer", "long") and _bounds(shape, name) != (None, None):
            assert _bounds(shape, name) == (target.get("min"), target.get("max")), (operation, name)
        annotation = inspect.get_annotations(shape, eval_str=True).get(name)
        if get_origin(annotation) is Literal and target["type"] == "string":
            assert set(get_args(annotation)) <= set(target["enum"]), (operation, name)


def _codes(module) -> dict[str, type[ServiceError]]:
    return {cls.code: cls for cls in vars(module).values()
            if isinstance(cls, type) and issubclass(cls, ServiceError) and cls.__module__ == module.__name__}


@pytest.mark.parametrize(("service", "module"), [("sagemaker", sagemaker_errors), ("logs", logs_errors)])
def test_each_error_class_is_one_error_code_of_its_services_model(service, module):
    codes = _codes(module)
    assert codes  # one class per code: a second class of a code would have replaced the first
    assert len(codes) == len([c for c in vars(module).values() if isinstance(c, type) and issubclass(c, ServiceError)
                              and c.__module__ == module.__name__])
    for code in codes:
        assert MODELS[service]["shapes"][code].get("exception"), code


def test_no_two_error_classes_share_a_code():
    classes = [c for m in (serve_errors, sagemaker_errors, logs_errors, sts_errors) for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, ServiceError) and c.__module__ == m.__name__
               and "code" in vars(c)]
    assert len({c.code for c in classes}) == len(classes), sorted(c.code for c in classes)


def test_one_paginator_pages_a_list_to_its_end_and_refuses_a_token_it_did_not_give():
    items = list(range(7))
    pages, token = [], None
    while True:
        page = paginate(items, token, 3)
        pages.append(page.items)
        token = page.next_token
        if token is None:
            break
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]
    for forged in ("garbage", base64.urlsafe_b64encode(json.dumps({"at": -1}).encode()).decode(),
                   base64.urlsafe_b64encode(json.dumps({"at": True}).encode()).decode()):
        with pytest.raises(ValidationException):
            paginate(items, forged, 3)


@pytest.mark.parametrize(("shape", "document", "error", "field"), [
    (sagemaker_shapes.ListProcessingJobs, {"MaxResults": 101}, ValidationException, "MaxResults"),
    (sagemaker_shapes.ListProcessingJobs, {"MaxResults": True}, ValidationException, "MaxResults"),
    (sagemaker_shapes.ListProcessingJobs, {"CreationTimeAfter": float("nan")}, ValidationException,
     "CreationTimeAfter"),
    (sagemaker_shapes.ListProcessingJobs, {"SortBy": "Size"}, ValidationException, "SortBy"),
    (sagemaker_shapes.JobNamed, {"ProcessingJobName": "a_b"}, ValidationException, "ProcessingJobName"),
    (sagemaker_shapes.JobNamed, {}, ValidationException, "ProcessingJobName"),
    (logs_shapes.GetLogEvents, {"logGroupName": LOG_GROUP, "endTime": -1}, ValidationException, "endTime"),
    (logs_shapes.GetLogEvents, {"logGroupName": LOG_GROUP, "nextToken": "x/1"}, ValidationException, "nextToken"),
    (logs_shapes.DescribeLogStreams, {"logGroupName": LOG_GROUP, "limit": 51}, ValidationException, "limit"),
    (logs_shapes.FilterLogEvents, {"logGroupName": LOG_GROUP, "logStreamNames": []}, InvalidParameterException,
     "logStreamNames"),
    (logs_shapes.FilterLogEvents, {"logGroupName": LOG_GROUP, "filterPattern": "%x%"}, InvalidParameterException,
     "filterPattern"),
    (logs_shapes.FilterLogEvents, {"logGroupName": LOG_GROUP, "nextToken": "x"}, InvalidParameterException,
     "nextToken"),
    (logs_shapes.FilterLogEvents, {"logGroupName": "/other", "limit": "x"}, ResourceNotFoundException, "log group"),
])
def test_a_bad_field_is_its_services_error_naming_the_field(shape, document, error, field):
    with pytest.raises(ServiceError) as raised:
        shape.parse(document)
    assert type(raised.value) is error and field in raised.value.message, raised.value.message


def test_a_json_null_is_an_absent_field_and_unknown_fields_are_ignored():
    asked = sagemaker_shapes.ListProcessingJobs.parse({"MaxResults": None, "SortBy": None, "Unknown": 1})
    assert (asked.MaxResults, asked.SortBy, asked.SortOrder) == (10, "CreationTime", "Descending")
