"""``kfbot``: serve, shell, migrate, plan, audit verify|export, doctor.

Each subcommand is one row of ``COMMANDS`` (name -> arguments, runner), so new ones slot in
without touching the others. Settings are read once from the environment; a bad setting
or a database that is behind prints a message and exits 2. ``shell`` and ``plan`` on a SQLite
file create and migrate it themselves (the fresh-checkout path); ``serve`` never does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import provisioning
from bot import app as composition
from bot import doctor, render
from bot import logging as log
from bot.notify import NullNotifier, ShellNotifier
from bot.settings import Settings, SettingsError, sqlite_path
from bot.shell import Shell, _no_mentions, shell_actor
from handlers import errors, parse, services

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Subcommand:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


# -- helpers ---------------------------------------------------------------------------------------------


def _local_backend(settings: Settings, *, create: bool) -> tuple[Settings, provisioning.Backend]:
    """For shell and plan: on a SQLite file, make the audit key file and migrate; elsewhere the
    database must already be migrated."""
    settings, note = settings.with_local_audit_key(create=create)
    if note:
        print(note, file=sys.stderr)
    settings.require_audit_key()
    backend = composition.build_backend(settings)
    try:
        if sqlite_path(settings.provisioning.database_url) is not None:
            backend.migrate()
        else:
            backend.check_migrated()
    except BaseException:
        backend.close()
        raise
    return settings, backend


@contextlib.contextmanager
def _planning_backend(settings: Settings) -> Iterator[tuple[Settings, provisioning.Backend]]:
    """For plan, which must write nothing: an existing database as it is (with its key file when
    there is one); with none yet, a throw-away one in a temporary folder, so no ``kfbot.db`` or
    audit key file appears where the user typed ``kfbot plan``."""
    path = sqlite_path(settings.provisioning.database_url)
    throwaway = path is not None and not path.exists()
    with contextlib.ExitStack() as stack:
        if throwaway:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kfbot-plan-"))
            settings = dataclasses.replace(
                settings,
                provisioning=dataclasses.replace(
                    settings.provisioning,
                    database_url=f"sqlite:///{folder}/plan.db",
                    audit_key=secrets.token_hex(32).encode(),
                ),
            )
        elif path is not None:
            settings, _ = settings.with_local_audit_key(create=False)
            if not settings.provisioning.audit_key:  # reads only; nothing is appended to the chain
                settings = dataclasses.replace(
                    settings,
                    provisioning=dataclasses.replace(
                        settings.provisioning, audit_key=secrets.token_hex(32).encode()
                    ),
                )
        backend = composition.build_backend(settings)
        stack.callback(backend.close)
        if throwaway:
            backend.migrate()
        else:
            backend.check_migrated()
        yield settings, backend


def _maintenance_backend(
    settings: Settings, *, migrated: bool = True
) -> tuple[Settings, provisioning.Backend]:
    settings, _ = settings.with_local_audit_key(create=False)
    backend = composition.build_backend(settings)
    if migrated:
        try:
            backend.check_migrated()
        except BaseException:
            backend.close()
            raise
    return settings, backend


def _describe_db(url: str) -> str:
    path = sqlite_path(url)
    if path is not None:
        return f"SQLite {path}"
    return url.rsplit("@", maxsplit=1)[-1] if "@" in url else url.split("://", 1)[0]


def banner(settings: Settings, actor_email: str, admin: bool) -> str:
    mode = settings.mode
    effect = (
        "dry-run: nothing is changed in AWS or Kubeflow; every object and call is shown"
        if mode == "dry-run"
        else "LIVE: approved requests change AWS and Kubeflow"
    )
    return (
        f"kfbot shell · provisioner {mode} ({effect})\n"
        f"database {_describe_db(settings.provisioning.database_url)} · you are {actor_email}"
        f"{' (admin)' if admin else ''} · type `help`, or `/kf help`"
    )


# -- serve -----------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    return composition.serve(settings)


# -- shell -----------------------------------------------------------------------------------------------


def shell_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="as_", required=True, metavar="EMAIL", help="who you are")
    parser.add_argument("--admin", action="store_true", help="act as an admin")


def _interactive_lines(shell: Shell) -> Iterator[str]:
    with contextlib.suppress(ImportError):  # line editing and history for input(), where available
        import readline  # noqa: F401, PLC0415
    while True:
        try:
            yield input(shell.prompt)
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            continue


def run_shell(
    args: argparse.Namespace, settings: Settings, *, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    actor = shell_actor(args.as_, admin=args.admin, settings=settings.core)
    settings, backend = _local_backend(settings, create=True)
    try:
        notifier = ShellNotifier(
            stdout,
            calls=backend.render_step if backend.mode == "dry-run" else None,
            kept_by_steps=backend.kept_by_steps,
            dry_run=backend.mode == "dry-run",
            dashboard_url=settings.slack.dashboard_url,
            expiry=backend.pending_expiry,
        )
        core = composition.build_core(settings, backend, notifier, provisioning.SystemClock())
        shell = Shell(core=core, backend=backend, notifier=notifier, out=stdout, actor=actor)
        logging.getLogger(__name__).info("kfbot shell started: provisioner=%s", settings.mode)
        shell.say(banner(settings, actor.email, actor.is_admin))
        if stdin.isatty():
            return shell.run(_interactive_lines(shell), echo=False)
        return shell.run(stdin, echo=True)
    finally:
        backend.close()


# -- plan ------------------------------------------------------------------------------------------------


def plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command", help='the Slack command, e.g. "/kf workspace new team-a --gpu 1"')
    shell_arguments(parser)


def run_plan(args: argparse.Namespace, settings: Settings) -> int:
    text = args.command.strip()
    if text.split(" ", 1)[0].lower() in ("/kf", "kf"):
        text = text.split(" ", 1)[1] if " " in text else ""
    actor = shell_actor(args.as_, admin=args.admin, settings=settings.core)
    with _planning_backend(settings) as (planning, backend):
        core = composition.build_core(planning, backend, NullNotifier(), provisioning.SystemClock())
        parsed = parse.parse_command(
            text, requester_email=actor.email, resolve_user=_no_mentions, settings=core.settings
        )
        if isinstance(parsed, parse.Control):
            raise errors.InvalidInput(
                "`kfbot plan` shows the plan of a request: workspace new|delete, share, "
                "unshare, quota, token or token revoke."
            )
        plan, auto = services.preview(core, actor, parsed)
        s = render.SHELL
        print(f"Request: {s.esc(parsed.describe())} ({parsed.KIND}) by {actor.email}")
        print("Approval: " + (f"applies without an admin ({auto})" if auto else "needs an admin"))
        print(f"Provisioner: {planning.mode}")
        print(f"Plan ({len(plan.steps)} steps):")
        print(render.plan_full(plan, s, backend.render_step))
        print("Nothing was applied or recorded.")
        return EXIT_OK


# -- migrate and audit -------------------------------------------------------------------------------------


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    settings, backend = _maintenance_backend(settings, migrated=False)
    try:
        backend.migrate()
        print(f"Database {_describe_db(settings.provisioning.database_url)} is migrated.")
        return EXIT_OK
    finally:
        backend.close()


def audit_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="{verify,export}")
    verify = sub.add_parser("verify", help="check the HMAC chain; names the first bad row")
    verify.add_argument(
        "--expect-head", metavar="HASH", help="the head logged earlier (catches a truncated tail)"
    )
    export = sub.add_parser("export", help="print the audit log")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--since", type=_iso, metavar="ISO", help="only events at or after this time")


def _iso(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    settings, backend = _maintenance_backend(settings)
    try:
        settings.require_audit_key()
        if args.audit_command == "verify":
            result = backend.audit_verify(args.expect_head)
            if result.ok:
                print(f"ok: {result.rows} rows, chain intact; head {result.head}")
                return EXIT_OK
            print(f"FAILED: first bad row seq {result.first_bad_seq}: {result.problem}")
            return EXIT_FAILED
        try:
            for line in backend.audit_export(args.format, args.since):
                sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): say so once, and keep Python from printing a
            # second error when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            print("kfbot: the output was closed before the export finished (broken pipe).", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    finally:
        backend.close()


# -- doctor -----------------------------------------------------------------------------------------------


def doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--live",
        action="store_true",
        help="in dry-run, check Kubernetes, Kubeflow, Dex and AWS too (always checked when live)",
    )


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    return doctor.run(settings, live=args.live)


COMMANDS: dict[str, Subcommand] = {
    "serve": Subcommand(
        "run the Slack bot (Socket Mode when SLACK_APP_TOKEN is set, else HTTP)", _no_arguments, run_serve
    ),
    "shell": Subcommand(
        "the bot in your terminal, same core and provisioning as Slack", shell_arguments, run_shell
    ),
    "migrate": Subcommand("create or upgrade the database schema", _no_arguments, run_migrate),
    "plan": Subcommand(
        "print the plan of a /kf request; applies and records nothing", plan_arguments, run_plan
    ),
    "audit": Subcommand("verify or export the audit log", audit_arguments, run_audit),
    "doctor": Subcommand(
        "check Slack, the database, Kubernetes, Kubeflow, Dex and AWS access; prints what to fix",
        doctor_arguments,
        run_doctor,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfbot", description="kf-chatops: Kubeflow requests, approved in Slack."
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def _configure_logging(subcommand: str, settings: Settings) -> None:
    if subcommand == "serve":
        log.configure(fmt=settings.log.format, level=settings.log.level, provisioner=settings.mode)
    else:  # terminal commands: keep stderr quiet unless asked for DEBUG
        level = "DEBUG" if settings.log.level == "DEBUG" else "WARNING"
        log.configure(fmt="text", level=level, provisioner=settings.mode)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        _configure_logging(args.subcommand, settings)
        return COMMANDS[args.subcommand].run(args, settings)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"kfbot: setting error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except errors.KfError as exc:
        print(f"kfbot: {render.SHELL.message(exc.user_message)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
