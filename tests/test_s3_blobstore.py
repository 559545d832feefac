"""The blob-store protocol on both implementations: the filesystem and S3 (a real
SeaweedFS server); then what only S3 has: multipart uploads, the SHA-256
metadata, addressing styles and its failure modes."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import socket
import time
import uuid
from pathlib import Path

import pytest

from _seaweedfs import (  # noqa: F401 (seaweedfs is a fixture)
    ACCESS_KEY,
    READER_KEY,
    READER_SECRET,
    SECRET_KEY,
    SeaweedS3,
    seaweedfs,
)
from conftest import free_port
from samarkiv.storage.blobstore import BlobStore, BlobStoreError
from samarkiv.storage.filesystem import FilesystemBlobStore

MiB = 1 << 20
LARGE = 20 * MiB  # four 5 MiB parts


def random_bytes(size: int, seed: int = 6) -> bytes:
    return random.Random(seed).randbytes(size)


class ChunkyStream(io.RawIOBase):
    """A non-seekable stream that answers in odd short reads and may fail mid-way
    (a peer that drops the connection)."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise ConnectionResetError("the sender went away")
        count = min(len(buffer), 777_777, len(self._data) - self._pos)
        buffer[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


def staged_file(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / f"{uuid.uuid4().hex}.part"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as f:
        return f.read()


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedS3) -> str:  # noqa: F811
    return seaweedfs.create_bucket()


def s3_store(seaweedfs: SeaweedS3, bucket: str, staging: Path, **options):  # noqa: F811
    from samarkiv.storage.s3 import S3BlobStore, S3Credentials, S3Options

    access = options.pop("access_key", ACCESS_KEY)
    secret = options.pop("secret_key", SECRET_KEY)
    settings = {
        "bucket": bucket,
        "endpoint_url": seaweedfs.endpoint,
        "prefix": f"test-{uuid.uuid4().hex[:8]}",
        "part_size": 5 * MiB,
        "multipart_threshold": 5 * MiB,
        "page_size": 2,
        "max_attempts": 1,
        "connect_timeout": 5,
    } | options
    return S3BlobStore(S3Options(**settings), S3Credentials(access, secret), staging=staging)


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs", tmp_path / "tmp")
    return s3_store(
        request.getfixturevalue("seaweedfs"), request.getfixturevalue("bucket"), tmp_path / "tmp"
    )


@pytest.fixture
def s3(seaweedfs: SeaweedS3, bucket: str, tmp_path: Path):  # noqa: F811
    return s3_store(seaweedfs, bucket, tmp_path / "tmp")


# --- the protocol, on both stores ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, LARGE])
def test_put_file_moves_the_file_in_and_reads_back_identical(store, tmp_path: Path, size: int):
    data = random_bytes(size)
    path, digest = staged_file(tmp_path, data)
    store.put_file("2024/05/06/07/a.dcm", path, digest)
    assert not path.exists()  # moved, not copied
    assert read_all(store, "2024/05/06/07/a.dcm") == data
    info = store.stat("2024/05/06/07/a.dcm")
    assert info is not None and info.key == "2024/05/06/07/a.dcm" and info.size == size
    local = store.local_path("2024/05/06/07/a.dcm")
    if isinstance(store, FilesystemBlobStore):
        assert local is not None and local.read_bytes() == data
    else:
        assert local is None  # nothing to send zero-copy: callers use open()


def test_put_file_without_a_digest_still_works(store, tmp_path: Path):
    data = random_bytes(6 * MiB, seed=2)
    path, _ = staged_file(tmp_path, data)
    store.put_file("k/no-digest", path)
    assert read_all(store, "k/no-digest") == data


@pytest.mark.parametrize("size", [10, LARGE + 12345])
def test_put_stream_hashes_in_the_same_pass(store, size: int):
    data = random_bytes(size, seed=3)
    written = store.put_stream("s/stream.dcm", ChunkyStream(data))
    assert (written.key, written.size) == ("s/stream.dcm", size)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(store, "s/stream.dcm") == data


def test_open_is_seekable_and_open_range_reads_slices(store, tmp_path: Path):
    data = random_bytes(LARGE, seed=4)
    store.put_file("r/large", staged_file(tmp_path, data)[0])
    with store.open("r/large") as f:
        assert f.read(10) == data[:10]
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
        f.seek(12 * MiB)  # a long jump: a new ranged request on S3
        assert f.read(100) == data[12 * MiB : 12 * MiB + 100]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:] and f.tell() == LARGE
        f.seek(3)
        assert f.read(7) == data[3:10]
    boundary = 5 * MiB  # across the first part boundary of the multipart upload
    for start, end in [(0, 1), (100, 200), (boundary - 50, boundary + 50), (LARGE - 5, None)]:
        with store.open_range("r/large", start, end) as f:
            assert f.read() == data[start:end], (start, end)
    with store.open_range("r/large", 7 * MiB, 9 * MiB) as f:  # read in pieces, seek within the window
        assert f.read(MiB) == data[7 * MiB : 8 * MiB]
        f.seek(10)
        assert f.read(5) == data[7 * MiB + 10 : 7 * MiB + 15]
        f.seek(0, io.SEEK_END)
        assert f.tell() == 2 * MiB and f.read() == b""
    for start, end in [(LARGE, None), (LARGE + 10, LARGE + 20), (50, 40), (50, 50)]:
        with store.open_range("r/large", start, end) as f:  # clipped like a slice
            assert f.read() == b"", (start, end)
    with pytest.raises(ValueError):
        store.open_range("r/large", -1, 10)


