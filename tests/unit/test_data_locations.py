"""Where data lives: the S3Uri forms the API accepts, fleet's file:// extension, and the
relative path every object gets under LocalPath. Pure parsing, no I/O."""

from __future__ import annotations

import pytest

from fleet.data.locations import FileLocation, S3Location, parse_location, relative_to_prefix, safe_relative_path
from fleet.errors import ClientError

# -- S3Uri: s3:// ------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, bucket, key", [
    ("s3://bucket/prefix/", "bucket", "prefix/"),
    ("s3://bucket/prefix", "bucket", "prefix"),
    ("s3://bucket/a/b/c.csv", "bucket", "a/b/c.csv"),
    ("s3://my.dotted-bucket/k", "my.dotted-bucket", "k"),
    ("s3://bucket/", "bucket", ""),
    ("s3://bucket", "bucket", ""),
    ("s3://bucket/with space/ü.csv", "bucket", "with space/ü.csv"),
])
def test_s3_uri_names_a_bucket_and_a_key_prefix(uri, bucket, key):
    assert parse_location(uri) == S3Location(bucket, key)


def test_s3_uri_without_a_bucket_is_refused():
    with pytest.raises(ClientError, match="no bucket"):
        parse_location("s3:///key")


# -- S3Uri: the https forms --------------------------------------------------------------------

@pytest.mark.parametrize("uri, bucket, key", [
    ("https://my-bucket.s3.us-west-2.amazonaws.com/path/to/key.csv", "my-bucket", "path/to/key.csv"),
    ("https://my.dotted.bucket.s3.eu-central-1.amazonaws.com/k", "my.dotted.bucket", "k"),
    ("https://bucket.s3.amazonaws.com/prefix/", "bucket", "prefix/"),
    ("https://bucket.s3-us-west-2.amazonaws.com/k", "bucket", "k"),
    ("https://bucket.s3.dualstack.us-east-1.amazonaws.com/k", "bucket", "k"),
    ("https://bucket.s3.cn-north-1.amazonaws.com.cn/k", "bucket", "k"),
    ("https://bucket.s3.us-west-2.amazonaws.com/", "bucket", ""),
    ("https://bucket.s3.us-west-2.amazonaws.com", "bucket", ""),
    ("https://bucket.s3.amazonaws.com/a%20b/c%2Bd", "bucket", "a b/c+d"),
])
def test_virtual_hosted_https_url_names_the_bucket_in_the_host(uri, bucket, key):
    assert parse_location(uri) == S3Location(bucket, key)


@pytest.mark.parametrize("uri, bucket, key", [
    ("https://s3.us-west-2.amazonaws.com/bucket/path/to/key.csv", "bucket", "path/to/key.csv"),
    ("https://s3.amazonaws.com/bucket/prefix/", "bucket", "prefix/"),
    ("https://s3.us-west-2.amazonaws.com/bucket", "bucket", ""),
    ("https://s3-us-west-2.amazonaws.com/bucket/k", "bucket", "k"),
    ("https://s3.cn-north-1.amazonaws.com.cn/bucket/k", "bucket", "k"),
])
def test_path_style_https_url_names_the_bucket_in_the_path(uri, bucket, key):
    assert parse_location(uri) == S3Location(bucket, key)


@pytest.mark.parametrize("uri", [
    "https://s3.us-west-2.amazonaws.com/",
    "https://s3.us-west-2.amazonaws.com",
    "https://example.com/bucket/key",
    "https://bucket.storage.googleapis.com/key",
    "https://amazonaws.com/bucket/key",
])
def test_https_url_that_is_not_an_s3_url_is_refused(uri):
    with pytest.raises(ClientError, match="not an S3 URL") as caught:
        parse_location(uri)
    assert uri in caught.value.message


@pytest.mark.parametrize("uri", ["http://bucket.s3.amazonaws.com/k", "gs://bucket/k", "bucket/key", "",
                                 "S3://bucket/key"])
def test_uri_with_another_scheme_is_refused(uri):
    with pytest.raises(ClientError, match="must start with s3://, https://"):
        parse_location(uri)


def test_the_three_forms_of_one_object_are_the_same_location():
    forms = ["s3://bucket/data/train.csv",
             "https://bucket.s3.us-east-1.amazonaws.com/data/train.csv",
             "https://bucket.s3.amazonaws.com/data/train.csv",
             "https://s3.us-east-1.amazonaws.com/bucket/data/train.csv"]
    assert {parse_location(f) for f in forms} == {S3Location("bucket", "data/train.csv")}


# -- file:// (fleet's extension) ---------------------------------------------------------------

@pytest.mark.parametrize("uri, path", [
    ("file:///data/train", "/data/train"),
    ("file:///data/train/", "/data/train"),
    ("file:///data/./train/../test", "/data/test"),
    ("file:///data/with%20space", "/data/with space"),
    ("file:///", "/"),
])
def test_file_uri_with_an_absolute_path_is_a_controller_path(uri, path):
    assert parse_location(uri) == FileLocation(path)


