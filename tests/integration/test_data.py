"""S3 inputs and outputs on 3 real hosts and a real S3 server (SeaweedFS): what the
containers read (checksums computed inside them) and what lands in S3."""

from __future__ import annotations

import hashlib
import json
import os
import time

from conftest import make_job

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


def _run(fleet, s3, job, *args, timeout=300):
    path = fleet.write_job(job)
    return fleet("run", "--inventory", str(fleet.cluster.inventory), str(path), *args,
                 env=fleet.env(**s3.env), timeout=timeout)


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
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
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
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
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
