"""Settings: the ~/.lambda_s3.env file, the environment over it, checksums, warnings, secrets."""

from __future__ import annotations

import io

import pytest

from rltui.archive.backup import backup_run
from rltui.archive.settings import load_settings, make_client
from rltui.errors import UsageError
from rltui.runs.localfs import Layout

def _settings(tmp_path, text: str, **env: str):
    f = tmp_path / "s3.env"
    f.write_text(text)
    f.chmod(0o600)
    return load_settings({"RLTUI_S3_ENV": str(f), **env})


def test_file_lines_with_export_quotes_and_comments_are_read(tmp_path):
    s = _settings(tmp_path, "# c\n\nexport RLTUI_S3_BUCKET='b1'\nRLTUI_S3_PREFIX=/a/b/ # trailing\n"
                            "AWS_ACCESS_KEY_ID=\"AK\"\nAWS_DEFAULT_REGION=eu-west-1\n")
    assert (s.bucket, s.prefix, s.access_key_id, s.region) == ("b1", "a/b/", "AK", "eu-west-1")


def test_process_environment_overrides_the_file(tmp_path):
    s = _settings(tmp_path, "RLTUI_S3_BUCKET=from-file\nAWS_REGION=eu-west-1\n",
                  RLTUI_S3_BUCKET="from-env")
    assert s.bucket == "from-env" and s.region == "eu-west-1"


def test_endpoint_precedence_s3_specific_over_generic(tmp_path):
    s = _settings(tmp_path, "RLTUI_S3_BUCKET=b\nAWS_ENDPOINT_URL=http://generic\n",
                  AWS_ENDPOINT_URL_S3="http://s3-specific")
    assert s.endpoint_url == "http://s3-specific"
    s = _settings(tmp_path, "RLTUI_S3_BUCKET=b\nAWS_ENDPOINT_URL=http://generic\n")
    assert s.endpoint_url == "http://generic"


def test_missing_bucket_is_exit_2_naming_the_setting(s3):
    s3.settings_file.write_text("AWS_REGION=us-east-1\n")
    proc = s3.cli("--action", "list-backups")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "RLTUI_S3_BUCKET" in proc.stderr


def test_a_named_settings_file_that_does_not_exist_is_exit_2(s3, tmp_path):
    proc = s3.cli("--action", "list-backups", env={**s3.env, "RLTUI_S3_ENV": str(tmp_path / "nope.env")})
    assert proc.returncode == 2 and "RLTUI_S3_ENV" in proc.stderr and "nope.env" in proc.stderr


def test_settings_file_readable_by_others_gets_a_warning(s3):
    s3.settings_file.chmod(0o644)
    proc = s3.cli("--action", "list-backups")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "chmod 600" in proc.stderr and str(s3.settings_file) in proc.stderr
    s3.settings_file.chmod(0o600)
    assert "warning" not in s3.cli("--action", "list-backups").stderr


@pytest.mark.parametrize("key", ["RLTUI_S3_CHECKSUMS", "AWS_REQUEST_CHECKSUM_CALCULATION",
                                 "AWS_RESPONSE_CHECKSUM_VALIDATION"])
def test_bad_checksum_setting_is_exit_2_naming_it(s3, key):
    proc = s3.cli("--action", "list-backups", env={**s3.env, key: "sometimes"})
    assert proc.returncode == 2 and key in proc.stderr and "sometimes" in proc.stderr


def test_checksums_when_required_sends_no_checksum_headers_and_backup_works(s3, make_run):
    """What R2-like stores need: no CRC32 trailer on uploads, no validation on downloads."""
    run = make_run(steps=(1,))
    headers: list[dict[str, str]] = []

    def record(request, **_):
        headers.append({k.lower(): v for k, v in request.headers.items()})

    for mode, expect_checksum in (("when_supported", True), ("when_required", False)):
        headers.clear()
        store = s3.store(RLTUI_S3_CHECKSUMS=mode)
        assert store.client.meta.config.request_checksum_calculation == mode
        assert store.client.meta.config.response_checksum_validation == mode
        store.client.meta.events.register("before-send.s3.PutObject", record)
        store.client.meta.events.register("before-send.s3.UploadPart", record)
        (s3.root / f"training_runs/{run.name}/logs/{mode}.txt").write_text(mode)
        backup_run(Layout(s3.root), store, run.name, out=io.StringIO(), err=io.StringIO())
        sent = any(any(k.startswith("x-amz-checksum-") or k == "x-amz-trailer" for k in h) for h in headers)
        assert headers and sent == expect_checksum


def test_a_malformed_line_is_named_by_number_without_echoing_it(tmp_path):
    with pytest.raises(UsageError) as e:
        _settings(tmp_path, "RLTUI_S3_BUCKET=b\nAWS_SECRET_ACCESS_KEY hunter2-secret-value\n")
    assert ":2:" in str(e.value) and "hunter2" not in str(e.value)


def test_bad_prefix_and_bucket_are_exit_2(tmp_path):
    with pytest.raises(UsageError, match="RLTUI_S3_PREFIX"):
        _settings(tmp_path, "RLTUI_S3_BUCKET=b\nRLTUI_S3_PREFIX=a/../b\n")
    with pytest.raises(UsageError, match="RLTUI_S3_BUCKET"):
        _settings(tmp_path, "RLTUI_S3_BUCKET=b/with/path\n")


def test_client_uses_standard_retries_and_the_configured_concurrency(tmp_path):
    s = _settings(tmp_path, "RLTUI_S3_BUCKET=b\nAWS_REGION=us-east-1\nRLTUI_S3_MAX_CONCURRENCY=16\n"
                            "AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=SK\n")
    client = make_client(s)
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.max_pool_connections >= 16
