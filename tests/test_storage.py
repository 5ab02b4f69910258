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


def _flaky(failures: int, error: Exception):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "data"
    return fn, calls


DOWN = OSError("When reading information for key 'k' in bucket 'b': AWS Error NETWORK_CONNECTION "
               "during HeadObject operation: curlCode: 7, Could not connect to server")


def test_store_outages_are_retried_with_growing_backoff():
    from pipelines.storage import retry_transient

    now, sleeps = [0.0], []

    def sleep(s):
        sleeps.append(s)
        now[0] += s
    fn, calls = _flaky(4, DOWN)
    loc = resolve("s3://b/data", StorageConfig(endpoint="http://127.0.0.1:9"))
    assert retry_transient(fn, "s3://b/data/p.parquet", loc, 60, sleep=sleep,
                           clock=lambda: now[0]) == "data"
    assert sleeps == [0.5, 1.0, 2.0, 4.0] and len(calls) == 5


def test_an_outage_past_the_deadline_is_one_clear_error():
    from pipelines.storage import retry_transient

    now, sleeps = [0.0], []

    def sleep(s):
        sleeps.append(s)
        now[0] += s
    fn, _ = _flaky(10**6, DOWN)
    loc = resolve("s3://b/data", StorageConfig(endpoint="http://127.0.0.1:9"))
    with pytest.raises(StorageError, match=r"the object store at http://127.0.0.1:9 has been "
                                           r"unreachable or failing for 30 s \(deadline 30 s\) "
                                           r"while reading s3://b/data/p.parquet"):
        retry_transient(fn, "s3://b/data/p.parquet", loc, 30, sleep=sleep, clock=lambda: now[0])
    assert max(sleeps) == 10.0 and sum(sleeps) == 30.0  # capped backoff, ends at the deadline


@pytest.mark.parametrize("error", [
    OSError("Path does not exist 'b/data/p.parquet'. Detail: [errno 2] No such file"),
    OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"),
    ValueError("not a storage error at all"),
])
def test_errors_waiting_cannot_cure_pass_through_at_once(error):
    from pipelines.storage import retry_transient

    fn, calls = _flaky(1, error)
    loc = resolve("s3://b/data", StorageConfig(endpoint="http://127.0.0.1:9"))
    with pytest.raises(type(error)):
        retry_transient(fn, "x", loc, 30, sleep=lambda s: pytest.fail("slept"))
    assert len(calls) == 1
