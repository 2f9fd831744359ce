"""What each input holds and which host gets it: S3Prefix and ManifestFile listings (against a
fake S3 serving a dict), file:// directories, the safety of every relative path, the
unsupported modes, and the ShardedByS3Key / FullyReplicated split."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

from fleet.contract.job import ProcessingJob, S3InputSpec, parse_job
from fleet.data.locations import S3Location
from fleet.data.sources import InputObject, assignments, check_job_data, check_supported, list_input, shard
from fleet.errors import ClientError, InvalidInput

from support.fake_s3 import FakeS3

LOCAL_PATH = "/opt/ml/processing/input/data"


def spec(uri: str, data_type: str = "S3Prefix", **extra) -> S3InputSpec:
    return S3InputSpec(S3Uri=uri, LocalPath=LOCAL_PATH, S3DataType=data_type, **extra)


def placed(objects: list[InputObject]) -> dict[str, str]:
    """relative path under LocalPath → where it is read from."""
    return {o.relative: str(o.source) for o in objects}


def obj(key: str, size: int = 1) -> InputObject:
    return InputObject(S3Location("b", key), key.rsplit("/", 1)[-1], size)


# -- S3Prefix ----------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["s3://b/in/",
                                 "https://b.s3.us-east-1.amazonaws.com/in/",
                                 "https://s3.us-east-1.amazonaws.com/b/in/"])
async def test_s3_prefix_places_every_object_at_its_key_relative_to_the_prefix(uri):
    s3 = FakeS3({"b/in/a.csv": b"a", "b/in/sub/b.csv": b"bb", "b/in/sub/deep/c.csv": b"",
                 "b/other/x.csv": b"x"})
    objects = await list_input(spec(uri), s3)
    assert placed(objects) == {"a.csv": "s3://b/in/a.csv", "sub/b.csv": "s3://b/in/sub/b.csv",
                               "sub/deep/c.csv": "s3://b/in/sub/deep/c.csv"}
    assert {o.relative: o.size for o in objects} == {"a.csv": 1, "sub/b.csv": 2, "sub/deep/c.csv": 0}


async def test_s3_prefix_naming_one_object_exactly_places_it_under_its_own_name():
    s3 = FakeS3({"b/in/sub/train.csv": b"1,2,3", "b/in/sub/other.csv": b"x"})
    objects = await list_input(spec("s3://b/in/sub/train.csv"), s3)
    assert placed(objects) == {"train.csv": "s3://b/in/sub/train.csv"}
    assert objects[0].size == 5


async def test_s3_prefix_of_the_whole_bucket_places_objects_at_their_keys():
    s3 = FakeS3({"b/a.csv": b"a", "b/in/b.csv": b"b"})
    assert placed(await list_input(spec("s3://b/"), s3)) == {"a.csv": "s3://b/a.csv", "in/b.csv": "s3://b/in/b.csv"}


@pytest.mark.parametrize("uri", ["s3://b/nothing/", "s3://b/in/a.csv.gz",
                                 "https://b.s3.us-east-1.amazonaws.com/nothing/"])
async def test_s3_prefix_matching_nothing_is_a_client_error_naming_the_uri(uri):
    s3 = FakeS3({"b/in/a.csv": b"a"})
    with pytest.raises(ClientError) as caught:
        await list_input(spec(uri), s3)
    assert caught.value.message.startswith(f'No S3 objects found under S3 URL "{uri}"')
    assert caught.value.failure_reason.startswith("ClientError: No S3 objects found")


# -- safety: nothing lands outside LocalPath ---------------------------------------------------

@pytest.mark.parametrize("key", ["in/../x", "in/a/../../x", "in/./x", "in/a//b", "in/a/.", "in/a/.."])
async def test_s3_key_that_would_land_outside_local_path_is_refused_naming_it(key):
    s3 = FakeS3({"b/in/good.csv": b"g", f"b/{key}": b"evil"})
    with pytest.raises(ClientError, match="would land outside its LocalPath") as caught:
        await list_input(spec("s3://b/in/"), s3)
    assert f"s3://b/{key}" in caught.value.message


@pytest.mark.parametrize("uri", ["s3://b/in/", "s3://b/in"])
async def test_s3_key_with_an_empty_component_after_the_prefix_is_refused(uri):
    s3 = FakeS3({"b/in/x": b"the real x", "b/in//x": b"another object"})
    with pytest.raises(ClientError, match="would land outside its LocalPath") as caught:
        await list_input(spec(uri), s3)
    assert "s3://b/in//x" in caught.value.message


async def test_s3_console_folder_objects_place_nothing_and_fail_nothing():
    s3 = FakeS3({"b/in/": b"", "b/in/a.csv": b"a", "b/in/sub/": b"", "b/in/sub/b.csv": b"bb"})
    objects = await list_input(spec("s3://b/in/"), s3)
    assert placed(objects) == {"a.csv": "s3://b/in/a.csv", "sub/b.csv": "s3://b/in/sub/b.csv"}


# -- ManifestFile ------------------------------------------------------------------------------

def manifest(*entries) -> bytes:
    return json.dumps(list(entries)).encode()


@pytest.mark.parametrize("prefix", ["s3://data/some/prefix/", "s3://data/some/prefix",
                                    "https://data.s3.us-east-1.amazonaws.com/some/prefix/"])
async def test_manifest_places_each_entry_at_its_path_relative_to_the_prefix(prefix):
    s3 = FakeS3({"b/m.json": manifest({"prefix": prefix}, "a.csv", "sub/b.csv"),
                 "data/some/prefix/a.csv": b"aa", "data/some/prefix/sub/b.csv": b"bbb",
                 "data/some/prefix/not-listed.csv": b"n"})
    objects = await list_input(spec("s3://b/m.json", "ManifestFile"), s3)
    assert placed(objects) == {"a.csv": "s3://data/some/prefix/a.csv",
                               "sub/b.csv": "s3://data/some/prefix/sub/b.csv"}
    assert {o.relative: o.size for o in objects} == {"a.csv": 2, "sub/b.csv": 3}


async def test_manifest_entry_without_an_object_is_a_client_error_naming_it():
    s3 = FakeS3({"b/m.json": manifest({"prefix": "s3://data/p/"}, "a.csv", "missing.csv"),
                 "data/p/a.csv": b"a"})
    with pytest.raises(ClientError, match="s3://data/p/missing.csv"):
        await list_input(spec("s3://b/m.json", "ManifestFile"), s3)


async def test_manifest_with_no_entries_matches_nothing():
    s3 = FakeS3({"b/m.json": manifest({"prefix": "s3://data/p/"})})
    with pytest.raises(ClientError) as caught:
        await list_input(spec("s3://b/m.json", "ManifestFile"), s3)
    assert caught.value.message.startswith('No S3 objects found under S3 URL "s3://b/m.json"')


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{\"prefix\": \"s3://data/p/\"}", b"[]", b"null", b"42", b"\"s3://data/p/\"",
    manifest("a.csv"), manifest({"Prefix": "s3://data/p/"}, "a.csv"), manifest({"prefix": 7}, "a.csv"),
    manifest(["s3://data/p/"], "a.csv"), manifest({"prefix": "s3://data/p/"}, 3),
    manifest({"prefix": "s3://data/p/"}, {"key": "a.csv"}), manifest({"prefix": "s3://data/p/"}, None),
    b"\xff\xfe[not utf-8",
], ids=lambda b: b[:30].decode("ascii", "replace"))
async def test_malformed_manifest_is_a_client_error_naming_the_manifest(body):
    s3 = FakeS3({"b/m.json": body, "data/p/a.csv": b"a"})
    with pytest.raises(ClientError) as caught:
        await list_input(spec("s3://b/m.json", "ManifestFile"), s3)
    assert "s3://b/m.json" in caught.value.message
    assert "manifest" in caught.value.message


@pytest.mark.parametrize("prefix", ["not-a-uri", "ftp://data/p/", "s3:///p/"])
async def test_manifest_with_a_prefix_that_is_not_an_s3_uri_is_a_client_error_naming_the_manifest(prefix):
    s3 = FakeS3({"b/m.json": manifest({"prefix": prefix}, "a.csv")})
    with pytest.raises(ClientError) as caught:
        await list_input(spec("s3://b/m.json", "ManifestFile"), s3)
    assert "s3://b/m.json" in caught.value.message


async def test_missing_manifest_is_a_client_error_naming_it():
    with pytest.raises(ClientError, match="s3://b/m.json"):
        await list_input(spec("s3://b/m.json", "ManifestFile"), FakeS3({}))


@pytest.mark.parametrize("entry", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", ".", "..",
                                   "", "a/"])
async def test_manifest_entry_that_would_land_outside_local_path_is_refused_naming_it(entry):
    s3 = FakeS3({"b/m.json": manifest({"prefix": "s3://data/p/"}, "a.csv", entry), "data/p/a.csv": b"a",
                 f"data/p/{entry}": b"evil"})
    with pytest.raises(ClientError, match="would land outside its LocalPath") as caught:
        await list_input(spec("s3://b/m.json", "ManifestFile"), s3)
    assert repr(entry) in caught.value.message
    assert "s3://b/m.json" in caught.value.message


# -- file:// (fleet's extension) ---------------------------------------------------------------

async def test_file_directory_places_every_regular_file_at_its_path_below_it(tmp_path):
    root = tmp_path / "data"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.csv").write_bytes(b"aa")
    (root / "sub" / "deep" / "b.csv").write_bytes(b"")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    objects = await list_input(spec(f"file://{root}"), None)
    assert placed(objects) == {"a.csv": f"file://{root}/a.csv", "sub/deep/b.csv": f"file://{root}/sub/deep/b.csv"}
    assert {o.relative: o.size for o in objects} == {"a.csv": 2, "sub/deep/b.csv": 0}


async def test_file_uri_naming_one_file_places_it_under_its_own_name(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"123")
    objects = await list_input(spec(f"file://{tmp_path}/train.csv"), None)
    assert placed(objects) == {"train.csv": f"file://{tmp_path}/train.csv"}


async def test_empty_or_missing_file_directory_matches_nothing(tmp_path):
    for uri in (f"file://{tmp_path}", f"file://{tmp_path}/missing"):
        with pytest.raises(ClientError) as caught:
            await list_input(spec(uri), None)
        assert caught.value.message.startswith(f'No S3 objects found under S3 URL "{uri}"')


async def test_file_manifest_with_a_file_prefix_refuses_an_entry_that_is_not_a_file(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"a")
    os.symlink("/etc/hostname", tmp_path / "link")
    good = tmp_path / "good.json"
    good.write_bytes(manifest({"prefix": f"file://{tmp_path}/"}, "a.csv"))
    objects = await list_input(spec(f"file://{good}", "ManifestFile"), None)
    assert placed(objects) == {"a.csv": f"file://{tmp_path}/a.csv"}
    bad = tmp_path / "bad.json"
    bad.write_bytes(manifest({"prefix": f"file://{tmp_path}/"}, "a.csv", "link"))
    with pytest.raises(ClientError, match="'link'.*is not a file"):
        await list_input(spec(f"file://{bad}", "ManifestFile"), None)


# -- modes fleet does not support yet ----------------------------------------------------------

def test_pipe_mode_is_not_supported_yet():
    with pytest.raises(ClientError, match="Pipe is not supported") as caught:
        check_supported(spec("s3://b/in/", S3InputMode="Pipe"), "train")
    assert "train" in caught.value.message


def test_gzip_compression_is_not_supported_yet():
    with pytest.raises(ClientError, match="Gzip .*not supported") as caught:
        check_supported(spec("s3://b/in/", S3CompressionType="Gzip"), "train")
    assert "train" in caught.value.message


def test_file_mode_without_compression_is_supported():
    assert check_supported(spec("s3://b/in/", S3InputMode="File", S3CompressionType="None"), "train") is None


# -- ShardedByS3Key / FullyReplicated ----------------------------------------------------------

SIZES = [(objects, hosts) for objects in (0, 1, 2, 3, 5, 7, 10, 16, 31, 100, 257) for hosts in (1, 2, 3, 4, 7, 16)]


def keys(n: int) -> list[InputObject]:
    return [obj(f"in/part-{i:05d}-{random.Random(i).randrange(10**6)}.csv") for i in range(n)]


@pytest.mark.parametrize("n, hosts", SIZES)
def test_sharded_each_object_goes_to_exactly_one_host(n, hosts):
    objects = keys(n)
    split = shard(objects, hosts)
    assert len(split) == hosts
    every = Counter(o.name for part in split for o in part)
    assert every == Counter(o.name for o in objects)
    assert set(every.values()) <= {1}


@pytest.mark.parametrize("n, hosts", SIZES)
def test_sharded_hosts_counts_differ_by_at_most_one(n, hosts):
    counts = [len(part) for part in shard(keys(n), hosts)]
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("n, hosts", SIZES)
def test_sharded_split_depends_only_on_the_keys_and_the_host_count(n, hosts):
    objects = keys(n)
    expected = [[o.name for o in part] for part in shard(objects, hosts)]
    for seed in range(5):
        shuffled = list(objects)
        random.Random(seed).shuffle(shuffled)
        assert [[o.name for o in part] for part in shard(shuffled, hosts)] == expected


def test_sharded_with_fewer_objects_than_hosts_leaves_some_hosts_without_any():
    split = shard(keys(2), 5)
    assert sorted(len(part) for part in split) == [0, 0, 0, 1, 1]


def test_assignments_shard_for_sharded_by_s3_key():
    objects = keys(10)
    sharded = spec("s3://b/in/", S3DataDistributionType="ShardedByS3Key")
    assert assignments(sharded, objects, 3) == shard(objects, 3)


@pytest.mark.parametrize("hosts", [1, 2, 5])
def test_fully_replicated_every_host_gets_every_object(hosts):
    objects = keys(10)
    replicated = spec("s3://b/in/", S3DataDistributionType="FullyReplicated")
    per_host = assignments(replicated, objects, hosts)
    assert len(per_host) == hosts
    assert all(part == objects for part in per_host)
    assert assignments(spec("s3://b/in/"), objects, hosts) == per_host  # the default


async def test_a_manifest_in_s3_may_not_point_at_the_controllers_files():
    class _S3:
        async def read_all(self, location):
            return json.dumps([{"prefix": "file:///etc/"}, "passwd"]).encode()

    spec = S3InputSpec(S3Uri="s3://b/manifest.json", LocalPath="/opt/ml/processing/in", S3DataType="ManifestFile")
    with pytest.raises(ClientError, match="prefix file:///etc/ is on the controller; refused"):
        await list_input(spec, _S3())


# -- SageMaker's placement under a prefix without a trailing '/'; collisions --------------------

async def test_s3_prefix_ending_mid_name_keeps_the_whole_file_name():
    s3 = FakeS3({"b/data/input.csv": b"i", "b/data/in/a.csv": b"a", "b/data/other.csv": b"o"})
    objects = await list_input(spec("s3://b/data/in"), s3)
    assert placed(objects) == {"input.csv": "s3://b/data/input.csv", "in/a.csv": "s3://b/data/in/a.csv"}


async def test_an_object_and_a_directory_of_the_same_name_are_refused_naming_both_keys():
    s3 = FakeS3({"b/data/in": b"file", "b/data/in/a.csv": b"a"})
    with pytest.raises(ClientError, match="collide") as caught:
        await list_input(spec("s3://b/data/in"), s3)
    assert "s3://b/data/in and s3://b/data/in/a.csv" in caught.value.message


async def test_manifest_entries_that_collide_are_refused_naming_both():
    s3 = FakeS3({"b/m.json": manifest({"prefix": "s3://data/p/"}, "a", "a/b.csv"),
                 "data/p/a": b"a", "data/p/a/b.csv": b"b"})
    with pytest.raises(ClientError, match="collide") as caught:
        await list_input(spec("s3://b/m.json", "ManifestFile"), s3)
    assert "s3://data/p/a" in caught.value.message and "s3://data/p/a/b.csv" in caught.value.message


async def test_a_manifest_entry_listed_twice_is_placed_once():
    s3 = FakeS3({"b/m.json": manifest({"prefix": "s3://data/p/"}, "a.csv", "a.csv"), "data/p/a.csv": b"a"})
    assert placed(await list_input(spec("s3://b/m.json", "ManifestFile"), s3)) == {"a.csv": "s3://data/p/a.csv"}


# -- what fleet cannot do is refused before anything is recorded (exit 2, naming file and field) --

def job_with(**s3_input) -> ProcessingJob:
    fields = {"S3Uri": "s3://b/in/", "LocalPath": LOCAL_PATH, "S3DataType": "S3Prefix", **s3_input}
    return parse_job({"ProcessingJobName": "j",
                      "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
                                                                "VolumeSizeInGB": 1}},
                      "AppSpecification": {"ImageUri": "img"},
                      "ProcessingInputs": [{"InputName": "raw", "S3Input": fields}],
                      "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
                          "S3Uri": "s3://b/out/", "LocalPath": "/opt/ml/processing/out",
                          "S3UploadMode": "EndOfJob"}}]}}, "job.json")


@pytest.mark.parametrize("fields, words", [
    ({"S3InputMode": "Pipe"}, "ProcessingInputs[0].S3Input.S3InputMode: Pipe is not supported"),
    ({"S3CompressionType": "Gzip"}, "ProcessingInputs[0].S3Input.S3CompressionType: Gzip"),
    ({"S3Uri": "https://example.com/bucket/in/"}, "ProcessingInputs[0].S3Input.S3Uri: https://example.com/bucket/in/"),
    ({"S3Uri": "https://s3.us-east-1.amazonaws.com/"}, "ProcessingInputs[0].S3Input.S3Uri"),
])
def test_what_fleet_cannot_do_is_invalid_input_naming_the_file_and_field(fields, words):
    with pytest.raises(InvalidInput) as caught:
        check_job_data(job_with(**fields), "job.json")
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith("job.json: ")
    assert words in caught.value.message


def test_an_output_uri_fleet_cannot_read_is_invalid_input():
    job = job_with()
    document = job.model_dump(exclude_none=True)
    document["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] = "https://example.com/out/"
    with pytest.raises(InvalidInput, match=r"ProcessingOutputConfig\.Outputs\[0\]\.S3Output\.S3Uri"):
        check_job_data(parse_job(document, "job.json"), "job.json")


def test_a_job_fleet_can_run_passes_the_data_check():
    assert check_job_data(job_with(S3Uri="https://b.s3.us-east-1.amazonaws.com/in/"), "job.json") is None
