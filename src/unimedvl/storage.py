"""The one S3 configuration of the cluster path, and the MinIO-client helpers every step uses.

`S3Settings` is built once from `params.yaml` `storage:` plus the environment, and serves all four
consumers, so they can never disagree about where data lives:

- DVC: the remote `s3` (`dvc_remote_url`, `dvc_remote_options`; `.dvc/config` carries the same values),
- MLflow: artefacts under `mlflow_artifacts_uri` (the server's `--artifacts-destination`), with the
  client side reading `MLFLOW_S3_ENDPOINT_URL` and the AWS variables from `env()`,
- the KFP pipeline root (`pipeline_root`),
- the models bucket that KServe's storage initializer reads (`model_uri(name, version)`).

Credentials come only from env `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`. The endpoint: env
`AWS_ENDPOINT_URL` (what boto3 and DVC read), else `MLFLOW_S3_ENDPOINT_URL`, else `storage.endpoint`;
the region: `AWS_DEFAULT_REGION`; a bucket: `UNIMEDVL_BUCKET_<DVC|MLFLOW|PIPELINES|MODELS>` (the
variables of the cluster's `unimedvl-storage` ConfigMap), else `storage.buckets`.

The client is the `minio` package (the project's S3 client; it streams multipart uploads and needs no
AWS SDK). Every upload is read back and hashed: size and sha256 must match the local file, so a
truncated or corrupted object fails loudly instead of being served.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .config import StorageConfig, load_params
from .data.shards import sha256_file

if TYPE_CHECKING:
    from minio import Minio

BucketKind = Literal["dvc", "mlflow", "pipelines", "models"]
_CHUNK = 8 << 20
# Error codes an S3 server answers a wrong or unknown key pair with.
_AUTH_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "ExpiredToken"}


class StorageError(RuntimeError):
    """An S3 operation failed for a reason the user can fix; the message says which and how."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    region: str
    buckets: Mapping[str, str]
    dvc_prefix: str = "dvc"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: StorageConfig, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL") or cfg.endpoint
        # UNIMEDVL_BUCKET_<KIND>: what the cluster's unimedvl-storage ConfigMap sets in every pod.
        buckets = {k: env.get(f"UNIMEDVL_BUCKET_{k.upper()}") or v for k, v in cfg.buckets.model_dump().items()}
        return cls(
            endpoint=endpoint.rstrip("/"),
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or cfg.region,
            buckets=buckets,
            dvc_prefix=cfg.dvc_prefix.strip("/"),
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        )

    # --- where things live -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        """host[:port] of the endpoint (what the MinIO client takes)."""
        return re.sub(r"^https?://", "", self.endpoint).split("/", 1)[0]

    @property
    def secure(self) -> bool:
        return self.endpoint.startswith("https://")

    def uri(self, kind: BucketKind, *parts: str) -> str:
        path = "/".join(p.strip("/") for p in parts if p)
        return f"s3://{self.buckets[kind]}/{path}" if path else f"s3://{self.buckets[kind]}"

    @property
    def dvc_remote_url(self) -> str:
        return self.uri("dvc", self.dvc_prefix)

    @property
    def mlflow_artifacts_uri(self) -> str:
        return self.uri("mlflow")

    @property
    def pipeline_root(self) -> str:
        return self.uri("pipelines")

    def model_uri(self, name: str, version: str | int) -> str:
        """s3://<models bucket>/<name>/<version>/: the folder the InferenceService's storageUri names."""
        return self.uri("models", name, str(version)) + "/"

    def dvc_remote_options(self) -> dict[str, str]:
        """`dvc remote modify s3 KEY VALUE` pairs (credentials stay in env, never in .dvc/config)."""
        return {"url": self.dvc_remote_url, "endpointurl": self.endpoint, "region": self.region}

    def env(self) -> dict[str, str]:
        """Variables for a subprocess (dvc, mlflow, a KFP launcher) to use these same settings."""
        out = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.access_key and self.secret_key:
            out |= {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return out

    def require_credentials(self) -> None:
        if not (self.access_key and self.secret_key):
            raise StorageError(
                f"no S3 credentials for {self.endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(in the cluster they come from the unimedvl-s3 Secret; see infra/README.md)"
            )


def load_settings(params_path: str | Path | None = "params.yaml", env: Mapping[str, str] | None = None) -> S3Settings:
    """The settings of `params.yaml` (defaults when it is missing) with the environment applied."""
    return S3Settings.from_config(load_params(params_path).storage, env)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    m = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not m:
        raise StorageError(f"{uri!r} is not an s3:// URI (expected s3://bucket/prefix)")
    return m.group(1), m.group(2)


# --- the client and its errors ---------------------------------------------------------------------


def minio_client(settings: S3Settings | None = None, retries: int = 5) -> Minio:
    """A MinIO client for the settings (default: `load_settings()`); credentials must be set.

    `retries`: attempts after a connection error or a 5xx, with backoff (the client's own default)."""
    import certifi
    import urllib3
    from minio import Minio

    settings = settings or load_settings()
    settings.require_credentials()
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        settings.host,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


def explain(exc: Exception, settings: S3Settings, what: str) -> StorageError:
    """Turn a MinIO/urllib3 exception into a StorageError that says what to fix."""
    from minio.error import InvalidResponseError, S3Error
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, S3Error) and exc.code in _AUTH_CODES or (
        isinstance(exc, InvalidResponseError)
        and getattr(exc, "_code", None) in (401, 403)
    ):
        code = exc.code if isinstance(exc, S3Error) else _xml_code(getattr(exc, "_body", "") or "")
        return StorageError(
            f"{what}: the S3 server at {settings.endpoint} rejected the credentials ({code or 'HTTP 403'}). "
            f"Check AWS_ACCESS_KEY_ID ({settings.access_key!r}) and AWS_SECRET_ACCESS_KEY, and that this key "
            "may use the bucket"
        )
    if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
        return StorageError(
            f"{what}: bucket {exc.bucket_name!r} does not exist at {settings.endpoint} "
            "(the minio-buckets Job creates it in the cluster; `unimedvl storage check --create` here)"
        )
    if isinstance(exc, Urllib3Error | ConnectionError):
        return StorageError(
            f"{what}: cannot reach the S3 endpoint {settings.endpoint} ({type(exc).__name__}); "
            "check storage.endpoint in params.yaml or AWS_ENDPOINT_URL"
        )
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