@pytest.mark.parametrize("uri", ["file://data/train", "file://./data", "file://", "file://localhost/data",
                                 "file://../etc"])
def test_relative_file_uri_is_refused(uri):
    with pytest.raises(ClientError, match="absolute path") as caught:
        parse_location(uri)
    assert uri in caught.value.message


def test_a_location_prints_as_its_uri():
    assert str(S3Location("b", "in/a.csv")) == "s3://b/in/a.csv"
    assert str(FileLocation("/data/x")) == "file:///data/x"


@pytest.mark.parametrize("prefix, relative, key", [
    ("out/", "a/b.txt", "out/a/b.txt"),
    ("out", "a/b.txt", "out/a/b.txt"),
    ("", "a/b.txt", "a/b.txt"),
])
def test_an_object_under_a_prefix_is_joined_with_one_slash(prefix, relative, key):
    assert S3Location("b", prefix).child(relative) == S3Location("b", key)


# -- safe_relative_path ------------------------------------------------------------------------

@pytest.mark.parametrize("relative", [
    "a", "a/b/c.csv", ".hidden", "..a", "a..", "a/..b/c", "...", "with space", "ü/ß.csv", "a\\b", "-rf",
])
def test_a_path_that_stays_inside_local_path_is_kept_as_is(relative):
    assert safe_relative_path(relative, "the object") == relative


@pytest.mark.parametrize("relative", [
    "", "/", "/etc/passwd", "..", "../x", "a/../../x", "a/..", ".", "./a", "a/./b", "a/.",
    "a//b", "a/", "//a", "a\0b",
])
def test_a_path_that_could_land_outside_local_path_is_refused_naming_it(relative):
    with pytest.raises(ClientError, match="would land outside its LocalPath") as caught:
        safe_relative_path(relative, "S3 key s3://b/in/x")
    assert "S3 key s3://b/in/x" in caught.value.message
    assert repr(relative) in caught.value.message


# -- relative_to_prefix ------------------------------------------------------------------------

@pytest.mark.parametrize("key, prefix, relative", [
    ("in/a.csv", "in/", "a.csv"),
    ("in/a.csv", "in", "in/a.csv"),
    ("in/sub/deep/a.csv", "in/", "sub/deep/a.csv"),
    ("in/sub/deep/a.csv", "in/sub", "sub/deep/a.csv"),
    ("in/a.csv", "", "in/a.csv"),
    ("a.csv", "", "a.csv"),
])
def test_an_object_goes_to_its_key_relative_to_the_prefix(key, prefix, relative):
    assert relative_to_prefix(key, prefix) == relative


@pytest.mark.parametrize("key", ["in/a.csv", "a.csv", "in/sub/a.csv"])
def test_a_prefix_naming_one_object_exactly_places_it_under_its_own_name(key):
    assert relative_to_prefix(key, key) == key.rsplit("/", 1)[-1]


@pytest.mark.parametrize("key, prefix", [("in//x", "in/"), ("in//x", "in"), ("in/a//b", "in/"), ("in/../x", "in")])
def test_an_empty_component_after_the_prefix_is_kept_so_that_it_is_refused(key, prefix):
    with pytest.raises(ClientError, match="would land outside"):
        safe_relative_path(relative_to_prefix(key, prefix), f"S3 key s3://b/{key}")


# -- where SageMaker puts an object: its key after the prefix's last '/' -------------------------

@pytest.mark.parametrize("key, prefix, relative", [
    ("data/input.csv", "data/in", "input.csv"),    # a prefix ending mid-name keeps the whole name
    ("data/in/a", "data/in", "in/a"),              # ... and the directory it names
    ("data/in/a", "data/in/", "a"),
    ("data/in/sub/a", "data/in/s", "sub/a"),
    ("in/sub/train.csv.bak", "in/sub/train.csv", "train.csv.bak"),
    ("input.csv", "in", "input.csv"),              # a prefix without '/': the key itself
])
def test_a_prefix_ending_mid_name_keeps_the_rest_of_the_name(key, prefix, relative):
    assert relative_to_prefix(key, prefix) == relative


# -- messages: the forms fleet takes --------------------------------------------------------------

@pytest.mark.parametrize("uri", ["https://example.com/bucket/key", "gs://bucket/k"])
def test_an_uri_fleet_cannot_read_names_every_form_it_takes(uri):
    with pytest.raises(ClientError) as caught:
        parse_location(uri)
    for form in ("s3://bucket/prefix", "https://bucket.s3.region.amazonaws.com/prefix",
                 "https://s3.region.amazonaws.com/bucket/prefix", "file:///absolute/path"):
        assert form in caught.value.message
