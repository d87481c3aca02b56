"""seal patient-bearing columns at rest

Authorizations (JWS, claims, Consent, revocation reason), transfer and source errors, and
an item's origin, metadata, error and clinical date are stored AES-256-GCM sealed
(gateway/storage/sealed.py); an item is unique per origin by a keyed HMAC (origin_key).
Rows already there are sealed in place with the deployment's at-rest key.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

from gateway.storage.models import item_origin_key
from gateway.storage.sealed import keys_of

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# table -> (primary key, sealed columns)
SEALED = {
    "authorizations": ("id", ["jws", "claims", "consent", "revoked_reason"]),
    "transfers": ("id", ["reason"]),
    "transfer_sources": ("id", ["error"]),
    "items": ("id", ["origin", "record_meta", "error", "clinical_date"]),
}
TO_TEXT = {"authorizations": ["claims", "consent"], "items": ["origin", "record_meta", "clinical_date"]}
# SQLite keeps the old constraint unnamed: batch mode names it by this convention
OLD_UNIQUE = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _old_unique_name(bind) -> str:
    for uc in sa.inspect(bind).get_unique_constraints("items"):
        if uc["column_names"] == ["transfer_id", "source", "origin"] and uc["name"]:
            return uc["name"]
    return "uq_items_transfer_id_source_origin"


def upgrade():
    bind = op.get_bind()
    old_unique = _old_unique_name(bind)
    for table, columns in TO_TEXT.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.Text(), postgresql_using=f"{column}::text")
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("origin_key", sa.String(length=64), nullable=True))
    for table, (pk, columns) in SEALED.items():
        _seal_rows(bind, table, pk, columns)
    with op.batch_alter_table("items", naming_convention=OLD_UNIQUE) as batch:
        batch.drop_constraint(old_unique, type_="unique")
        batch.alter_column("origin_key", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_items_origin_key", ["transfer_id", "source", "origin_key"])


def _seal_rows(bind, table: str, pk: str, columns: list[str]) -> None:
    extra = ["transfer_id", "source"] if table == "items" else []
    rows = bind.execute(sa.text(f"SELECT {', '.join([pk, *extra, *columns])} FROM {table}")).all()
    if not rows:
        return
    keys = keys_of(bind.dialect)  # a ConfigError names the missing key if there are rows
    for row in rows:
        values = dict(zip([pk, *extra, *columns], row))
        sealed = {c: keys.seal(f"{table}.{c}", values[c].encode())
                  for c in columns if values[c] is not None}
        if table == "items":
            sealed["origin_key"] = item_origin_key(keys, values["transfer_id"], values["source"],
                                                   values["origin"])
        assignments = ", ".join(f"{c} = :{c}" for c in sealed)
        bind.execute(sa.text(f"UPDATE {table} SET {assignments} WHERE {pk} = :pk"),
                     {**sealed, "pk": values[pk]})


def downgrade():
    raise NotImplementedError("sealed columns cannot be downgraded in place: restore the "
                              "database from a backup taken before revision 0006")
