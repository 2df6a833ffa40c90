"""The `pakaura` command (contract §7). Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from src.config import Settings

__all__ = ["main"]


class CommandError(Exception):
    """A failure the user can fix; printed as one line."""


def _settings() -> Settings:
    from src.config import get_settings

    return get_settings()


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from src.main import create_app

    settings = _settings()
    # Fail closed: a generated local secret only for a loopback bind (the quick start); any
    # other address (0.0.0.0, a container) needs BETTER_AUTH_SECRET or AUTH_JWKS_URL.
    app = create_app(settings, local_secret=_is_loopback(args.host))  # before binding the port
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _db_upgrade(args: argparse.Namespace) -> None:
    from src.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url, args.revision)
    sys.stderr.write(f"database upgraded to {args.revision}\n")


def _token(args: argparse.Namespace) -> None:
    from src.auth import issue_token
    from src.config import load_auth_secret

    if not args.user.strip():
        raise CommandError("USER must not be empty")
    settings = _settings()
    secret = load_auth_secret(settings)
    if secret is None:
        raise CommandError(
            "BETTER_AUTH_SECRET is not set: with only AUTH_JWKS_URL the auth server issues the "
            "tokens"
        )
    token = issue_token(
        args.user,
        secret,
        ttl=timedelta(hours=args.hours),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    sys.stdout.write(token + "\n")


def _mcp(args: argparse.Namespace) -> None:
    from src.mcp_server import run_stdio

    if not args.user.strip():
        raise CommandError("--user must not be empty")
    run_stdio(args.user, _settings())


def _relay(args: argparse.Namespace) -> None:
    from src.events.relay_service import run_relay_forever

    run_relay_forever(_settings())


def _outbox_status(args: argparse.Namespace) -> None:
    from src.events.relay_service import print_outbox_status

    print_outbox_status(_settings(), sys.stdout)


def _outbox_retry(args: argparse.Namespace) -> None:
    from src.events.relay_service import retry_outbox_now

    count = retry_outbox_now(_settings())
    sys.stdout.write(f"{count} waiting events are due now\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pakaura", description="Pakaura task API")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (relay included)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    up = db.add_parser("upgrade", help="apply the Alembic migrations to DATABASE_URL")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(run=_db_upgrade)

    token = commands.add_parser("token", help="print a bearer token for USER (local use)")
    token.add_argument("user", metavar="USER")
    token.add_argument("--hours", type=float, default=12.0)
    token.set_defaults(run=_token)

    mcp = commands.add_parser("mcp", help="MCP server on stdio, acting as USER")
    mcp.add_argument("--user", required=True)
    mcp.set_defaults(run=_mcp)

    relay = commands.add_parser("relay", help="run the outbox relay alone")
    relay.set_defaults(run=_relay)

    outbox = commands.add_parser("outbox", help="inspect the event outbox").add_subparsers(
        dest="outbox_command", required=True
    )
    outbox.add_parser("status", help="backlog, oldest pending age, relay leader").set_defaults(
        run=_outbox_status
    )
    outbox.add_parser("retry", help="make every waiting event due now").set_defaults(
        run=_outbox_retry
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sqlalchemy as sa

    from src.config import SettingsError

    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except (CommandError, SettingsError) as exc:
        sys.stderr.write(f"pakaura: {exc}\n")
        return 2
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        sys.stderr.write(f"pakaura: cannot reach the database ({reason}); check DATABASE_URL\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
