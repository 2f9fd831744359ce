"""STS GetCallerIdentity in `fleet serve` (issue 21, point 2): the Query protocol's XML answer
and errors as botocore's own parser reads them, and a real `fleet serve` (a subprocess on a
free loopback port, a `transport: local` inventory: no host is touched) answering boto3 and
the AWS CLI at AWS_ENDPOINT_URL_STS, beside the JSON operations it answered before; and the
`export` lines serve prints at start (point 1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.parsers import QueryParser

from fleet.contract.configfiles import DEFAULT_ACCOUNT
from fleet.serve.auth import CONTROLLER, Principal
from fleet.serve.sts.exceptions import QueryError
from fleet.serve.sts.responses import NAMESPACE, action, caller_identity, error_xml, identity_xml, parse_form

from support.serving import free_port, serve_argv, served_fixture, stop

ROOT = Path(__file__).resolve().parents[2]
AWS_CLI = Path(sys.executable).with_name("aws")
OPERATOR_KEY, OPERATOR_SECRET = "AKIDFLEETOPERATOR001", "fleet-operator-test-secret"
ALICE_KEY, ALICE_SECRET = "AKIDFLEETALICE000001", "fleet-alice-test-secret"


def _parse(body: bytes, status: int = 200) -> dict:
    """What botocore makes of an STS answer (its sts model, its Query protocol parser)."""
    operation = botocore.session.get_session().get_service_model("sts").operation_model("GetCallerIdentity")
    return QueryParser().parse({"body": body, "headers": {}, "status_code": status}, operation.output_shape)


def test_the_answer_is_stss_xml_and_botocore_reads_account_arn_and_user_id():
    identity = caller_identity(Principal("alice"), "123456789012")
    body = identity_xml(identity, "req-1")
    parsed = _parse(body)
    assert {k: parsed[k] for k in ("UserId", "Account", "Arn")} == identity
    assert parsed["ResponseMetadata"]["RequestId"] == "req-1"
    assert identity["Arn"] == "arn:aws:iam::123456789012:user/alice"
    assert identity["UserId"].startswith("AIDA") and len(identity["UserId"]) == 21
    # The document AWS's API reference shows: the result wrapper, then ResponseMetadata.
    root = ET.fromstring(body)
    ns = {"s": NAMESPACE}
    assert root.tag == f"{{{NAMESPACE}}}GetCallerIdentityResponse"
    assert [child.tag.split("}")[1] for child in root] == ["GetCallerIdentityResult", "ResponseMetadata"]
    assert root.findtext("s:GetCallerIdentityResult/s:Account", namespaces=ns) == "123456789012"


def test_each_profile_has_its_own_stable_user_id_and_the_operator_is_fleet_controller():
    assert caller_identity(Principal("alice"), DEFAULT_ACCOUNT) == caller_identity(Principal("alice"), DEFAULT_ACCOUNT)
    assert caller_identity(Principal("alice"), DEFAULT_ACCOUNT)["UserId"] != caller_identity(
        Principal("bob"), DEFAULT_ACCOUNT)["UserId"]
    operator = caller_identity(CONTROLLER, DEFAULT_ACCOUNT)
    assert operator["Arn"] == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/fleet-controller"


def test_an_error_is_the_query_protocols_error_response_and_botocore_raises_its_code():
    body = error_xml("InvalidClientTokenId", "The security token included in the request is invalid.", 403, "req-2")
    parsed = _parse(body, 403)
    assert parsed["Error"] == {"Type": "Sender", "Code": "InvalidClientTokenId",
                               "Message": "The security token included in the request is invalid."}
    assert parsed["ResponseMetadata"]["RequestId"] == "req-2"
    root = ET.fromstring(body)
    assert root.tag == f"{{{NAMESPACE}}}ErrorResponse"
    assert _parse(error_xml("InternalFailure", "x", 500, "r"), 500)["Error"]["Type"] == "Receiver"


def test_markup_and_control_characters_in_a_message_stay_text_in_well_formed_xml():
    message = "Date must be in ISO-8601 'basic format'. Got '<x>&\x01\x1b[2J</Message>'"
    parsed = _parse(error_xml("IncompleteSignature", message, 403, "r"), 403)
    assert parsed["Error"]["Message"] == message.replace("\x01", "\ufffd").replace("\x1b", "\ufffd")
    identity = caller_identity(Principal("ev<il>&\x07"), DEFAULT_ACCOUNT)
    assert _parse(identity_xml(identity, "r"))["Arn"] == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/ev<il>&\ufffd"


@pytest.mark.parametrize(("form", "code"), [
    ({"Version": "2011-06-15"}, "MissingAction"),
    ({"Action": "AssumeRole", "Version": "2011-06-15"}, "InvalidAction"),
    ({"Action": "GetCallerIdentity", "Version": "2010-01-01"}, "InvalidAction"),
    ({"Action": "GetCallerIdentity"}, "InvalidAction"),
])
def test_an_action_other_than_get_caller_identity_2011_06_15_is_refused(form, code):
    with pytest.raises(QueryError) as raised:
        action(form)
    assert raised.value.code == code and raised.value.status == 400
    if code == "InvalidAction":
        assert raised.value.message.startswith(f"Could not find operation {form['Action']} for version ")


@pytest.mark.parametrize("body", [b"Action=GetCallerIdentity&Action=AssumeRole&Version=2011-06-15",
                                  b"Action=\xff\xfe", b"&".join([b"a=1"] * 100), b"Action"])
def test_a_body_that_is_not_one_form_is_malformed(body):
    with pytest.raises(QueryError) as raised:
        parse_form(body)
    assert raised.value.code == "MalformedQueryString"


# --- a real fleet serve ---

class Served:
    """`fleet serve` with the operator's key in its AWS chain and alice's in --credentials;
    its standard output (the export lines) and standard error kept apart."""

    def __init__(self, tmp: Path, *extra: str, home: Path | None = None) -> None:
        self.tmp = tmp
        self.home = home or tmp / "home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "hosts.yaml").write_text(json.dumps({"hosts": [{"address": "localhost", "name": "h1",
                                                               "transport": "local"}]}))
        (tmp / "credentials").write_text(f"[alice]\naws_access_key_id = {ALICE_KEY}\n"
                                         f"aws_secret_access_key = {ALICE_SECRET}\n")
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "FLEET_"))}
        self.env.update(FLEET_HOME=str(self.home), PYTHONPATH=str(ROOT), AWS_CONFIG_FILE="/dev/null",
                        AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true",
                        AWS_REGION="eu-west-3", AWS_ACCESS_KEY_ID=OPERATOR_KEY,
                        AWS_SECRET_ACCESS_KEY=OPERATOR_SECRET)
        self.out, self.err = tmp / "serve.out", tmp / "serve.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                serve_argv(tmp / "hosts.yaml", self.port, "--credentials", str(tmp / "credentials"), *extra),
                env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp)
        deadline = time.monotonic() + 30
        while self.out.read_text().count("\n") < 4:  # the exports come once it listens
            assert self.process.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, f"fleet serve printed no exports:\n{self.err.read_text()}"
            time.sleep(0.1)

    def close(self) -> None:
        stop(self.process)

    def client(self, service: str, key: str, secret: str):
        return boto3.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name="eu-west-3").client(
            service, endpoint_url=self.url, config=Config(retries={"max_attempts": 1}))


served = served_fixture(Served)


def test_boto3_get_caller_identity_names_the_signing_profile_and_the_account_of_the_job_arns(served):
    alice = served.client("sts", ALICE_KEY, ALICE_SECRET).get_caller_identity()
    assert alice["Account"] == DEFAULT_ACCOUNT
    assert alice["Arn"] == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/alice"
    operator = served.client("sts", OPERATOR_KEY, OPERATOR_SECRET).get_caller_identity()
    assert operator["Arn"] == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/fleet-controller"
    assert operator["UserId"] != alice["UserId"]
    # the same account as the ARN of a job that profile creates (on the JSON protocol, same server)
    sagemaker = served.client("sagemaker", ALICE_KEY, ALICE_SECRET)
    arn = sagemaker.create_processing_job(
        ProcessingJobName="zq-sts", RoleArn="arn:aws:iam::000000000000:role/x",
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
                                               "VolumeSizeInGB": 1}},
        AppSpecification={"ImageUri": "zq-no-such-image:1"})["ProcessingJobArn"]
    assert arn.split(":")[4] == alice["Account"], arn
    assert sagemaker.describe_processing_job(ProcessingJobName="zq-sts")["ProcessingJobArn"] == arn
    sagemaker.stop_processing_job(ProcessingJobName="zq-sts")


def test_a_bad_key_or_signature_is_refused_with_stss_codes(served):
    with pytest.raises(ClientError) as unknown:
        served.client("sts", "AKIDNOSUCHKEY0000001", ALICE_SECRET).get_caller_identity()
    assert unknown.value.response["Error"]["Code"] == "InvalidClientTokenId"
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as wrong:
        served.client("sts", ALICE_KEY, "not-alices-secret").get_caller_identity()
    assert wrong.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    # a request signed for sagemaker is not an STS request
    sts = served.client("sts", ALICE_KEY, ALICE_SECRET)
    sts.meta.events.register("choose-signer.sts.GetCallerIdentity", lambda **_: "v4")
    sts.meta.events.register("before-sign.sts.GetCallerIdentity",
                             lambda request, **_: request.context.setdefault("signing", {}).update(
                                 signing_name="sagemaker"))
    with pytest.raises(ClientError) as scoped:
        sts.get_caller_identity()
    assert scoped.value.response["Error"]["Code"] == "SignatureDoesNotMatch", scoped.value.response
    assert "Traceback" not in served.err.read_text()


@pytest.mark.skipif(not AWS_CLI.exists(), reason="the AWS CLI (test extras) is not installed")
def test_the_aws_cli_gets_the_caller_identity_at_aws_endpoint_url_sts(served, tmp_path):
    credentials = tmp_path / "cli-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {ALICE_KEY}\naws_secret_access_key = {ALICE_SECRET}\n")
    env = {key: value for key, value in served.env.items() if not key.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL_STS=served.url, AWS_SHARED_CREDENTIALS_FILE=str(credentials),
               AWS_CONFIG_FILE="/dev/null", AWS_DEFAULT_REGION="eu-west-3", AWS_EC2_METADATA_DISABLED="true")
    result = subprocess.run([str(AWS_CLI), "sts", "get-caller-identity", "--output", "json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Arn"] == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/alice"


def test_serve_prints_the_exports_and_writes_the_sdk_config_file(served):
    lines = served.out.read_text().splitlines()
    config = served.home.absolute() / "sagemaker-sdk-config.yaml"
    assert lines == [f"export AWS_ENDPOINT_URL_SAGEMAKER={served.url}",
                     f"export AWS_ENDPOINT_URL_CLOUDWATCH_LOGS={served.url}",
                     f"export AWS_ENDPOINT_URL_STS={served.url}",
                     f"export SAGEMAKER_USER_CONFIG_OVERRIDE={config}"]
    assert config.stat().st_mode & 0o777 == 0o600
    # the SDK's own loader finds the bucket as sagemaker.Session() would name it (serve's region)
    from sagemaker.config.config import load_sagemaker_config
    loaded = load_sagemaker_config([str(config)])
    assert loaded["SageMaker"]["PythonSDK"]["Modules"]["Session"]["DefaultS3Bucket"] == \
        f"sagemaker-eu-west-3-{DEFAULT_ACCOUNT}"
    err = served.err.read_text()
    assert "SAGEMAKER_ADMIN_CONFIG_OVERRIDE" in err and "~/.config/sagemaker/config.yaml" in err, err


def test_the_export_lines_are_shell_quoted_and_the_flag_names_the_bucket(tmp_path):
    home = tmp_path / "my home; $(touch pwned)"
    server = Served(tmp_path, "--default-bucket", "team-bucket", home=home)
    try:
        script = server.out.read_text() + 'printf "%s" "$SAGEMAKER_USER_CONFIG_OVERRIDE"\n'
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert result.stdout == str(home / "sagemaker-sdk-config.yaml"), result
        assert not (tmp_path / "pwned").exists()
        from sagemaker.config.config import load_sagemaker_config
        loaded = load_sagemaker_config([result.stdout])
        assert loaded["SageMaker"]["PythonSDK"]["Modules"]["Session"]["DefaultS3Bucket"] == "team-bucket"
    finally:
        server.close()


def test_a_bad_default_bucket_stops_serve_naming_the_flag(tmp_path):
    (tmp_path / "hosts.yaml").write_text(json.dumps({"hosts": [{"address": "localhost", "name": "h1",
                                                                "transport": "local"}]}))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "FLEET_"))}
    env.update(FLEET_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID=OPERATOR_KEY,
               AWS_SECRET_ACCESS_KEY=OPERATOR_SECRET, AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
    result = subprocess.run([sys.executable, "-m", "fleet", "serve", "--inventory", str(tmp_path / "hosts.yaml"),
                             "--listen", f"127.0.0.1:{free_port()}", "--default-bucket", "Bad_Bucket"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "--default-bucket 'Bad_Bucket'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""


def _raw(served: Served, head: str) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as conn:
        conn.sendall(head.encode())
        data = b""
        while chunk := conn.recv(65536):  # until the answer is whole (the server may linger)
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                break
    status_line, _, headers = head.partition(b"\r\n")
    return int(status_line.split()[1]), headers.decode().lower(), body


def test_an_unsigned_or_oversized_form_is_answered_in_stss_xml_error_shape(served):
    form = "Action=GetCallerIdentity&Version=2011-06-15"
    status, headers, body = _raw(served, f"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                         f"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
                                         f"Content-Length: {len(form)}\r\n\r\n{form}")
    assert status == 403 and "content-type: text/xml" in headers
    assert _parse(body, status)["Error"]["Code"] == "MissingAuthenticationToken"
    status, headers, body = _raw(served, "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                         "Content-Type: application/x-www-form-urlencoded\r\n"
                                         "Content-Length: 3000000\r\n\r\n")
    assert status == 413 and "content-type: text/xml" in headers
    assert _parse(body, status)["Error"]["Type"] == "Sender"
    # the JSON protocols are answered as before, on the same server
    assert served.client("sagemaker", ALICE_KEY, ALICE_SECRET).list_processing_jobs()["ProcessingJobSummaries"] == []
    assert "Traceback" not in served.err.read_text()
