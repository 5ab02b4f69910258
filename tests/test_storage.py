"""Tier 1: URL parsing, redaction and the wording of storage errors."""

import pytest

from pipelines.config import PipelineConfig, PreprocessConfig, SourceConfig, StorageConfig
from pipelines.storage import StorageError, explain, redact_url, resolve


def test_s3_url_resolves_to_bucket_path_and_endpoint():
    loc = resolve("s3://bkt/some/prefix/", StorageConfig(endpoint="http://127.0.0.1:9000"))
    assert loc.path == "bkt/some/prefix" and loc.bucket == "bkt"
    assert loc.url == "s3://bkt/some/prefix" and loc.endpoint == "http://127.0.0.1:9000"


def test_local_paths_are_accepted(tmp_path):
    loc = resolve(str(tmp_path))
    assert loc.path == str(tmp_path) and loc.endpoint == "local disk"


def test_endpoint_with_user_info_is_refused_without_echoing_the_secret():
    with pytest.raises(StorageError) as err:
        resolve("s3://b/p", StorageConfig(endpoint="http://user:s3cr3t@127.0.0.1:9000"))
    assert "s3cr3t" not in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)


def test_redact_url_drops_user_info():
    assert redact_url("http://u:p@host:9000/x") == "http://host:9000/x"
    assert redact_url("http://host:9000/x") == "http://host:9000/x"


@pytest.mark.parametrize(
    "message,expected",
    [
        ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7", "cannot reach"),
        ("AWS Error ACCESS_DENIED during HeadBucket operation", "rejected the credentials"),
        ("AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2", "rejected the credentials"),
        ("Bucket 'x' not found.", "bucket 'b' not found"),
    ],
)
def test_aws_errors_become_one_actionable_line(message, expected):
    loc = resolve("s3://b/p", StorageConfig(endpoint="http://127.0.0.1:1"))
    err = explain(OSError(message), loc)
    assert expected in str(err) and "\n" not in str(err)
    assert "http://127.0.0.1:1" in str(err)


def test_unsupported_scheme_and_missing_bucket_are_rejected():
    with pytest.raises(StorageError, match="unsupported URL scheme"):
        resolve("gs://bucket/x")
    with pytest.raises(StorageError, match="names no bucket"):
        resolve("s3:///x")


def test_pipeline_config_validates_its_bounds():
    src = SourceConfig(url="s3://b/p")
    with pytest.raises(ValueError, match="epochs"):
        PipelineConfig(source=src, epochs=0)
    with pytest.raises(ValueError, match="actor pool bounds"):
        PipelineConfig(source=src, preprocess=PreprocessConfig(min_actors=3, max_actors=2))
