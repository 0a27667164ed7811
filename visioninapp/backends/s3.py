"""`s3://` artifact store on boto3 (AWS S3, or any S3-compatible endpoint such as MinIO)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from visioninapp.backends.storage import (
    CHUNK,
    ArtifactStore,
    ObjectNotFound,
    StoredObject,
    replace_verified,
    sha256_file,
)

__all__ = ["S3ArtifactStore", "split_s3_uri"]

# Checksums are stored as object metadata, so verifying an artifact does not need a full download
# when the caller trusts the store; `checksum` still streams the bytes to prove them.
SHA256_METADATA = "sha256"
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}  # a bucket gone: its objects too


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


class S3ArtifactStore(ArtifactStore):
    scheme = "s3"

    def __init__(
        self, endpoint_url: str | None = None, region: str = "us-east-1", client: Any = None
    ) -> None:
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )
        self.transfer = TransferConfig(multipart_threshold=64 * CHUNK, max_concurrency=8)

    def put_file(self, path: Path, uri: str) -> StoredObject:
        bucket, key = split_s3_uri(uri)
        digest = sha256_file(path)
        self.client.upload_file(
            str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: digest}}, Config=self.transfer
        )
        return StoredObject(uri, digest, path.stat().st_size)

    def put_bytes(self, data: bytes, uri: str) -> StoredObject:
        bucket, key = split_s3_uri(uri)
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(Bucket=bucket, Key=key, Body=data, Metadata={SHA256_METADATA: digest})
        return StoredObject(uri, digest, len(data))

    def get_file(self, uri: str, path: Path, sha256: str | None = None) -> Path:
        """Stream to a `.partial` file that a later call resumes with a ranged GET (flaky edge links)."""
        bucket, key = split_s3_uri(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            extra = {"Range": f"bytes={offset}-"} if offset else {}
            body = self.client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
        except ClientError as error:
            code = _code(error)
            if code in _NOT_FOUND:
                partial.unlink(missing_ok=True)
                raise ObjectNotFound(uri) from None
            if code != "InvalidRange":  # InvalidRange: the partial file is already complete
                raise
        else:
            with partial.open("ab" if offset else "wb") as handle:
                for chunk in body.iter_chunks(CHUNK):
                    handle.write(chunk)
        replace_verified(partial, path, sha256)
        return path

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        try:
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            if _code(error) in _NOT_FOUND:
                raise ObjectNotFound(uri) from None
            raise
        return body

    def size(self, uri: str) -> int | None:
        bucket, key = split_s3_uri(uri)
        try:
            return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as error:
            if _code(error) in _NOT_FOUND:
                return None
            raise

    def checksum(self, uri: str) -> str:
        bucket, key = split_s3_uri(uri)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as error:
            if _code(error) in _NOT_FOUND:
                raise ObjectNotFound(uri) from None
            raise
        digest = hashlib.sha256()
        for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
        return digest.hexdigest()

    def list(self, prefix_uri: str) -> list[StoredObject]:
        bucket, prefix = split_s3_uri(prefix_uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found.append(StoredObject(f"s3://{bucket}/{item['Key']}", "", int(item["Size"])))
        return found

    def delete(self, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        self.client.delete_object(Bucket=bucket, Key=key)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
