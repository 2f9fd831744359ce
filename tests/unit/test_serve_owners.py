"""Whose jobs a caller of `fleet serve` sees and stops (issue 19, point 4), against a real
`fleet serve` on loopback, driven by boto3 clients each signing with a profile of one
shared-credentials file: alice and bob (plain profiles), root (`fleet_admin = true`), and the
operator's own key (the AWS chain of the process that started serve).

The FLEET_HOME holds a job `fleet run` made (RUN_MADE, the only host's, its lock held by a
process standing in for its `fleet run`): the jobs created through the API wait for that host,
so nothing starts a container; a job's stop or its ending shows in its record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fleet.contract.describe import new_record
from fleet.contract.job import parse_job
from fleet.errors import InvalidInput
from fleet.inventory import parse_inventory
from fleet.plan import job_arn, record_hosts
from fleet.runtime.store import JobStore, RunOptions, RunRecord
from fleet.serve.auth import CONTROLLER, KeyRing
from fleet.serve.logs.shapes import LOG_GROUP
from fleet.serve.scheduler import STOP_ASKED

from support.serving import free_port, serve_argv, stop, wait_listening

ROOT = Path(__file__).resolve().parents[2]
RUN_MADE = "zq-made-by-fleet-run"
OPERATOR_KEY, OPERATOR_SECRET = "AKIDFLEETOPERATOR001", "fleet-owners-operator-secret"
PROFILES = {"alice": ("AKIDFLEETOWNERALICE1", "alice-secret", ""),
            "bob": ("AKIDFLEETOWNERBOB001", "bob-secret", ""),
            "root": ("AKIDFLEETOWNERROOT01", "root-secret", "fleet_admin = true\n")}


def _job(name: str, secret: str = "") -> dict:
    return {"ProcessingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
                                                      "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "zq:1"}, "Environment": {"TOKEN": secret or f"{name}-token"}}


def _credentials(profiles: dict[str, tuple[str, str, str]]) -> str:
    return "".join(f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n{extra}\n"
                   for name, (key, secret, extra) in profiles.items())


def _env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(FLEET_HOME=str(home), PYTHONPATH=str(ROOT), AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true", AWS_REGION="us-east-1")
    return env


@dataclass
class Served:
    port: int
    store: JobStore
    credentials: Path
    run_holder: subprocess.Popen

    def client(self, who: str, service: str = "sagemaker"):
        """A boto3 client of profile `who` (read by boto3 from the credentials file serve reads),
        or of the operator's own key ("operator")."""
        if who == "operator":
            session = boto3.Session(aws_access_key_id=OPERATOR_KEY, aws_secret_access_key=OPERATOR_SECRET,
                                    region_name="us-east-1")
        else:
            session = boto3.Session(profile_name=who, region_name="us-east-1")
        return session.client(service, endpoint_url=f"http://127.0.0.1:{self.port}",
                              config=Config(retries={"max_attempts": 1}))

    def log(self, name: str, text: str) -> str:
        """Give the job the only host and a log there, as its run would: its stream's name."""
        record = self.store.record(name)
        hosts = parse_inventory({"hosts": [{"address": "localhost", "name": "h1", "transport": "local"}]},
                                "hosts.yaml").hosts
        if name != RUN_MADE:
            record.update(Hosts=record_hosts(hosts), ProcessingJobStatus="Completed", SecondaryStatus=None)
        with record.open_log("algo-1") as log:
            log.write(text.encode())
        return f"{name}/algo-1-{int(datetime.fromisoformat(record.data['CreationTime']).timestamp())}"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("owners")
    home = tmp / "home"
    inventory = {"hosts": [{"address": "localhost", "name": "h1", "transport": "local"}]}
    (tmp / "hosts.yaml").write_text(json.dumps(inventory))
    credentials = tmp / "credentials"
    credentials.write_text(_credentials(PROFILES))
    store = JobStore(home)
    # As `fleet run` records a job (cli._run): no owner of serve's; its process holds the lock.
    hosts = parse_inventory(inventory, "hosts.yaml").hosts
    job = parse_job(_job(RUN_MADE), "test")
    record = store.create(new_record(job, job_arn(job, "us-east-1", "000000000000"), record_hosts(hosts)))
    record.save_run(RunRecord.new(job, hosts, RunOptions(), "r", "c"))
    env = _env(home)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom fleet.runtime.store import JobStore\n"
         "ownership = JobStore(Path(sys.argv[1])).claim(sys.argv[2])\nprint('held', flush=True)\ntime.sleep(600)\n",
         str(home), RUN_MADE], env=env, stdout=subprocess.PIPE, start_new_session=True)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    port = free_port()
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            serve_argv(tmp / "hosts.yaml", port, "--credentials", str(credentials)),
            env={**env, "AWS_ACCESS_KEY_ID": OPERATOR_KEY, "AWS_SECRET_ACCESS_KEY": OPERATOR_SECRET},
            stdout=log, stderr=log, cwd=tmp)
    try:
        wait_listening(process, port, log_path.read_text)
        with pytest.MonkeyPatch.context() as patch:  # the clients read the profiles serve reads
            for key in [key for key in os.environ if key.startswith("AWS_")]:
                patch.delenv(key)
            patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
            patch.setenv("AWS_CONFIG_FILE", "/dev/null")
            patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            yield Served(port, store, credentials, holder)
    finally:
        stop(process)
        holder.kill()
        holder.wait(timeout=10)
    assert "Traceback" not in log_path.read_text()