def test_absent_keys(store):
    for opener in (lambda: store.open("no/such.dcm"), lambda: store.open_range("no/such.dcm", 5, 10)):
        with pytest.raises(FileNotFoundError):
            opener()
    assert store.stat("no/such.dcm") is None
    store.delete("no/such.dcm")  # deleting what is not there is fine


def test_delete_is_idempotent(store):
    store.put_stream("d/gone.dcm", io.BytesIO(b"bye"))
    store.delete("d/gone.dcm")
    store.delete("d/gone.dcm")
    assert store.stat("d/gone.dcm") is None
    with pytest.raises(FileNotFoundError):
        store.open("d/gone.dcm")


def test_list_walks_a_folder_across_pages(store):
    names = [f"2024/01/02/03/{i}.dcm" for i in range(5)] + ["2024/01/02/04/x.dcm", "2024/01/020/y.dcm"]
    for i, name in enumerate(names):
        store.put_stream(name, io.BytesIO(b"x" * (i + 1)))
    requests: list[str] = []
    if not isinstance(store, FilesystemBlobStore):  # count ListObjectsV2 pages (page size 2)
        store._client.meta.events.register(
            "after-call.s3.ListObjectsV2", lambda **kw: requests.append("list")
        )
    hour = sorted(store.list("2024/01/02/03"), key=lambda info: info.key)
    assert [info.key for info in hour] == names[:5]
    assert [info.size for info in hour] == [1, 2, 3, 4, 5]
    assert all(abs(info.mtime - time.time()) < 24 * 3600 for info in hour)
    if requests:
        assert len(requests) == 3  # 5 keys, 2 per page
    # a prefix is a folder: "2024/01/02" does not take in "2024/01/020/"
    assert sorted(info.key for info in store.list("2024/01/02/")) == sorted(names[:6])
    assert sorted(info.key for info in store.list()) == sorted(names)
    assert list(store.list("2030")) == []


def test_stream_failing_mid_way_leaves_nothing(store, tmp_path: Path):
    data = random_bytes(LARGE, seed=5)
    with pytest.raises(ConnectionResetError):
        store.put_stream("f/half.dcm", ChunkyStream(data, fail_after=12 * MiB))
    assert store.stat("f/half.dcm") is None
    assert list(store.list()) == []
    assert [p for p in (tmp_path / "tmp").iterdir()] == []  # no staging or spool leftovers
    if not isinstance(store, FilesystemBlobStore):
        assert store.incomplete_uploads() == []


@pytest.mark.parametrize("key", ["", "/abs.dcm", "a/../../escape.dcm", ".."])
def test_keys_cannot_escape(store, key: str):
    with pytest.raises(ValueError):
        store.put_stream(key, io.BytesIO(b"x"))


# --- S3 only ---------------------------------------------------------------------------------


