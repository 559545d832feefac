"""A blob store on S3-compatible object storage (AWS S3, SeaweedFS, Ceph RGW, MinIO).

Durability: an object exists only once PutObject or CompleteMultipartUpload
has succeeded; a multipart upload that fails is aborted (AbortMultipartUpload),
so a key names a whole object or nothing.

Integrity: every PutObject and UploadPart carries Content-MD5 (RFC 1864), which
the server checks; the object's SHA-256 travels as user metadata
(``x-amz-meta-sha256``), so fixity can be checked without the index, and an
upload whose bytes do not hash to the SHA-256 the caller computed is refused.

Credentials are passed in by the caller (see ``tiers.py``: from the
environment only) and appear in no message, log line or repr.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from .blobstore import CHUNK, BlobInfo, BlobStoreError, ByteWindow, Written

log = logging.getLogger(__name__)

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3 multipart limits: every part but the last >= 5 MiB,
MAX_PARTS = 10_000  # at most 10,000 parts
SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
ADDRESSING_STYLES = ("path", "virtual", "auto")
_SHORT_SKIP = 256 * 1024  # a forward seek shorter than this reads on instead of re-requesting


class BucketNotFound(BlobStoreError):
    """The configured bucket does not exist at the endpoint."""


class BlobStoreAccessDenied(BlobStoreError):
    """The object store refused the credentials (wrong key, secret or rights)."""


class BlobStoreUnavailable(BlobStoreError):
    """The object store could not be reached (network, DNS, TLS, timeout)."""


class BlobIntegrityError(BlobStoreError):
    """Bytes sent or read do not match their checksum; nothing was stored."""


@dataclass(frozen=True)
class S3Credentials:
    """An access key pair (and optional session token); the secret is never shown."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class S3Options:
    """Where and how to keep objects; everything but the credentials."""

    bucket: str
    endpoint_url: str | None = None  # None: AWS S3 itself
    prefix: str = ""  # keys are stored as <prefix>/<key>
    region: str = "us-east-1"
    addressing_style: str = "path"  # path: host/bucket/key; virtual: bucket.host/key
    part_size: int = 8 * MiB
    multipart_threshold: int = 16 * MiB  # larger objects go up in parts
    upload_concurrency: int = 4  # parts in flight per multipart upload
    page_size: int = 1000  # keys per ListObjectsV2 request
    storage_class: str | None = None  # e.g. STANDARD_IA for a long-term tier on AWS
    verify_tls: bool | str = True  # or the path of a CA bundle
    connect_timeout: float = 10
    read_timeout: float = 60
    max_attempts: int = 3  # per request, with the SDK's standard back-off
    max_pool_connections: int = 32

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("an S3 bucket name is required")
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(f"addressing style must be one of {', '.join(ADDRESSING_STYLES)}")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part size must be at least {MIN_PART_SIZE // MiB} MiB (an S3 limit)")
        if self.multipart_threshold < 1:
            raise ValueError("multipart threshold must be positive")
        if not 1 <= self.page_size <= 1000:
            raise ValueError("page size must be between 1 and 1000 (an S3 limit)")
        if self.upload_concurrency < 1 or self.max_attempts < 1 or self.max_pool_connections < 1:
            raise ValueError("upload concurrency, attempts and pool size must be at least 1")


def _public_url(url: str | None) -> str:
    """The endpoint without any user:password part, fit for messages."""
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _content_md5(data: bytes) -> str:
    """The Content-MD5 header value (RFC 1864: base64 of the binary digest)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at the end of ``stream`` (short reads tolerated)."""
    chunks: list[bytes] = []
    wanted = size
    while wanted > 0:
        chunk = stream.read(wanted)
        if not chunk:
            break
        chunks.append(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


def _content_type(key: str) -> str:
    return "application/dicom" if key.endswith(".dcm") else "application/octet-stream"


_T = TypeVar("_T")
_AUTH_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_DIGEST_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"}
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError)
_STREAM_BROKEN = (ResponseStreamingError, ReadTimeoutError, IncompleteReadError, ConnectionClosedError)


class S3BlobStore:
    """Objects in one bucket under a key prefix, through boto3's S3 client."""

    def __init__(
        self, options: S3Options, credentials: S3Credentials, staging: Path | None = None
    ) -> None:
        self.options = options
        # Large put_stream bodies are spooled here first (their SHA-256 must be
        # known before the upload starts: it travels in the request headers).
        self.staging = Path(staging) if staging is not None else Path(tempfile.gettempdir())
        self.staging.mkdir(parents=True, exist_ok=True)
        prefix = options.prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._endpoint = _public_url(options.endpoint_url)
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=options.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            verify=options.verify_tls,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": options.addressing_style},
                connect_timeout=options.connect_timeout,
                read_timeout=options.read_timeout,
                retries={"mode": "standard", "max_attempts": options.max_attempts},
                max_pool_connections=options.max_pool_connections,
                # Content-MD5 is sent on every upload instead of the SDK's CRC
                # trailers, which not every S3-compatible server accepts.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # The tier configuration is the only source of the endpoint.
                ignore_configured_endpoint_urls=True,
            ),
        )

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.options.bucket!r}, endpoint={self._endpoint!r}, prefix={self._prefix!r})"

    # --- errors ------------------------------------------------------------------------

    def _error(self, exc: Exception, operation: str, key: str | None) -> Exception:
        """A readable exception for a failed request; never the server's text (it
        can echo signing details), never credentials."""
        bucket = self.options.bucket
        what = f"blob {key!r}" if key else f"bucket {bucket!r}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND_CODES and key is not None:
                return FileNotFoundError(f"no {what} in S3 bucket {bucket!r} at {self._endpoint}")
            if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and key is None):
                return BucketNotFound(f"S3 bucket {bucket!r} does not exist at {self._endpoint}")
            if code in _AUTH_CODES or status == 403:
                return BlobStoreAccessDenied(
                    f"S3 at {self._endpoint} refused access to bucket {bucket!r} ({code}): check the "
                    "access key and secret in the environment (SAMARKIV_S3_* or AWS_*)"
                )
            if code in _DIGEST_CODES:
                return BlobIntegrityError(
                    f"S3 {operation} of {what}: the server received other bytes than were sent ({code})"
                )
            return BlobStoreError(
                f"S3 {operation} of {what} at {self._endpoint} failed: {code or 'error'} (HTTP {status})"
            )
        if isinstance(exc, _UNREACHABLE):
            return BlobStoreUnavailable(
                f"cannot reach the S3 endpoint {self._endpoint} ({type(exc).__name__})"
            )
        return BlobStoreError(
            f"S3 {operation} of {what} at {self._endpoint} failed ({type(exc).__name__})"
        )

    def _call(self, operation: str, key: str | None, call: Callable[..., _T], **kwargs: Any) -> _T:
        try:
            return call(Bucket=self.options.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, operation, key) from None

    def _object_key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self._prefix + key

    # --- writing -------------------------------------------------------------------------

    def check(self) -> None:
        """Fail now, with a clear message, if the bucket is missing, the
        credentials are refused or the endpoint cannot be reached."""
        self._call("HeadBucket", None, self._client.head_bucket)

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        """Upload the file at ``path`` under ``key`` and remove it (a move).

        Durable once this returns (the PUT or CompleteMultipartUpload succeeded).
        With ``sha256`` given, bytes that do not hash to it are refused."""
        path = Path(path)
        size = path.stat().st_size
        if size <= self.options.multipart_threshold:
            self._put_single(key, path.read_bytes(), sha256)
        else:
            with open(path, "rb") as f:
                if sha256 is None:
                    sha256 = hashlib.file_digest(f, "sha256").hexdigest()
                    f.seek(0)
                self._put_multipart(key, f, size, sha256)
        path.unlink(missing_ok=True)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Each object is one PUT (S3 acknowledges a PUT only once it is durable),
        ``upload_concurrency`` at a time; the first failure is raised once all
        PUTs have ended (the caller commits nothing, so what did go up is
        simply written again by the retry)."""
        if len(items) <= 1 or self.options.upload_concurrency <= 1:
            for key, data in items:
                self._put_single(key, data, hashlib.sha256(data).hexdigest())
            return
        with ThreadPoolExecutor(self.options.upload_concurrency, thread_name_prefix="s3-put") as pool:
            futures = [pool.submit(self._put_single, key, data, hashlib.sha256(data).hexdigest()) for key, data in items]
        for future in futures:
            future.result()

    def put_stream(self, key: str, stream: BinaryIO) -> Written:
        """Upload ``stream`` under ``key``, hashing it in the same pass.

        Bodies above the multipart threshold are spooled to an anonymous file
        in ``staging`` first, because S3 takes the SHA-256 metadata before the
        body; a stream that fails mid-way uploads nothing."""
        threshold = self.options.multipart_threshold
        head = _read_up_to(stream, threshold + 1)
        if len(head) <= threshold:
            digest = hashlib.sha256(head).hexdigest()
            self._put_single(key, head, digest)
            return Written(key, len(head), digest)
        with tempfile.TemporaryFile(dir=self.staging) as spool:
            hasher = hashlib.sha256(head)
            spool.write(head)
            size = len(head)
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
                spool.write(chunk)
                size += len(chunk)
            spool.seek(0)
            digest = hasher.hexdigest()
            self._put_multipart(key, spool, size, digest)  # type: ignore[arg-type]
        return Written(key, size, digest)

    def _put_single(self, key: str, data: bytes, sha256: str | None) -> None:
        actual = hashlib.sha256(data).hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise BlobIntegrityError(f"blob {key!r} does not match its SHA-256; nothing was stored")
        self._call(
            "PutObject",
            key,
            self._client.put_object,
            Key=self._object_key(key),
            Body=data,
            ContentMD5=_content_md5(data),
            ContentType=_content_type(key),
            Metadata={SHA256_METADATA: actual},
            **self._storage_class(),
        )

    def _storage_class(self) -> dict[str, str]:
        return {"StorageClass": self.options.storage_class} if self.options.storage_class else {}

    def _part_size_for(self, size: int) -> int:
        """The configured part size, grown (to whole MiB) when 10,000 parts would not hold ``size``."""
        needed = -(-size // MAX_PARTS)
        return max(self.options.part_size, -(-needed // MiB) * MiB)

    def _put_multipart(self, key: str, source: BinaryIO, size: int, sha256: str) -> None:
        """Multipart upload of ``size`` bytes from ``source``; aborted on any failure."""
        object_key = self._object_key(key)
        upload = self._call(
            "CreateMultipartUpload",
            key,
            self._client.create_multipart_upload,
            Key=object_key,
            ContentType=_content_type(key),
            Metadata={SHA256_METADATA: sha256.lower()},
            **self._storage_class(),
        )
        upload_id = upload["UploadId"]
        part_size = self._part_size_for(size)
        hasher = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        pool = ThreadPoolExecutor(self.options.upload_concurrency, thread_name_prefix="s3-part")
        in_flight: deque[Future[dict[str, Any]]] = deque()
        try:
            number = 0
            while chunk := _read_up_to(source, part_size):
                hasher.update(chunk)
                number += 1
                in_flight.append(pool.submit(self._upload_part, key, upload_id, number, chunk))
                if len(in_flight) >= self.options.upload_concurrency:
                    parts.append(in_flight.popleft().result())
            while in_flight:
                parts.append(in_flight.popleft().result())
            if hasher.hexdigest() != sha256.lower():
                raise BlobIntegrityError(
                    f"blob {key!r} does not match its SHA-256 (changed while uploading?); nothing was stored"
                )
            self._call(
                "CompleteMultipartUpload",
                key,
                self._client.complete_multipart_upload,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Parts still running must finish before the abort, or one could
            # land after it and keep the upload alive.
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(key, object_key, upload_id)
            raise
        finally:
            pool.shutdown(wait=True)

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        response = self._call(
            "UploadPart",
            key,
            self._client.upload_part,
            Key=self._object_key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=_content_md5(data),
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _abort(self, key: str, object_key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(
                Bucket=self.options.bucket, Key=object_key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "could not abort the failed multipart upload of blob %r (%s); a bucket rule "
                "AbortIncompleteMultipartUpload removes such leftovers",
                key,
                self._error(exc, "AbortMultipartUpload", key),
            )

    def incomplete_uploads(self, prefix: str = "") -> list[str]:
        """Keys (under our prefix) of multipart uploads begun and neither completed nor aborted."""
        found: list[str] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(
                Bucket=self.options.bucket, Prefix=self._folder(prefix)
            ):
                found.extend(upload["Key"][len(self._prefix) :] for upload in page.get("Uploads", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "ListMultipartUploads", None) from None
        return found

    # --- reading ---------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        return self.open_range(key, 0, None)

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        if start < 0 or (end is not None and end < 0):
            raise ValueError("byte positions must not be negative")
        raw = S3ObjectReader(self, key, start, end)
        return io.BufferedReader(raw, CHUNK)  # type: ignore[return-value]

    def _get(self, key: str, first: int, last: int | None, etag: str | None) -> dict[str, Any]:
        """GetObject of bytes ``first..last`` (inclusive, RFC 9110 14.1.2); ``etag``
        pins the object a reader began with (If-Match, RFC 9110 13.1.1)."""
        kwargs: dict[str, Any] = {"Key": self._object_key(key)}
        if first > 0 or last is not None:
            kwargs["Range"] = f"bytes={first}-{'' if last is None else last}"
        if etag is not None:
            kwargs["IfMatch"] = etag
        return self._client.get_object(Bucket=self.options.bucket, **kwargs)

    def local_path(self, key: str) -> Path | None:
        return None

    def stat(self, key: str) -> BlobInfo | None:
        """HeadObject: size, modification time and the stored SHA-256."""
        try:
            head = self._call("HeadObject", key, self._client.head_object, Key=self._object_key(key))
        except FileNotFoundError:
            return None
        return BlobInfo(
            key,
            int(head["ContentLength"]),
            head["LastModified"].timestamp(),
            head.get("Metadata", {}).get(SHA256_METADATA),
        )

    def _folder(self, prefix: str) -> str:
        prefix = prefix.strip("/")
        return self._prefix + (f"{prefix}/" if prefix else "")

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """ListObjectsV2, page by page (``page_size`` keys per request)."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.options.bucket,
            Prefix=self._folder(prefix),
            PaginationConfig={"PageSize": self.options.page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield BlobInfo(
                        item["Key"][len(self._prefix) :],
                        int(item["Size"]),
                        item["LastModified"].timestamp(),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "ListObjectsV2", None) from None

    def delete(self, key: str) -> None:
        """DeleteObject; deleting an absent key is not an error."""
        try:
            self._call("DeleteObject", key, self._client.delete_object, Key=self._object_key(key))
        except FileNotFoundError:
            pass

    def clear_staging(self) -> list[Path]:
        """Nothing to clear: spool files are anonymous and vanish with their process."""
        return []


class S3ObjectReader(ByteWindow):
    """Bytes ``[start, end)`` of one object (clipped to its size), streamed by GET.

    The first request is made at once (a missing object raises
    FileNotFoundError here, as ``open`` does on a filesystem). A seek drops the
    response and the next read asks for a new range of the same object version
    (If-Match on its ETag); a broken connection mid-read is resumed the same way.
    """

    def __init__(self, store: S3BlobStore, key: str, start: int, end: int | None) -> None:
        self._store = store
        self._key = key
        self._body: Any = None
        self._pos = 0
        empty = end is not None and end <= start
        response = None if empty else self._request(start, None if end is None else end - 1, None)
        if response is None:  # an empty window, or a start past the end: the size from HEAD
            info = store.stat(key)
            if info is None:
                raise FileNotFoundError(f"no blob {key!r} in S3 bucket {store.options.bucket!r}")
            size = info.size
            self._etag = None
        else:
            size = _object_size(response)
            self._etag = response.get("ETag")
            self._body = response["Body"]
        self._start = min(start, size)
        self._end = max(self._start, size if end is None else min(end, size))

    def _request(self, first: int, last: int | None, etag: str | None) -> dict[str, Any] | None:
        try:
            return self._store._get(self._key, first, last, etag)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":
                return None
            if code in ("PreconditionFailed", "412"):
                raise BlobStoreError(f"blob {self._key!r} changed while it was being read") from None
            raise self._store._error(exc, "GetObject", self._key) from None
        except BotoCoreError as exc:
            raise self._store._error(exc, "GetObject", self._key) from None

    def _reopen(self) -> None:
        self._drop()
        response = self._request(self._start + self._pos, self._end - 1, self._etag)
        if response is None:
            raise BlobStoreError(f"blob {self._key!r} is shorter than when it was opened")
        self._body = response["Body"]

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        count = self._wanted(len(buffer))
        if count <= 0:
            return 0
        for attempt in range(3):
            if self._body is None:
                self._reopen()
            try:
                data = self._body.read(count)
            except _STREAM_BROKEN:
                self._drop()
                if attempt == 2:
                    raise BlobStoreUnavailable(
                        f"reading blob {self._key!r} from S3 failed three times"
                    ) from None
                continue
            if not data:
                self._drop()
                continue
            buffer[: len(data)] = data
            self._pos += len(data)
            return len(data)
        raise BlobStoreUnavailable(f"S3 ended blob {self._key!r} early")

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = self._seek_target(offset, whence)
        skip = target - self._pos
        if self._body is not None and 0 < skip <= _SHORT_SKIP and target <= self._end - self._start:
            while self._pos < target and self.read(target - self._pos):
                pass
        elif skip != 0:
            self._drop()
            self._pos = target
        return self._pos

    def close(self) -> None:
        if getattr(self, "_body", None) is not None:
            self._drop()
        super().close()


def _object_size(response: dict[str, Any]) -> int:
    """The whole object's size: from Content-Range (RFC 9110 14.4) on a ranged answer."""
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return int(response["ContentLength"])