def _error(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    error = raised.value.response["Error"]
    return error["Code"], error["Message"]


def _listed(client) -> set[str]:
    return {s["ProcessingJobName"] for s in client.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]}


def test_a_job_is_seen_only_by_the_profile_that_created_it(served):
    alice, bob = served.client("alice"), served.client("bob")
    alice.create_processing_job(**_job("zq-alice-seen", "alice-s3cr3t"))
    bob.create_processing_job(**_job("zq-bob-seen"))

    mine = alice.describe_processing_job(ProcessingJobName="zq-alice-seen")
    assert mine["ProcessingJobStatus"] == "InProgress" and mine["Environment"] == {"TOKEN": "alice-s3cr3t"}
    # another's job is answered word for word as one that does not exist
    unknown = _error(bob.describe_processing_job, ProcessingJobName="zq-nobody-has-it")
    assert unknown == ("ResourceNotFound", "Processing job zq-nobody-has-it does not exist")
    assert _error(bob.describe_processing_job, ProcessingJobName="zq-alice-seen") == \
        ("ResourceNotFound", "Processing job zq-alice-seen does not exist")
    assert _error(alice.describe_processing_job, ProcessingJobName="zq-bob-seen")[0] == "ResourceNotFound"

    assert "zq-alice-seen" in _listed(alice) and "zq-bob-seen" not in _listed(alice)
    assert "zq-bob-seen" in _listed(bob) and "zq-alice-seen" not in _listed(bob)
    assert bob.list_processing_jobs(NameContains="alice")["ProcessingJobSummaries"] == []


def test_another_profile_cannot_stop_a_job_and_it_goes_on(served):
    alice, bob = served.client("alice"), served.client("bob")
    alice.create_processing_job(**_job("zq-alice-stop"))
    assert _error(bob.stop_processing_job, ProcessingJobName="zq-alice-stop") == \
        ("ResourceNotFound", "Processing job zq-alice-stop does not exist")
    assert alice.describe_processing_job(ProcessingJobName="zq-alice-stop")["ProcessingJobStatus"] == "InProgress"
    assert served.store.load("zq-alice-stop").ProcessingJobStatus == "InProgress"
    alice.stop_processing_job(ProcessingJobName="zq-alice-stop")  # her own: a waiting job ends Stopped
    assert alice.describe_processing_job(ProcessingJobName="zq-alice-stop")["ProcessingJobStatus"] == "Stopped"
    # an ended job of another's is as unknown too (not "it cannot be stopped")
    assert _error(bob.stop_processing_job, ProcessingJobName="zq-alice-stop")[0] == "ResourceNotFound"