def _xml_code(body: str) -> str | None:
    m = re.search(r"<Code>([^<]+)</Code>", body)
    return m.group(1) if m else None


def _s3_call(settings: S3Settings, what: str, fn: Callable, *args, **kwargs):
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        return fn(*args, **kwargs)
    except (MinioException, Urllib3Error, ConnectionError) as exc:
        raise explain(exc, settings, what) from None


# --- operations ----------------------------------------------------------------------------------


def object_exists(s3_uri: str, settings: S3Settings | None = None, client: Minio | None = None) -> bool:
    """Whether an object exists; a URI ending in `/` asks whether any object lies under that prefix."""
    from minio.error import S3Error

    settings = settings or load_settings()
    client = client or minio_client(settings)
    bucket, key = parse_s3_uri(s3_uri)
    if not key or key.endswith("/"):
        objects = _s3_call(settings, f"list {s3_uri}", lambda: list(client.list_objects(bucket, prefix=key, recursive=True)))
        return any(not o.is_dir for o in objects)
    try:
        client.stat_object(bucket, key)
        return True
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return False
        raise explain(exc, settings, f"stat {s3_uri}") from None
    except Exception as exc:  # noqa: BLE001 - urllib3/minio errors become one readable StorageError
        raise explain(exc, settings, f"stat {s3_uri}") from None


def ensure_buckets(settings: S3Settings | None = None, client: Minio | None = None, create: bool = True) -> dict[str, bool]:
    """{bucket: existed before} for the four buckets; missing ones are created when `create`."""
    settings = settings or load_settings()
    client = client or minio_client(settings)
    out = {}
    for name in dict.fromkeys(settings.buckets.values()):
        existed = _s3_call(settings, f"check bucket {name}", client.bucket_exists, name)
        if not existed and create:
            _s3_call(settings, f"create bucket {name}", client.make_bucket, name)
        out[name] = existed
    return out


@dataclass(frozen=True)
class UploadedObject:
    uri: str
    size: int
    sha256: str