def test_large_put_file_is_a_multipart_upload_with_sha256_metadata(
    s3, seaweedfs: SeaweedS3, bucket: str, tmp_path: Path  # noqa: F811
):
    data = random_bytes(LARGE, seed=7)
    path, digest = staged_file(tmp_path, data)
    s3.put_file("m/large.dcm", path, digest)
    head = seaweedfs.client().head_object(Bucket=bucket, Key=f"{s3.options.prefix}/m/large.dcm")
    assert head["ETag"].strip('"').endswith("-4")  # four parts of 5 MiB
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-sha256"] == digest
    assert head["ContentType"] == "application/dicom"
    info = s3.stat("m/large.dcm")
    assert info is not None and info.sha256 == digest and info.size == LARGE


def test_sha256_metadata_round_trip_on_single_put_and_stream(s3):
    written = s3.put_stream("m/small.dcm", io.BytesIO(b"DICM" * 100))
    info = s3.stat("m/small.dcm")
    assert info is not None and info.sha256 == written.sha256 == hashlib.sha256(b"DICM" * 100).hexdigest()
    big = s3.put_stream("m/big.bin", ChunkyStream(random_bytes(6 * MiB, seed=8)))
    assert s3.stat("m/big.bin").sha256 == big.sha256
    # what the store keeps beside the object is what fixity re-hashes against
    with s3.open("m/big.bin") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == s3.stat("m/big.bin").sha256


def test_incomplete_uploads_are_seen(s3, seaweedfs: SeaweedS3, bucket: str):  # noqa: F811
    """So that the checks of aborted uploads below are not vacuous."""
    client = seaweedfs.client()
    key = f"{s3.options.prefix}/left/over.dcm"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    assert s3.incomplete_uploads() == ["left/over.dcm"]
    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
    assert s3.incomplete_uploads() == []


@pytest.mark.parametrize("size", [1000, LARGE])
def test_bytes_not_matching_the_digest_are_refused_and_the_upload_aborted(s3, tmp_path: Path, size: int):
    from samarkiv.storage.s3 import BlobIntegrityError

    path, _ = staged_file(tmp_path, random_bytes(size, seed=9))
    with pytest.raises(BlobIntegrityError, match="SHA-256"):
        s3.put_file("i/bad.dcm", path, "0" * 64)  # e.g. the file changed after hashing
    assert path.exists()  # not moved
    assert s3.stat("i/bad.dcm") is None
    assert s3.incomplete_uploads() == []  # the multipart upload (all parts sent) was aborted


def test_a_part_failing_mid_upload_aborts_the_upload(s3, tmp_path: Path):
    """The connection breaks while part 3 of 4 is being sent (after parts went up)."""
    sent: list[str] = []

    def break_part_three(request, **kwargs):  # type: ignore[no-untyped-def]
        if "partNumber=3" in request.url:
            raise ConnectionResetError("connection reset while sending part 3")

    s3._client.meta.events.register("before-send.s3.UploadPart", break_part_three)
    s3._client.meta.events.register("after-call.s3.UploadPart", lambda **kw: sent.append("part"))
    path, digest = staged_file(tmp_path, random_bytes(LARGE, seed=11))
    with pytest.raises(ConnectionResetError):
        s3.put_file("i/broken.dcm", path, digest)
    assert sent  # parts had reached the server
    assert s3.stat("i/broken.dcm") is None
    assert s3.incomplete_uploads() == []
    assert path.exists()  # the caller still has its file


def test_keys_live_under_the_prefix_only(s3, seaweedfs: SeaweedS3, bucket: str):  # noqa: F811
    s3.put_stream("p/one.dcm", io.BytesIO(b"1"))
    listed = seaweedfs.client().list_objects_v2(Bucket=bucket, Prefix=s3.options.prefix + "/")
    assert [item["Key"] for item in listed["Contents"]] == [f"{s3.options.prefix}/p/one.dcm"]
    assert [info.key for info in s3.list()] == ["p/one.dcm"]


