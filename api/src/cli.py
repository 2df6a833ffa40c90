"""The `pakaura` command (contract §7). Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from src.config import Settings

__all__ = ["main"]


class CommandError(Exception):
    """A failure the user can fix; printed as one line."""


def _settings() -> Settings:
    from src.config import get_settings

    return get_settings()


def _quiet_settings() -> Settings:
    """Settings for a short command: its answer is its output, so library chatter at INFO
    (Alembic's plugin set-up, the engine) stays out; warnings and errors still show."""
    from src.logging_setup import configure_logging

    settings = _settings()
    if settings.log_level in ("TRACE", "DEBUG", "INFO"):
        configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    else:
        configure_logging(settings)
    return settings


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
    settings = _quiet_settings()  # before importing Alembic, which logs as it loads
    from src.migrate import upgrade

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


def _dev_sidecar(args: argparse.Namespace) -> None:
    from src.dev_sidecar import run

    token = args.token
    if token is None:
        configured = _settings().dapr_api_token
        token = configured.get_secret_value() if configured is not None else None
    try:
        run(
            host=args.host,
            port=args.port,
            token=token,
            pubsubs=args.pubsub,
            as_json=args.json,
        )
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
            "is a sidecar already running there? choose another with --port"
        ) from None


def _outbox_status(args: argparse.Namespace) -> None:
    from src.events.relay_service import print_outbox_status

    print_outbox_status(_quiet_settings(), sys.stdout)


def _outbox_retry(args: argparse.Namespace) -> None:
    from src.events.relay_service import retry_outbox_now

    count = retry_outbox_now(_quiet_settings())
    sys.stdout.write(f"{count} waiting events are due now\n")


def _hours(text: str) -> float:
    """`--hours`: a positive, finite number (0 or less would print an expired token)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of hours, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, not {text}")
    return value


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (what is wrong, where the help is), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pakaura",
        description="Pakaura task API: REST + MCP server, events through a Dapr sidecar.",
        epilog="Settings come from environment variables or .env (see README.md, Settings).",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: argparse._SubParsersAction[_Parser], name: str, text: str) -> _Parser:
        return group.add_parser(name, help=text, description=text, formatter_class=_Formatter)

    serve = command(commands, "serve", "run the API (uvicorn) and its outbox relay (RELAY_MODE)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port to listen on")
    serve.set_defaults(run=_serve)

    db = command(commands, "db", "database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    up = command(db, "upgrade", "apply the Alembic migrations to DATABASE_URL")
    up.add_argument("revision", nargs="?", default="head", help="Alembic revision to upgrade to")
    up.set_defaults(run=_db_upgrade)

    token = command(
        commands,
        "token",
        "print a bearer token for USER, signed with BETTER_AUTH_SECRET or the local secret",
    )
    token.add_argument("user", metavar="USER", help="the user id the token is for (its `sub`)")
    token.add_argument(
        "--hours", type=_hours, default=12.0, help="how long the token is valid, in hours (> 0)"
    )
    token.set_defaults(run=_token)

    mcp = command(commands, "mcp", "MCP server on stdio, acting as USER")
    mcp.add_argument("--user", required=True, help="the user every tool call acts as (required)")
    mcp.set_defaults(run=_mcp)

    relay = command(commands, "relay", "run the outbox relay alone (no API)")
    relay.set_defaults(run=_relay)

    sidecar = command(
        commands,
        "dev-sidecar",
        "a local stand-in for the Dapr publish API that prints each event it receives "
        "(development; no Dapr or Kafka needed)",
    )
    sidecar.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (DAPR_HOST for the API)"
    )
    sidecar.add_argument(
        "--port", type=_port, default=3500, help="port to listen on (DAPR_HTTP_PORT for the API)"
    )
    sidecar.add_argument(
        "--token",
        default=None,
        help="require this dapr-api-token header on publish calls (default: DAPR_API_TOKEN "
        "when set, else none)",
    )
    sidecar.add_argument(
        "--pubsub",
        action="append",
        metavar="NAME",
        default=None,
        help="pub/sub component names that exist, repeatable; others answer 404 "
        "(default: any name)",
    )
    sidecar.add_argument(
        "--json", action="store_true", help="print one JSON line per event instead of text"
    )
    sidecar.set_defaults(run=_dev_sidecar)

    outbox = command(commands, "outbox", "inspect the event outbox").add_subparsers(
        dest="outbox_command", required=True, metavar="COMMAND"
    )
    command(outbox, "status", "backlog, oldest pending age, relay leader").set_defaults(
        run=_outbox_status
    )
    command(outbox, "retry", "make every waiting event due now").set_defaults(run=_outbox_retry)
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
    except sa.exc.ProgrammingError as exc:
        # Typically a database nothing has created the tables in yet.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        sys.stderr.write(
            f"pakaura: database error ({reason}); run `pakaura db upgrade` to create the "
            "tables, or check DATABASE_URL\n"
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
