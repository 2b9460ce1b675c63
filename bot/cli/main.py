"""The `bot` command line: the composition root for one-shot commands.

Exit codes: 0 ok; 1 runtime failure (database unreachable, a job failed); 2 bad
input (config, arguments, import files) with every problem listed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from bot.cli.args import UsageError
from bot.config import BotConfig, ConfigError, dump_effective, load

log = logging.getLogger("bot")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _setup_logging(verbose: int, service: bool = False) -> None:
    """One line per event: `<time> level=.. logger=.. msg=event=.. key=value ...`. The service
    (`bot run`) logs INFO and up to stdout (journald); other commands WARNING to stderr (-v
    INFO, -vv DEBUG). Known secrets are masked in every record (SecretMaskFilter)."""
    from bot.config.secrets import LOG_MASK, masking_formatter

    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 or service else logging.WARNING
    handler = logging.StreamHandler(sys.stdout if service else sys.stderr)
    handler.setFormatter(masking_formatter("%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"))  # type: ignore[arg-type]
    handler.addFilter(LOG_MASK)  # type: ignore[arg-type]
    logging.basicConfig(level=level, handlers=[handler])
    if verbose < 2:  # third-party chatter (APScheduler's every run, pybit's connects) above INFO unless -vv
        for name in ("apscheduler", "pybit", "websocket"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _dump_stacks_on_sigusr2() -> None:
    """`kill -USR2 <pid>`: every thread's stack to stderr (a hung service)."""
    import faulthandler
    import signal

    try:
        faulthandler.register(signal.SIGUSR2, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no SIGUSR2, or stderr is not a real file (embedded use)
        pass


def build_parser() -> argparse.ArgumentParser:
    from bot.cli import (
        backtest_cmd,
        data_cmds,
        evaluate_cmd,
        model_cmds,
        research_cmds,
        selection_cmds,
        service_cmds,
    )

    parser = argparse.ArgumentParser(prog="bot", description="Pairs-trading bot for Bybit USDT perpetuals")
    parser.add_argument("--config", metavar="PATH", help="config.yaml (else $BOT_CONFIG, ./config.yaml, the example)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="config_cmd", required=True)
    check = cfg.add_parser("check", help="validate and print the effective config (secrets masked)")
    check.add_argument("path", nargs="?", help="file to check (default: the one --config resolves)")
    check.set_defaults(func=cmd_config_check, needs_config=False)

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_cmd", required=True)
    mig = db.add_parser("migrate", help="apply pending schema migrations")
    mig.set_defaults(func=cmd_db_migrate)

    data_cmds.register(sub)
    backtest_cmd.register(sub)
    research_cmds.register(sub)
    model_cmds.register(sub)
    selection_cmds.register(sub)
    evaluate_cmd.register(sub)
    service_cmds.register(sub)
    return parser


def cmd_config_check(args: argparse.Namespace, _cfg: BotConfig | None) -> int:
    from bot.core.exchange.factory import check_live_keys

    cfg = load(args.path or args.config)
    print(dump_effective(cfg), end="")
    check_live_keys(cfg.exchange)  # mode: live without keys in the environment is a usage error (exit 2)
    print("# config OK", file=sys.stderr)
    return EXIT_OK


def cmd_db_migrate(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.migrate import current_version, migrate
    from bot.core.db.pool import open_database

    async def run() -> int:
        db = await open_database(cfg.database, run_migrations=False)
        try:
            async with db.pool.acquire() as conn:
                applied = await migrate(conn)
                version = await current_version(conn)
        finally:
            await db.close()
        print(f"schema at version {version}" + (f" (applied {applied})" if applied else " (up to date)"))
        return EXIT_OK

    return asyncio.run(run())


def run_command(func: Callable[[argparse.Namespace, Any], int], args: argparse.Namespace) -> int:
    """Run one command; every failure becomes one line per problem on stderr and its exit code."""
    from bot.core.db.migrate import SchemaTooNew
    from bot.core.db.pool import DatabaseUnavailable
    from bot.core.exchange.interface import ExchangeError
    from bot.core.importer import ImportFileError
    from bot.research.dataset import DatasetBusy
    from bot.research.model import DataFileError, ModelError
    from bot.research.pairs_file import PairsFileError

    try:
        cfg = load(args.config) if getattr(args, "needs_config", True) else None
        return func(args, cfg)
    except ConfigError as err:
        print(f"config error in {err.source}:", file=sys.stderr)
        for p in err.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as err:
        for p in err.problems or [str(err)]:
            print(f"error: {p}", file=sys.stderr)
        return EXIT_USAGE
    except (DatabaseUnavailable, SchemaTooNew, ModelError, ExchangeError, DatasetBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    except (ImportFileError, PairsFileError, DataFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as err:
        print(f"error: no such file: {err.filename or err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug or an unforeseen failure: one line, the traceback with -vv
        log.debug("traceback of the failure", exc_info=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: unexpected {type(err).__name__}{': ' + first if first else ''}"
              f"{'' if getattr(args, 'verbose', 0) > 1 else ' (-vv shows the traceback)'}", file=sys.stderr)
        return EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _dump_stacks_on_sigusr2()
    _setup_logging(args.verbose, service=args.command == "run")
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