def upload_folder(
    local_dir: str | Path,
    s3_uri: str,
    settings: S3Settings | None = None,
    client: Minio | None = None,
    progress: bool = True,
) -> list[UploadedObject]:
    """Copy every file under `local_dir` to the `s3_uri` prefix, then read each object back and check
    its size and sha256 against the local file. The sha256 is also stored as object metadata
    (`x-amz-meta-sha256`) for later audits. Raises StorageError on any failure or mismatch."""
    settings = settings or load_settings()
    client = client or minio_client(settings)
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"{root} is not a folder: nothing to upload")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise StorageError(f"{root} holds no files: refusing to publish an empty model folder")
    bucket, prefix = parse_s3_uri(s3_uri)
    prefix = prefix.rstrip("/")
    uploaded = []
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    total = sum(p.stat().st_size for p in files)
    columns = (TextColumn("upload {task.fields[name]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("upload", total=total, name=root.name)
        for path in files:
            rel = path.relative_to(root).as_posix()
            key = f"{prefix}/{rel}" if prefix else rel
            size, digest = path.stat().st_size, sha256_file(path)
            _s3_call(settings, f"upload {path} to s3://{bucket}/{key}", client.fput_object,
                     bucket, key, str(path), metadata={"sha256": digest})
            remote_size, remote_digest = _read_back(client, settings, bucket, key)
            if (remote_size, remote_digest) != (size, digest):
                raise StorageError(
                    f"s3://{bucket}/{key} does not match {path} after upload: size {remote_size} vs {size}, "
                    f"sha256 {remote_digest[:12]} vs {digest[:12]}"
                )
            uploaded.append(UploadedObject(f"s3://{bucket}/{key}", size, digest))
            bar.advance(task, size)
    return uploaded


def _read_back(client: Minio, settings: S3Settings, bucket: str, key: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        resp = client.get_object(bucket, key)
        try:
            h, n = hashlib.sha256(), 0
            for chunk in resp.stream(_CHUNK):
                h.update(chunk)
                n += len(chunk)
            return n, h.hexdigest()
        finally:
            resp.close()
            resp.release_conn()

    return _s3_call(settings, f"read back s3://{bucket}/{key}", fetch)


def download_folder(s3_uri: str, local_dir: str | Path, settings: S3Settings | None = None,
                    client: Minio | None = None) -> list[Path]:
    """Copy every object under an s3:// prefix into `local_dir` (what KServe's initializer does)."""
    settings = settings or load_settings()
    client = client or minio_client(settings)
    bucket, prefix = parse_s3_uri(s3_uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    objects = _s3_call(settings, f"list {s3_uri}", lambda: list(client.list_objects(bucket, prefix=prefix, recursive=True)))
    out = []
    for obj in objects:
        if obj.is_dir:
            continue
        target = Path(local_dir) / obj.object_name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        _s3_call(settings, f"download s3://{bucket}/{obj.object_name}", client.fget_object, bucket, obj.object_name, str(target))
        out.append(target)
    if not out:
        raise StorageError(f"no objects under {s3_uri}")
    return out


def configure_dvc_remote(repo_dir: str | Path = ".", settings: S3Settings | None = None, name: str = "s3",
                         local: bool = False, default: bool = False) -> dict[str, str]:
    """Write the DVC remote `name` from the settings with `dvc remote add/modify` (into
    .dvc/config, or .dvc/config.local with `local`). Credentials are not written: DVC reads the
    same AWS_* variables. Returns the options written."""
    import subprocess
    import sys

    settings = settings or load_settings(Path(repo_dir) / "params.yaml")
    options = settings.dvc_remote_options()
    scope = ["--local"] if local else []
    dvc = [sys.executable, "-m", "dvc", "remote"]
    commands = [[*dvc, "add", *scope, "--force", *(["-d"] if default else []), name, options["url"]]]
    commands += [[*dvc, "modify", *scope, name, key, value] for key, value in options.items() if key != "url"]
    for cmd in commands:
        proc = subprocess.run(cmd, cwd=repo_dir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StorageError(f"`dvc remote {' '.join(cmd[4:])}` failed in {repo_dir}: {proc.stderr.strip()}")
    return options