def test_a_job_made_by_fleet_run_is_hidden_from_profiles_and_runs_on(served):
    alice = served.client("alice")
    assert _error(alice.describe_processing_job, ProcessingJobName=RUN_MADE)[0] == "ResourceNotFound"
    assert _error(alice.stop_processing_job, ProcessingJobName=RUN_MADE)[0] == "ResourceNotFound"
    assert RUN_MADE not in _listed(alice)
    assert not (served.store.job_dir(RUN_MADE) / STOP_ASKED).exists()  # no `fleet stop` was started
    assert served.run_holder.poll() is None and served.store.load(RUN_MADE).ProcessingJobStatus == "InProgress"


def test_log_streams_and_events_of_another_profile_are_not_found(served):
    alice, bob = served.client("alice"), served.client("bob")
    alice.create_processing_job(**_job("zq-alice-logs"))
    stream = served.log("zq-alice-logs", "alice's line\n")
    run_stream = served.log(RUN_MADE, "fleet run's line\n")
    alice_logs, bob_logs = served.client("alice", "logs"), served.client("bob", "logs")

    assert [e["message"] for e in alice_logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                                                            startFromHead=True)["events"]] == ["alice's line"]
    assert [s["logStreamName"] for s in alice_logs.describe_log_streams(
        logGroupName=LOG_GROUP, logStreamNamePrefix="zq-alice-logs/")["logStreams"]] == [stream]
    for prefix in ("zq-alice-logs/", "zq-alice-logs", "zq-", RUN_MADE + "/"):
        assert bob_logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=prefix)["logStreams"] == []
    for client, name in ((bob_logs, stream), (alice_logs, run_stream)):
        assert _error(client.get_log_events, logGroupName=LOG_GROUP, logStreamName=name) == \
            ("ResourceNotFoundException", "The specified log stream does not exist.")
    assert alice.describe_processing_job(ProcessingJobName="zq-alice-logs")["ProcessingJobStatus"] == "Completed"
    assert _error(bob.describe_processing_job, ProcessingJobName="zq-alice-logs")[0] == "ResourceNotFound"


def test_filter_log_events_leaves_out_another_profiles_streams(served):
    served.client("alice").create_processing_job(**_job("zq-alice-filter"))
    stream = served.log("zq-alice-filter", "alice's filtered line\n")
    alice_logs, bob_logs = served.client("alice", "logs"), served.client("bob", "logs")
    events = alice_logs.filter_log_events(logGroupName=LOG_GROUP, logStreamNamePrefix="zq-alice-filter")["events"]
    assert [(e["logStreamName"], e["message"]) for e in events] == [(stream, "alice's filtered line")]
    for found in (bob_logs.filter_log_events(logGroupName=LOG_GROUP, logStreamNamePrefix="zq-alice-filter"),
                  bob_logs.filter_log_events(logGroupName=LOG_GROUP, logStreamNames=[stream]),
                  bob_logs.filter_log_events(logGroupName=LOG_GROUP, filterPattern="alice")):
        assert found["events"] == []
    root = served.client("root", "logs").filter_log_events(logGroupName=LOG_GROUP, logStreamNames=[stream])
    assert [e["message"] for e in root["events"]] == ["alice's filtered line"]


