"""Offsite copies to S3-compatible storage (boto3): the S3Remote that agent.backups.offsite
drives."""

from __future__ import annotations

import base64
import configparser
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.backups import IntegrityError
from agent.backups.offsite import (
    CHUNK,
    MANIFEST,
    OffsiteError,
    describe,
)
from agent.playbook.models.backups import S3Target

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MULTIPART_THRESHOLD = 4 << 30  # a single PUT may carry 5 GiB; past this, multipart
PART_SIZE = 256 << 20


def _s3_credentials(t: S3Target) -> tuple[str | None, str | None, str | None]:
    if t.access_key_env and t.secret_key_env:
        names = (t.access_key_env, t.secret_key_env)
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            raise OffsiteError(f"s3: environment variable {', '.join(missing)} is not set "
                               "(named by access_key_env/secret_key_env)")
        return os.environ[names[0]], os.environ[names[1]], None
    if t.credentials_file:
        path = Path(t.credentials_file).expanduser()
        cp = configparser.ConfigParser()
        try:
            with path.open() as f:
                cp.read_file(f)
        except (OSError, configparser.Error) as e:
            raise OffsiteError(f"s3: cannot read credentials_file {path}: {e}") from None
        sec = cp["default"] if cp.has_section("default") else None
        key = sec.get("aws_access_key_id") if sec else None
        secret = sec.get("aws_secret_access_key") if sec else None
        if not key or not secret:
            raise OffsiteError(f"s3: {path} needs aws_access_key_id and aws_secret_access_key "
                               "in its [default] section")
        return key, secret, sec.get("aws_session_token") if sec else None
    return None, None, None


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


_MISSING = ("404", "NoSuchKey", "NotFound")
_NO_CHECKSUMS = ("NotImplemented", "InvalidArgument", "InvalidRequest")


class S3Remote:
    """A bucket (and prefix) in S3 or an S3-compatible store."""

    def __init__(self, t: S3Target) -> None:
        import boto3
        from botocore.config import Config

        self.t = t
        self.url = describe(t)
        self.prefix = t.prefix.strip("/")
        self.checksums = True  # cleared when the store refuses x-amz-checksum-sha256
        key, secret, token = _s3_credentials(t)
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                        aws_session_token=token, region_name=t.region)
        with self._guard("setting up the client"):
            self.s3: S3Client = session.client("s3", endpoint_url=t.endpoint_url, config=Config(
                connect_timeout=t.timeout, read_timeout=t.timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path" if t.endpoint_url else "auto"}))

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            raise OffsiteError(f"{self.url} ({doing}): {err.get('Code', '?')}: "
                               f"{err.get('Message', e)}") from None
        except (BotoCoreError, OSError) as e:
            raise OffsiteError(f"{self.url} ({doing}): {e}") from None

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def list_dirs(self, rel: str) -> list[str]:
        start = self._key(rel) + "/"
        out = []
        with self._guard(f"listing {rel}"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.t.bucket, Prefix=start, Delimiter="/")
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    name = cp.get("Prefix", "")[len(start):].rstrip("/")
                    if name and not name.startswith("."):
                        out.append(name)
        return sorted(out)

    def _missing(self, e: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in _MISSING

    def read(self, rel: str) -> bytes | None:
        with self._guard(f"reading {rel}"):
            try:
                obj = self.s3.get_object(Bucket=self.t.bucket, Key=self._key(rel))
            except Exception as e:
                if self._missing(e):
                    return None
                raise
            return obj["Body"].read()

    def sha256(self, rel: str, read_back: bool = False) -> str | None:
        """The object's SHA-256: the store's full-object checksum, else read back and hashed."""
        key = self._key(rel)
        with self._guard(f"checking {rel}"):
            try:
                head = self.s3.head_object(Bucket=self.t.bucket, Key=key, ChecksumMode="ENABLED")
            except Exception as e:
                if self._missing(e):
                    return None
                raise
            stored = head.get("ChecksumSHA256")
            # a multipart object's checksum ("...-N", and its ETag "...-N") is of its parts
            multipart = "-" in (stored or "") or "-" in head.get("ETag", "")
            if stored and not multipart and not read_back:
                return base64.b64decode(stored).hex()
            h = hashlib.sha256()
            body = self.s3.get_object(Bucket=self.t.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(CHUNK):
                h.update(chunk)
            return h.hexdigest()

    def _put(self, local: Path, key: str, sha256: str, size: int) -> None:
        from botocore.exceptions import ClientError

        with local.open("rb") as f:
            try:
                if self.checksums:
                    self.s3.put_object(Bucket=self.t.bucket, Key=key, Body=f, ContentLength=size,
                                       ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256))
                    return
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code == "BadDigest":
                    raise IntegrityError(f"{self.url}{key}: the store received bytes whose "
                                         f"sha256 is not {sha256}") from None
                if code not in _NO_CHECKSUMS:
                    raise
                self.checksums = False
                f.seek(0)
            self.s3.put_object(Bucket=self.t.bucket, Key=key, Body=f, ContentLength=size)

    def _multipart(self, local: Path, key: str, size: int) -> None:
        part_size = max(PART_SIZE, -(-size // 10000))
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if self.checksums else {}
        up = self.s3.create_multipart_upload(Bucket=self.t.bucket, Key=key, **extra)
        parts: list[Any] = []
        try:
            with local.open("rb") as f:
                while data := f.read(part_size):
                    part: dict[str, Any] = {"PartNumber": len(parts) + 1}
                    if self.checksums:
                        part["ChecksumSHA256"] = _b64(hashlib.sha256(data).hexdigest())
                    r = self.s3.upload_part(Bucket=self.t.bucket, Key=key, Body=data,
                                            UploadId=up["UploadId"], **part)
                    parts.append({**part, "ETag": r["ETag"]})
            self.s3.complete_multipart_upload(Bucket=self.t.bucket, Key=key,
                                              UploadId=up["UploadId"],
                                              MultipartUpload={"Parts": parts})
        except BaseException:
            with suppress(Exception):
                self.s3.abort_multipart_upload(Bucket=self.t.bucket, Key=key,
                                               UploadId=up["UploadId"])
            raise

    def upload(self, local: Path, rel: str, sha256: str, size: int) -> None:
        key = self._key(rel)
        multipart = size > MULTIPART_THRESHOLD
        with self._guard(f"uploading {rel}"):
            if multipart:
                self._multipart(local, key, size)
            else:
                self._put(local, key, sha256, size)
        got = self.sha256(rel, read_back=multipart)
        if got != sha256:
            raise IntegrityError(f"{self.url}{rel}: after upload its sha256 is {got}, "
                                 f"not {sha256}")

    def delete_run(self, rel: str) -> None:
        start = self._key(rel) + "/"
        with self._guard(f"deleting {rel}"):
            self.s3.delete_object(Bucket=self.t.bucket, Key=start + MANIFEST)
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.t.bucket,
                                                                      Prefix=start)
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", []) if "Key" in o]
                if not keys:
                    continue
                r = self.s3.delete_objects(Bucket=self.t.bucket,
                                           Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]
                if r.get("Errors"):
                    first = r["Errors"][0]
                    raise OffsiteError(f"{self.url}{rel}: deleting {first.get('Key')} failed: "
                                       f"{first.get('Code')}: {first.get('Message')}")

    def close(self) -> None:
        self.s3.close()
