"""Storage tiers in the config file: parsing, checking, credentials from the
environment only, and blob stores built from them (S3 on a real SeaweedFS)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from _seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedS3, seaweedfs  # noqa: F401 (fixture)
from samarkiv.config import ConfigError, load_settings
from samarkiv.storage.filesystem import FilesystemBlobStore
from samarkiv.storage.tiers import (
    DEFAULT_TIER_NAME,
    TierSpec,
    open_tier,
    open_tiers,
    parse_tiers,
    s3_credentials,
)

MiB = 1 << 20

TWO_TIERS = """
[[tiers]]
name = "short"
path = "/ssd/samarkiv"

[[tiers]]
name = "long"
kind = "s3"
endpoint = "https://s3.example.org:9000"
bucket = "archive"
prefix = "long/"
region = "eu-north-1"
addressing = "virtual"
part_size_mib = 16
multipart_threshold_mib = 64
storage_class = "STANDARD_IA"
"""


def settings_from(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    config = tmp_path / "samarkiv.toml"
    config.write_text(text)
    return load_settings(config)


def test_no_tiers_means_one_filesystem_tier_in_the_data_folder(tmp_path: Path):
    settings = load_settings(data=str(tmp_path))
    assert settings.tiers == ()
    stores = open_tiers(settings.tiers, settings.data)
    assert list(stores) == [DEFAULT_TIER_NAME]
    store = stores[DEFAULT_TIER_NAME]
    assert isinstance(store, FilesystemBlobStore)
    assert (store.root, store.staging) == (tmp_path / "blobs", tmp_path / "tmp")  # the layout as before


def test_tiers_are_read_from_the_config_file_in_order(tmp_path: Path):
    settings = settings_from(tmp_path, TWO_TIERS)
    short, long = settings.tiers
    assert (short.name, short.kind, short.path) == ("short", "filesystem", Path("/ssd/samarkiv"))
    assert (long.name, long.kind) == ("long", "s3")
    s3 = long.s3
    assert s3 is not None
    assert (s3.endpoint_url, s3.bucket, s3.prefix, s3.region) == (
        "https://s3.example.org:9000", "archive", "long/", "eu-north-1"
    )  # fmt: skip
    assert s3.addressing_style == "virtual" and s3.storage_class == "STANDARD_IA"
    assert (s3.part_size, s3.multipart_threshold) == (16 * MiB, 64 * MiB)
    assert s3.page_size == 1000 and s3.max_attempts == 3  # defaults


def test_the_environment_does_not_replace_tiers(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SAMARKIV_TIERS", "nonsense")
    assert settings_from(tmp_path, TWO_TIERS).tiers[0].name == "short"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[tiers]]\nname = "a"\n[[tiers]]\nname = "a"\n', "used twice: a"),
        ('[[tiers]]\nname = "Long Term"\n', "tier name 'Long Term'"),
        ('[[tiers]]\npath = "/x"\n', "tier name None"),
        ('[[tiers]]\nname = "t"\nkind = "tape"\n', "kind must be 'filesystem' or 's3'"),
        ('[[tiers]]\nname = "t"\ncolour = "blue"\n', "unknown setting.*colour"),
        ('[[tiers]]\nname = "t"\nkind = "s3"\nendpoint = "http://h"\n', "needs a bucket"),
        ('[[tiers]]\nname = "t"\nkind = "s3"\nbucket = "b"\nbukket = "c"\n', "unknown setting.*bukket"),
        ('[[tiers]]\nname = "t"\nkind = "s3"\nbucket = "b"\npart_size_mib = 1\n', "at least 5 MiB"),
        ('[[tiers]]\nname = "t"\nkind = "s3"\nbucket = "b"\npart_size_mib = "big"\n', "tier 't'"),
        ('[[tiers]]\nname = "t"\nkind = "s3"\nbucket = "b"\naddressing = "sideways"\n', "addressing style"),
        ('tiers = "short"\n', "list of"),
    ],
)
def test_bad_tiers_are_clear_errors(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        settings_from(tmp_path, text)


@pytest.mark.parametrize("key", ["secret_access_key", "access_key_id", "aws_secret", "session_token"])
def test_credentials_in_the_config_file_are_refused_without_echoing_them(tmp_path: Path, key: str):
    text = f'[[tiers]]\nname = "long"\nkind = "s3"\nbucket = "b"\n{key} = "hunter2-very-secret"\n'
    with pytest.raises(ConfigError, match="environment only") as failure:
        settings_from(tmp_path, text)
    assert "hunter2" not in str(failure.value)
    assert "SAMARKIV_S3_LONG_ACCESS_KEY_ID" in str(failure.value)


def test_credentials_come_from_the_environment_most_specific_first():
    env = {
        "AWS_ACCESS_KEY_ID": "aws-key",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "SAMARKIV_S3_ACCESS_KEY_ID": "samarkiv-key",
        "SAMARKIV_S3_SECRET_ACCESS_KEY": "samarkiv-secret",
        "SAMARKIV_S3_OFF_SITE_ACCESS_KEY_ID": "replica-key",
        "SAMARKIV_S3_OFF_SITE_SECRET_ACCESS_KEY": "replica-secret",
        "SAMARKIV_S3_OFF_SITE_SESSION_TOKEN": "replica-token",
    }
    replica = s3_credentials("off-site", env)
    assert (replica.access_key_id, replica.secret_access_key, replica.session_token) == (
        "replica-key", "replica-secret", "replica-token"
    )  # fmt: skip
    assert "replica-secret" not in repr(replica) and "replica-token" not in repr(replica)
    assert s3_credentials("long", env).access_key_id == "samarkiv-key"
    aws_only = {k: v for k, v in env.items() if k.startswith("AWS_")}
    assert s3_credentials("long", aws_only).secret_access_key == "aws-secret"


def test_missing_or_half_credentials_are_clear_errors():
    with pytest.raises(ConfigError, match="no S3 credentials.*SAMARKIV_S3_LONG_ACCESS_KEY_ID"):
        s3_credentials("long", {})
    with pytest.raises(ConfigError, match="SAMARKIV_S3_SECRET_ACCESS_KEY is set but SAMARKIV_S3_ACCESS_KEY_ID is not"):
        s3_credentials("long", {"SAMARKIV_S3_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "a"})
    with pytest.raises(ConfigError) as failure:
        s3_credentials("long", {"AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert "s3cr3t" not in str(failure.value)


def test_filesystem_tier_folders(tmp_path: Path):
    relative, absolute = parse_tiers([{"name": "short", "path": "fast"}, {"name": "second", "path": str(tmp_path / "nas")}])
    fast = open_tier(relative, tmp_path / "data")
    nas = open_tier(absolute, tmp_path / "data")
    assert isinstance(fast, FilesystemBlobStore) and isinstance(nas, FilesystemBlobStore)
    assert (fast.root, fast.staging) == (tmp_path / "data" / "fast" / "blobs", tmp_path / "data" / "fast" / "tmp")
    assert (nas.root, nas.staging) == (tmp_path / "nas" / "blobs", tmp_path / "nas" / "tmp")
    written = nas.put_stream("2024/01/01/00/x.dcm", io.BytesIO(b"on the second disk"))
    assert (tmp_path / "nas" / "blobs" / written.key).read_bytes() == b"on the second disk"


def test_an_s3_tier_from_the_config_file_stores_on_a_real_server(
    tmp_path: Path, seaweedfs: SeaweedS3  # noqa: F811
):
    bucket = seaweedfs.create_bucket("tiers")
    settings = settings_from(
        tmp_path,
        f'[[tiers]]\nname = "short"\n\n[[tiers]]\nname = "long"\nkind = "s3"\n'
        f'endpoint = "{seaweedfs.endpoint}"\nbucket = "{bucket}"\nprefix = "long"\n'
        'part_size_mib = 5\nmultipart_threshold_mib = 5\n',
    )
    env = {"SAMARKIV_S3_LONG_ACCESS_KEY_ID": ACCESS_KEY, "SAMARKIV_S3_LONG_SECRET_ACCESS_KEY": SECRET_KEY}
    stores = open_tiers(settings.tiers, tmp_path / "data", env)
    assert list(stores) == ["short", "long"]
    long = stores["long"]
    long.check()  # type: ignore[attr-defined]
    data = bytes(range(256)) * (24 * 1024)  # 6 MiB: a multipart upload
    written = long.put_stream("2024/01/01/00/y.dcm", io.BytesIO(data))
    with long.open(written.key) as f:
        assert f.read() == data
    assert long.stat(written.key).sha256 == written.sha256  # type: ignore[union-attr]
    assert SECRET_KEY not in repr(long)
    head = seaweedfs.client().head_object(Bucket=bucket, Key=f"long/{written.key}")
    assert head["ContentLength"] == len(data)


def test_an_s3_tier_without_credentials_is_a_config_error(tmp_path: Path):
    (spec,) = parse_tiers([{"name": "long", "kind": "s3", "bucket": "b", "endpoint": "http://127.0.0.1:9"}])
    assert isinstance(spec, TierSpec)
    with pytest.raises(ConfigError, match="no S3 credentials"):
        open_tier(spec, tmp_path, env={})
