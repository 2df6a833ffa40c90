"""Bearer JWT authentication and per-user authorisation (issue 2, contract §5).

401 for a missing, malformed, expired, wrongly signed or wrong-algorithm token; 403 for a
token of another user than the path's; nothing is written in either case.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from src.auth import AuthError, decode_token, issue_token
from src.models import Task

from tests.support.app import TASK_ROUTES, TEST_SECRET, Api, bearer, make_client, make_token

MakeTasks = Callable[..., list[Task]]


def _url(template: str, user: str, task_id: int) -> str:
    return template.format(user=user, task_id=task_id)


@pytest.fixture
def alices_task(make_tasks: MakeTasks) -> int:
    """A completed task of alice's: every route (clear_completed too) would change it."""
    (task,) = make_tasks(user_id="alice", done=True)
    assert task.id is not None
    return task.id


@cache
def _rs256_token() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    return jwt.encode({"sub": "alice", "exp": now + timedelta(hours=1)}, key, algorithm="RS256")


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "garbage": lambda: "not-a-jwt",
    "three garbage parts": lambda: "abc.def.ghi",
    "wrong secret": lambda: make_token("alice", secret="another-secret-that-is-long-enough-1234"),
    "expired": lambda: make_token("alice", expires_in=-timedelta(seconds=30)),
    "no exp": lambda: make_token("alice", expires_in=None),
    "no sub": lambda: make_token(None),
    "empty sub": lambda: make_token(""),
    "blank sub": lambda: make_token("   "),
    "not yet valid": lambda: make_token("alice", nbf=datetime.now(UTC) + timedelta(hours=1)),
    "alg none": lambda: jwt.encode(
        {"sub": "alice", "exp": datetime.now(UTC) + timedelta(hours=1)}, "", algorithm="none"
    ),
    "alg HS512 with the right secret": lambda: make_token("alice", algorithm="HS512"),
    "alg HS384 with the right secret": lambda: make_token("alice", algorithm="HS384"),
    "alg RS256": _rs256_token,
}


def test_every_route_needs_a_token(api: Api, alices_task: int) -> None:
    before = api.state()
    for method, template, body in TASK_ROUTES:
        url = _url(template, "alice", alices_task)
        response = api.client.request(method, url, json=body)
        assert response.status_code == 401, (method, url)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.state() == before


WRITE_ROUTES = [route for route in TASK_ROUTES if route[0] != "GET"]


def test_bad_tokens_are_refused_and_write_nothing(api: Api, alices_task: int) -> None:
    before = api.state()
    for kind, make in BAD_TOKENS.items():
        headers = {"Authorization": f"Bearer {make()}"}
        for method, template, body in [*WRITE_ROUTES, ("GET", "/api/{user}/tasks", None)]:
            url = _url(template, "alice", alices_task)
            response = api.client.request(method, url, json=body, headers=headers)
            assert response.status_code == 401, (kind, method, url)
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.state() == before


def test_an_expired_token_says_so(api: Api) -> None:
    response = api.client.get(
        "/api/alice/tasks", headers=bearer("alice", expires_in=-timedelta(seconds=1))
    )
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize(
    "authorization",
    ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "Token {token}", "{token}"],
)
def test_malformed_authorization_headers_are_401(api: Api, authorization: str) -> None:
    value = authorization.format(token=make_token("alice"))
    response = api.client.get("/api/alice/tasks", headers={"Authorization": value})
    assert response.status_code == 401


def test_the_scheme_is_case_insensitive(api: Api) -> None:
    response = api.client.get(
        "/api/alice/tasks", headers={"Authorization": f"bearer {make_token('alice')}"}
    )
    assert response.status_code == 200


def test_errors_do_not_echo_the_token_or_secret(api: Api) -> None:
    token = make_token("alice", secret="another-secret-that-is-long-enough-1234")
    response = api.client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert token not in response.text
    assert TEST_SECRET not in response.text


def test_a_token_for_another_user_is_403_on_every_route(api: Api, alices_task: int) -> None:
    before = api.state()
    for method, template, body in TASK_ROUTES:
        url = _url(template, "alice", alices_task)
        response = api.client.request(method, url, json=body, headers=bearer("bob"))
        assert response.status_code == 403, (method, url)
    assert api.state() == before


def test_auth_is_checked_before_the_body(api: Api) -> None:
    # Nobody learns about validation rules (or anything else) without a valid token.
    bad_body = {"title": ""}
    assert api.client.post("/api/alice/tasks", json=bad_body).status_code == 401
    assert (
        api.client.post("/api/alice/tasks", json=bad_body, headers=bearer("bob")).status_code == 403
    )
    assert (
        api.client.post("/api/alice/tasks", json=bad_body, headers=bearer("alice")).status_code
        == 422
    )


def test_a_valid_token_opens_only_its_own_tasks(api: Api, alices_task: int) -> None:
    mine = api.client.get(f"/api/alice/tasks/{alices_task}", headers=bearer("alice"))
    assert mine.status_code == 200
    assert mine.json()["user_id"] == "alice"
    assert api.client.get("/api/bob/tasks", headers=bearer("bob")).json() == []


def test_a_subject_the_database_cannot_store_is_refused(api: Api) -> None:
    # PostgreSQL text cannot hold NUL: such a user id must be refused, not answered with 500.
    headers = bearer("al\x00ice")
    assert api.client.get("/api/al%00ice/tasks", headers=headers).status_code == 401
    assert (
        api.client.post("/api/al%00ice/tasks", json={"title": "x"}, headers=headers).status_code
        == 401
    )
    assert api.rows() == []


def test_user_ids_are_compared_exactly(api: Api, alices_task: int) -> None:
    assert api.client.get("/api/Alice/tasks", headers=bearer("alice")).status_code == 403
    assert api.client.get("/api/alice%20/tasks", headers=bearer("alice")).status_code == 403


def test_leeway_setting_tolerates_small_clock_skew(api: Api) -> None:
    headers = bearer("alice", expires_in=-timedelta(seconds=5))
    assert api.client.get("/api/alice/tasks", headers=headers).status_code == 401
    # Read at start-up, like every auth setting.
    with make_client(api.db_url, JWT_LEEWAY_SECONDS="60") as lenient:
        assert lenient.client.get("/api/alice/tasks", headers=headers).status_code == 200


def test_tokens_from_issue_token_are_accepted(api: Api) -> None:
    token = issue_token("alice", TEST_SECRET)
    response = api.client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


# --- src.auth on its own ----------------------------------------------------------------------


def test_issue_token_sets_subject_and_expiry() -> None:
    token = issue_token("alice", TEST_SECRET, ttl=timedelta(minutes=5))
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    lifetime = claims["exp"] - datetime.now(UTC).timestamp()
    assert 4 * 60 < lifetime <= 5 * 60
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert decode_token(token, TEST_SECRET) == "alice"


@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_decode_token_raises_auth_error(kind: str) -> None:
    with pytest.raises(AuthError):
        decode_token(BAD_TOKENS[kind](), TEST_SECRET)
