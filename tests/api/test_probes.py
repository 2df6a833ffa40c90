"""Probes that mean what they say: /livez (no database), /readyz (database reachable and
migrated), /health (summary, no internal error text for unauthenticated callers)."""

from __future__ import annotations

import sqlalchemy as sa
from src.migrate import upgrade

from tests.support.app import make_client


def _down(db_url: str) -> str:
    if db_url.startswith("sqlite"):
        return "sqlite:////nonexistent-pakaura-dir/db.sqlite"
    return "postgresql+psycopg://pakaura:hunter2-secret@127.0.0.1:1/pakaura"


def test_probes_on_a_healthy_app(db_url: str) -> None:
    with make_client(db_url, RELAY_ENABLED="false") as api:
        assert api.client.get("/livez").json() == {"status": "ok"}
        ready = api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "database": "ok"}


def test_a_database_outage_is_not_a_liveness_failure(db_url: str) -> None:
    with make_client(_down(db_url), DATABASE_CREATE_TABLES="false", RELAY_ENABLED="false") as api:
        assert api.client.get("/livez").status_code == 200
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "database": "unavailable"}
        health = api.client.get("/health")
        assert health.status_code == 503
        # No exception class or driver text for an anonymous caller...
        assert health.json()["database"] == "unavailable"
        assert "hunter2" not in health.text
        # ...a caller with a valid token gets the cause.
        detailed = api.client.get("/health", headers=api.auth("ops"))
        assert detailed.json()["database"].startswith("unavailable (")
        assert "hunter2" not in detailed.text


def test_readyz_waits_for_the_migrations(db_url: str) -> None:
    with make_client(db_url, DATABASE_CREATE_TABLES="false", RELAY_ENABLED="false") as api:
        assert api.client.get("/readyz").json() == {
            "status": "unavailable",
            "database": "not migrated",
        }
        upgrade(db_url)
        assert api.client.get("/readyz").status_code == 200
        with api.engine.begin() as conn:  # a database migrated by an older or newer release
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'zzz-unknown'"))
        assert api.client.get("/readyz").json()["database"] == "not migrated"


def test_probes_need_no_token(db_url: str) -> None:
    with make_client(db_url, RELAY_ENABLED="false") as api:
        for path in ("/livez", "/readyz", "/health"):
            response = api.client.get(path, headers={"Authorization": "Bearer garbage"})
            assert response.status_code == 200, path


class _FailingRelay:
    def status(self) -> dict[str, object]:
        return {"state": "leader", "last_error": "ConnectError: dapr at 10.0.0.7:3500 refused"}


def test_health_hides_the_relays_last_error_from_anonymous_callers(sqlite_url: str) -> None:
    with make_client(sqlite_url, RELAY_ENABLED="false") as api:
        real, api.app.state.relay = api.app.state.relay, _FailingRelay()
        try:
            anonymous = api.client.get("/health").json()["relay"]
            detailed = api.client.get("/health", headers=api.auth("ops")).json()["relay"]
        finally:
            api.app.state.relay = real
    assert "10.0.0.7" not in str(anonymous)
    assert anonymous["last_error"].startswith("hidden")
    assert "10.0.0.7" in detailed["last_error"]
