"""The `records-gateway` command line: the root group, `init` and `demo`, and every
command group attached.

Every error a user can act on is one line on stderr and a non-zero exit; never a
traceback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .audit import audit  # `audit verify` needs no database
from .authorizations import authorization
from .cases import case
from .common import OneLineErrors, set_up_logging
from .dicom_receiver import dicom_receiver
from .doctor import doctor
from .faxes import fax
from .keys import keys
from .notifications import notification
from .requests import requests
from .serve import serve, worker
from .settings_reference import settings_reference
from .tokens import token
from .transfers import transfer
from .users import user


@click.group(cls=OneLineErrors)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default from settings).")
def main(log_level: str | None) -> None:
    """Records interoperability gateway for second opinions."""
    set_up_logging(log_level)


for _command in (serve, worker, keys, token, authorization, case, transfer, fax, audit,
                 notification, requests, user, settings_reference, doctor, dicom_receiver):
    main.add_command(_command)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where state lives (default: GATEWAY_DATA_DIR or ./gateway-data).")
def init(data_dir: Path | None) -> None:
    """Create the data dir, the blob encryption key, the signing keys and the trust store."""
    from gateway.config import load_settings
    from gateway.storage.blobstore import load_master_key, new_master_key
    from gateway.trust.keys import SigningKeys

    settings = load_settings({"data_dir": data_dir} if data_dir else None)
    settings.keys_dir.mkdir(parents=True, exist_ok=True)
    key_path = settings.blob_key_path
    if settings.blob_key is None and not key_path.exists():
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_master_key())
        click.echo(f"created blob encryption key {key_path} (back it up: without it the "
                   "records in flight cannot be read)")
    for purpose, kid in SigningKeys(settings.keys_dir).ensure().items():
        click.echo(f"{purpose} signing key: {kid}")
    from gateway.engine.faxes import ensure_cover_key

    ensure_cover_key(settings.keys_dir)
    from gateway.trust.keys import ClientKeys, patient_key_secret

    click.echo(f"SMART client key: {ClientKeys(settings.keys_dir).ensure()}")
    patient_key_secret(settings.keys_dir)  # made here, so `doctor` finds every key
    issuers = settings.issuers_file
    if not issuers.exists():
        issuers.parent.mkdir(parents=True, exist_ok=True)
        issuers.write_text(json.dumps({"keys": [], "issuers": {}}, indent=2))
        click.echo(f"created empty issuer trust store {issuers}: add the issuers you accept")
    from gateway.storage.db import Database

    secret = settings.blob_key.get_secret_value() if settings.blob_key else None
    Database(settings.db_url, load_master_key(secret, key_path)).upgrade()  # seals old rows
    click.echo(f"database ready: {settings.db_url.split('?')[0]}")


@main.command()
@click.option("--keep", is_flag=True,
              help="Keep both gateways running afterwards (pages and sign-in tokens printed) "
                   "until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(keep: bool, as_json: bool) -> None:
    """Run a whole transfer on this machine: two gateways, a signed authorization, PDFs."""
    from .demo import run_demo

    run_demo(keep=keep, as_json=as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
