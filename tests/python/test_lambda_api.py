"""boto3 against thaw's Lambda API: the management calls, ARNs and qualifiers, Invoke
with LogType=Tail, and a Python function's error with its stack trace."""

from __future__ import annotations

import base64
import json

import boto3
import botocore.config
import botocore.exceptions
import pytest

ARN = "arn:aws:lambda:local:000000000000:function:{}"


@pytest.fixture(scope="module")
def aws(thaw_url):
    return boto3.client(
        "lambda",
        endpoint_url=thaw_url,
        region_name="us-east-1",
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
        config=botocore.config.Config(retries={"max_attempts": 1}, read_timeout=120),
    )


def test_list_functions_pages_through_the_plan(aws) -> None:
    names = {f["FunctionName"]: f for f in aws.list_functions()["Functions"]}
    assert {"embed", "rerank", "words-py"} <= set(names)
    assert names["embed"]["FunctionArn"] == ARN.format("embed")
    assert names["embed"]["MemorySize"] == 1024
    first = aws.list_functions(MaxItems=1)
    assert len(first["Functions"]) == 1 and first["NextMarker"]
    rest = aws.list_functions(Marker=first["NextMarker"])["Functions"]
    assert first["Functions"][0]["FunctionName"] not in {f["FunctionName"] for f in rest}


@pytest.mark.parametrize(
    "name",
    ["words-py", "words-py:$LATEST", "123456789012:function:words-py",
     "arn:aws:lambda:us-east-1:123456789012:function:words-py"],
)
def test_get_function_by_name_partial_arn_or_arn(aws, name) -> None:
    got = aws.get_function(FunctionName=name)
    assert got["Configuration"]["FunctionArn"] == ARN.format("words-py")
    assert "awslambdaric" in got["Configuration"]["Handler"]
    conf = aws.get_function_configuration(FunctionName=name)
    assert conf["FunctionName"] == "words-py" and conf["Timeout"] == 30


def test_unknown_functions_and_versions_are_resource_not_found(aws) -> None:
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.get_function(FunctionName="no-such-function")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.get_function(FunctionName="words-py", Qualifier="prod")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.invoke(FunctionName="words-py:7", Payload=b"{}")


def test_invoke_with_log_tail(aws) -> None:
    reply = aws.invoke(
        FunctionName=ARN.format("words-py"), Payload=json.dumps({"text": "a b c"}), LogType="Tail"
    )
    assert reply["StatusCode"] == 200 and "FunctionError" not in reply
    assert json.loads(reply["Payload"].read())["words"] == 3
    log = base64.b64decode(reply["LogResult"]).decode()
    assert "counting the words of 5 characters" in log


def test_a_functions_error_keeps_its_type_and_stack_trace(aws) -> None:
    reply = aws.invoke(FunctionName="words-py", Payload=json.dumps({"nope": 1}), LogType="Tail")
    assert reply["FunctionError"] == "Unhandled"
    error = json.loads(reply["Payload"].read())
    assert error["errorType"] == "ValueError"
    assert "expected" in error["errorMessage"]
    assert any("handler.py" in frame and "_check" in frame for frame in error["stackTrace"])
    assert "LogResult" in reply


def test_aws_shaped_errors_on_the_whole_surface(aws) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        aws.invoke(FunctionName="words-py", Payload=b"x" * (7 << 20))
    assert caught.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        aws.delete_function(FunctionName="words-py")
    assert caught.value.response["Error"]["Code"] == "UnknownOperationException"
