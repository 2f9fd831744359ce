"""Who may write the job's output directories on a host (issue 19, point 11).

The directories a container writes (/opt/ml/output, each ProcessingOutput's LocalPath) are
its user's alone: the uid its image's User names (a name: from the image's /etc/passwd).
They used to be 0777, and a local user of the host whose uid some process of the container
has (uid collisions between hosts and images are common: 1000, nobody) reached them through
/proc/PID/root and put files into the job's uploads. The test hosts share this machine's
kernel and file system: the "other local user" is a process of this machine with that uid.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from conftest import IMAGE, make_job

pytestmark = pytest.mark.engines  # scripts/test runs this module on every engine of the bed

WORKER_UID = 2345  # the image's named user (USER worker)
GUEST_UID = 4242  # a user of the image and, by chance, of the host: the attacker

PASSWD = f"root:x:0:0:root:/root:/bin/sh\nworker:x:{WORKER_UID}:{WORKER_UID}::/tmp:/bin/sh\n" \
         f"guest:x:{GUEST_UID}:{GUEST_UID}::/tmp:/bin/sh\n"
GROUP = f"root:x:0:\nworker:x:{WORKER_UID}:\nguest:x:{GUEST_UID}:\n"


@pytest.fixture(scope="module")
def users_images(cluster, tmp_path_factory):
    """(root image, USER worker image) on the first test host: the test image with an
    /etc/passwd naming worker and guest, committed as it runs (root) and as USER worker."""
    host = cluster.hosts[0]
    etc = tmp_path_factory.mktemp("users") / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    tag = f"fleet-test:users-{secrets.token_hex(3)}"
    root_image, worker_image = f"{tag}-root", f"{tag}-worker"
    name = f"zq-build-{secrets.token_hex(4)}"
    host.docker("create", "--name", name, IMAGE)
    try:
        host.docker("cp", str(etc), f"{name}:/")  # /etc made if the image has none
        host.docker("commit", name, root_image)
        host.docker("commit", "--change", "USER worker", name, worker_image)
    finally:
        host.docker("rm", "--force", name)
    yield root_image, worker_image
    host.docker("image", "rm", "--force", root_image, worker_image, check=False)


def _job(image: str, script: str, target: Path) -> dict:
    job = make_job(script, count=1, ProcessingOutputConfig={"Outputs": [{"OutputName": "out", "S3Output": {
        "S3Uri": f"file://{target}", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]})
    job["AppSpecification"]["ImageUri"] = image
    return job


def test_a_container_running_as_a_named_user_writes_its_outputs_and_they_upload(fleet, tmp_path, users_images):
    target = tmp_path / "target"
    script = ('sed -n "s/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p" /proc/self/status > /opt/ml/processing/output/uid.txt'
              ' && mkdir /opt/ml/processing/output/sub && echo deeper > /opt/ml/processing/output/sub/f.txt'
              ' && echo "done as worker" > /opt/ml/output/message')
    job = _job(users_images[1], script, target)
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (target / "uid.txt").read_text() == f"{WORKER_UID}\n"
    assert (target / "sub" / "f.txt").read_text() == "deeper\n"
    assert fleet.record(job["ProcessingJobName"])["ExitMessage"].startswith("done as worker")


def _process_with(token: str, uid: int, timeout: float = 60) -> int:
    """The pid of the process of `uid` whose argv holds `token` (the container's), once
    it runs (the test fails past `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if token.encode() not in (proc / "cmdline").read_bytes():
                    continue
                uids = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("Uid:"))
            except (OSError, StopIteration):  # gone meanwhile
                continue
            if uids.split()[1:] == [str(uid)] * 4:
                return int(proc.name)
        time.sleep(0.1)
    raise AssertionError(f"no process of uid {uid} with {token} in its argv")


def _as_guest(path: Path) -> subprocess.CompletedProcess:
    """Another local user of the host (uid GUEST_UID) creates `path`."""
    return subprocess.run(["setpriv", f"--reuid={GUEST_UID}", f"--regid={GUEST_UID}", "--clear-groups",
                           "sh", "-c", 'echo planted > "$1"', "sh", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_another_local_user_cannot_put_files_into_the_jobs_outputs(fleet, cluster, tmp_path, users_images):
    """The container runs as root (its image's User) and, as many do, runs a process as an
    unprivileged user: guest, whose uid a local user of the host has too. That user reaches
    the container's mounts through /proc/PID/root of that process (and tries the job
    directory's own paths): every create is refused, and the upload holds only the
    container's own file."""
    target = tmp_path / "target"
    token = f"zq-guest-{secrets.token_hex(4)}"
    script = ('echo mine > /opt/ml/processing/output/mine.txt && echo ok > /opt/ml/output/message && '
              f'busybox su -s /bin/sh guest -c "while [ ! -e /tmp/go ]; do sleep 0.2; done" {token}')
    job = _job(users_images[0], script, target)
    name = job["ProcessingJobName"]
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)))
    try:
        pid = _process_with(token, GUEST_UID)
        inside = Path(f"/proc/{pid}/root")
        private = cluster.hosts[0].workdir / name / "algo-1" / "ml"
        tries = {path: _as_guest(path) for path in (
            inside / "opt/ml/output/planted", inside / "opt/ml/processing/output/planted.txt",
            private / "output" / "planted", private / "outputs" / "1" / "planted.txt")}
        (inside / "tmp" / "go").touch()  # root: the container may end
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    for path, tried in tries.items():
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, (path, tried.stderr)
    assert process.returncode == 0, out + err
    assert sorted(p.name for p in target.rglob("*")) == ["mine.txt"]
    assert fleet.record(name)["ExitMessage"].startswith("ok")
