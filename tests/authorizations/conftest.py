"""Fixtures for the authorization tests: issuer keys, a trust store, a fresh database."""
from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from gateway.trust.authorizations import example_claims, new_issuer_key, sign_authorization
from gateway.storage.models import Base
from gateway.storage.sealed import ColumnKeys, bind_keys
from gateway.trust.issuers import TrustStore

from tests.authorizations.authz_support import ISSUER, NOW, OTHER_ISSUER
from tests.helpers import throwaway_database



@pytest.fixture(scope="session")
def issuer_key():
    return new_issuer_key("esign-2026-01")


@pytest.fixture(scope="session")
def es256_key():
    return new_issuer_key("esign-ec-1", alg="ES256")


@pytest.fixture(scope="session")
def other_key():
    return new_issuer_key("intake-1")


@pytest.fixture(scope="session")
def trust(issuer_key, es256_key, other_key):
    return TrustStore.from_issuers({ISSUER: [issuer_key, es256_key], OTHER_ISSUER: [other_key]})


@pytest.fixture
def claims():
    """A complete valid payload, issued at NOW, valid 30 days."""
    return example_claims(ISSUER, "auth-0001", now=NOW)


@pytest.fixture
def sign(issuer_key):
    def _sign(payload, key=None, **kw):
        return sign_authorization(payload, key or issuer_key, **kw)
    return _sign


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with throwaway_database("auth_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
        bind_keys(eng, ColumnKeys(os.urandom(32)))  # the deployment's at-rest key (sealed columns)
        Base.metadata.create_all(eng)
        yield eng
        eng.dispose()
        return
    eng = create_engine(request.getfixturevalue("pg_url"))
    bind_keys(eng, ColumnKeys(os.urandom(32)))  # the deployment's at-rest key (sealed columns)
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()


@pytest.fixture
def session(engine):
    with Session(engine) as s:
        yield s