def test_an_admin_profile_and_the_operator_see_and_stop_every_job(served):
    served.client("alice").create_processing_job(**_job("zq-alice-admin"))
    served.client("bob").create_processing_job(**_job("zq-bob-admin"))
    served.client("operator").create_processing_job(**_job("zq-operator-admin"))
    run_stream = served.log(RUN_MADE, "more of fleet run's\n")
    for who in ("root", "operator"):
        client = served.client(who)
        assert {"zq-alice-admin", "zq-bob-admin", "zq-operator-admin", RUN_MADE} <= _listed(client)
        for name in ("zq-alice-admin", "zq-bob-admin", "zq-operator-admin", RUN_MADE):
            assert client.describe_processing_job(ProcessingJobName=name)["ProcessingJobName"] == name
        events = served.client(who, "logs").get_log_events(logGroupName=LOG_GROUP, logStreamName=run_stream,
                                                           startFromHead=True)["events"]
        assert "more of fleet run's" in [e["message"] for e in events]
    assert _error(served.client("alice").describe_processing_job, ProcessingJobName="zq-operator-admin")[0] == \
        "ResourceNotFound"
    # the record names the owner: the profile, or the operator's own name for its chain key
    assert {name: served.store.load(name).Owner for name in ("zq-alice-admin", "zq-operator-admin")} == \
        {"zq-alice-admin": "alice", "zq-operator-admin": CONTROLLER.name}
    served.client("root").stop_processing_job(ProcessingJobName="zq-bob-admin")
    assert served.client("bob").describe_processing_job(ProcessingJobName="zq-bob-admin")["ProcessingJobStatus"] \
        == "Stopped"


def test_a_name_another_profile_uses_is_in_use_and_stays_theirs(served):
    alice, bob = served.client("alice"), served.client("bob")
    alice.create_processing_job(**_job("zq-alice-name", "alice-s3cr3t"))
    code, message = _error(bob.create_processing_job, **_job("zq-alice-name", "bob-token"))
    assert (code, message) == ("ResourceInUse", "Job zq-alice-name already exists")
    assert alice.describe_processing_job(ProcessingJobName="zq-alice-name")["Environment"] == \
        {"TOKEN": "alice-s3cr3t"}
    assert _error(bob.describe_processing_job, ProcessingJobName="zq-alice-name")[0] == "ResourceNotFound"


@pytest.mark.parametrize("section, said", [
    ("[bob]\naws_access_key_id = AKIDB\naws_secret_access_key = s\nfleet_admin = yes\n",
     "profile [bob]: fleet_admin must be true or false, not 'yes'"),
    ("[fleet-controller]\naws_access_key_id = AKIDB\naws_secret_access_key = s\n",
     "profile [fleet-controller]: the profile name fleet-controller is fleet's name for the controller's own key"),
])
def test_a_bad_credentials_file_is_refused_naming_file_profile_and_key(tmp_path, section, said):
    (tmp_path / "hosts.yaml").write_text(json.dumps({"hosts": [{"address": "localhost", "transport": "local"}]}))
    (tmp_path / "credentials").write_text("[alice]\naws_access_key_id = AKIDA\naws_secret_access_key = s\n" + section)
    done = subprocess.run([sys.executable, "-m", "fleet", "serve", "--inventory", str(tmp_path / "hosts.yaml"),
                           "--credentials", str(tmp_path / "credentials"), "--listen", f"127.0.0.1:{free_port()}"],
                          env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert done.returncode == InvalidInput.exit_code
    assert f"{tmp_path / 'credentials'}: {said}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_key_listed_twice_acts_for_the_first_profile_and_needs_one_admin_value(tmp_path):
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = AKIDA\naws_secret_access_key = s\n"
                    "[alice]\naws_access_key_id = AKIDA\naws_secret_access_key = s\nfleet_admin = False\n"
                    "[root]\naws_access_key_id = AKIDR\naws_secret_access_key = r\nfleet_admin = TRUE\n")
    ring = KeyRing.from_file(path)
    assert [(c.access_key, c.principal.name, c.principal.admin) for c in ring] == \
        [("AKIDA", "default", False), ("AKIDR", "root", True)]
    path.write_text(path.read_text() + "[other]\naws_access_key_id = AKIDR\naws_secret_access_key = r\n")
    with pytest.raises(InvalidInput, match=r"profile \[other\]: access key AKIDR is also in .*profile \[root\], "
                                           r"with another fleet_admin"):
        KeyRing.from_file(path)
