"""Folder or single-file copies between S3 and local disk, over `unimedvl.storage`'s MinIO client
(uploads read back and checked there)."""

from __future__ import annotations

from pathlib import Path


def sync(src: str, dst: str) -> int:
    from ..storage import StorageError, _s3_call, download_folder, load_settings, minio_client, parse_s3_uri, upload_folder
    from .params import params_file

    settings = load_settings(params_file())
    if src.startswith("s3://") == dst.startswith("s3://"):
        raise StorageError(f"sync copies between S3 and local disk: exactly one of {src!r}, {dst!r} must be s3://")
    client = minio_client(settings)
    if dst.startswith("s3://"):
        path = Path(src)
        if path.is_file():
            bucket, key = parse_s3_uri(dst)
            _s3_call(settings, f"upload {path} to {dst}", client.fput_object, bucket, key, str(path))
            return 1
        return len(upload_folder(path, dst, settings, client, progress=False))
    bucket, key = parse_s3_uri(src)
    if key and not key.endswith("/"):
        names = [o.object_name for o in _s3_call(settings, f"list {src}", lambda: list(client.list_objects(bucket, prefix=key)))]
        if key in names:  # a single object
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            _s3_call(settings, f"download {src}", client.fget_object, bucket, key, dst)
            return 1
    return len(download_folder(src, dst, settings, client))
