"""The process-wide services every part of the gateway uses, built once from settings."""
from __future__ import annotations

from dataclasses import dataclass

from gateway import audit
from gateway.config import S3StoreConfig, Settings, load_settings
from gateway.errors import ConfigError
from gateway.storage.blob_folder import FolderBackend
from gateway.storage.blob_s3 import S3Backend
from gateway.storage.blobstore import BlobStore, load_master_key
from gateway.storage.db import Database
from gateway.trust.keys import SigningKeys, patient_key_secret

from .celery_app import configure_celery


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    keys: SigningKeys
    patient_secret: bytes  # keys the audit log's patient keys (HMAC), from the keys dir

    def patient_key(self, system: str, value: str) -> str:
        return audit.patient_key(system, value, self.patient_secret)

    def close(self) -> None:
        self.db.dispose()


_current: Services | None = None


def init_services(settings: Settings, migrate: bool = True) -> Services:
    """Open the database (migrated), blob store and keys; configure Celery."""
    global _current
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings.data_dir.chmod(0o700)  # records, keys and the database: this user's alone
    except PermissionError:
        raise ConfigError(f"data dir {settings.data_dir} must belong to the user the gateway "
                          "runs as (it is made readable by that user only)") from None
    secret = settings.blob_key.get_secret_value() if settings.blob_key else None
    master_key = load_master_key(secret, settings.blob_key_path)  # blobs and sealed columns
    db = Database(settings.db_url, master_key)
    if migrate:
        db.upgrade()
    svc = Services(settings=settings, db=db, blobs=BlobStore(blob_backend(settings), master_key),
                   keys=SigningKeys(settings.keys_dir),
                   patient_secret=patient_key_secret(settings.keys_dir))
    configure_celery(settings)
    if _current is not None:
        _current.close()
    _current = svc
    return svc


def blob_backend(settings: Settings) -> FolderBackend | S3Backend:
    """Where blobs live, from `blob_store`."""
    conf = settings.blob_store
    if isinstance(conf, S3StoreConfig):
        return S3Backend(conf.bucket, conf.prefix, conf.endpoint_url, conf.region,
                         conf.access_key_file, conf.secret_key_file, conf.ca_file, conf.part_size)
    return FolderBackend(settings.blobs_dir)


def services() -> Services:
    """The current services; a worker process builds them from its environment."""
    return _current if _current is not None else init_services(load_settings())