def test_virtual_host_addressing(
    seaweedfs: SeaweedS3, bucket: str, tmp_path: Path, monkeypatch  # noqa: F811
):
    """<bucket>.localhost resolves to the loopback address (RFC 6761 6.3); this
    machine's resolver does not know it, so the test resolves *.localhost itself."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    store = s3_store(
        seaweedfs, bucket, tmp_path, endpoint_url=seaweedfs.virtual_host_endpoint, addressing_style="virtual"
    )
    urls: list[str] = []
    store._client.meta.events.register("before-send.s3", lambda request, **kw: urls.append(request.url))
    data = random_bytes(6 * MiB, seed=10)
    store.put_stream("v/host.dcm", io.BytesIO(data))
    assert read_all(store, "v/host.dcm") == data
    assert [info.key for info in store.list()] == ["v/host.dcm"]
    assert urls and all(url.startswith(f"http://{bucket}.localhost:") for url in urls)


def test_wrong_credentials_are_a_clear_error_without_secrets(
    seaweedfs: SeaweedS3, bucket: str, tmp_path: Path, caplog  # noqa: F811
):
    from samarkiv.storage.s3 import BlobStoreAccessDenied

    caplog.set_level(logging.DEBUG)
    wrong_secret = "not-the-secret-" + uuid.uuid4().hex
    stores = [
        s3_store(seaweedfs, bucket, tmp_path, secret_key=wrong_secret),
        s3_store(seaweedfs, bucket, tmp_path, access_key="nobody-" + uuid.uuid4().hex[:6], secret_key=wrong_secret),
    ]
    for store in stores:
        for action in (
            store.check,
            lambda: store.put_stream("c/x.dcm", io.BytesIO(b"x")),
            lambda: store.open("c/x.dcm"),
            lambda: list(store.list()),
        ):
            with pytest.raises(BlobStoreAccessDenied) as failure:
                action()
            message = str(failure.value)
            assert bucket in message and "refused access" in message
            assert wrong_secret not in message and SECRET_KEY not in message
        assert wrong_secret not in repr(store)
    assert not any(wrong_secret in record.getMessage() for record in caplog.records)


def test_rights_are_checked(seaweedfs: SeaweedS3, bucket: str, tmp_path: Path):  # noqa: F811
    from samarkiv.storage.s3 import BlobStoreAccessDenied

    writer = s3_store(seaweedfs, bucket, tmp_path)
    writer.put_stream("rights/x.dcm", io.BytesIO(b"readable"))
    reader = s3_store(
        seaweedfs, bucket, tmp_path, prefix=writer.options.prefix, access_key=READER_KEY, secret_key=READER_SECRET
    )
    assert read_all(reader, "rights/x.dcm") == b"readable"
    with pytest.raises(BlobStoreAccessDenied):
        reader.put_stream("rights/y.dcm", io.BytesIO(b"no"))
    assert writer.stat("rights/y.dcm") is None


def test_missing_bucket_is_a_clear_error(seaweedfs: SeaweedS3, tmp_path: Path):  # noqa: F811
    from samarkiv.storage.s3 import BucketNotFound

    store = s3_store(seaweedfs, "samarkiv-no-such-bucket", tmp_path)
    with pytest.raises(BucketNotFound, match="bucket 'samarkiv-no-such-bucket' does not exist"):
        store.check()
    with pytest.raises(BucketNotFound):
        store.put_stream("b/x.dcm", io.BytesIO(b"x"))
    with pytest.raises(BucketNotFound):
        list(store.list())


def test_unreachable_endpoint_is_a_clear_error(seaweedfs: SeaweedS3, tmp_path: Path):  # noqa: F811
    from samarkiv.storage.s3 import BlobStoreUnavailable

    endpoint = f"http://user:password@127.0.0.1:{free_port()}"  # nothing listens there
    store = s3_store(seaweedfs, "samarkiv-any", tmp_path, endpoint_url=endpoint)
    for action in (store.check, lambda: store.put_stream("u/x", io.BytesIO(b"x")), lambda: store.open("u/x")):
        with pytest.raises(BlobStoreUnavailable, match="cannot reach the S3 endpoint http://127.0.0.1:") as failure:
            action()
        assert "password" not in str(failure.value)
    assert isinstance(failure.value, BlobStoreError) and isinstance(failure.value, OSError)


def test_options_are_checked():
    from samarkiv.storage.s3 import S3Options

    for bad in (
        {"bucket": ""},
        {"bucket": "b", "part_size": MiB},
        {"bucket": "b", "addressing_style": "sideways"},
        {"bucket": "b", "page_size": 5000},
    ):
        with pytest.raises(ValueError):
            S3Options(**bad)
