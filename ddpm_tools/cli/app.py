"""The typer app and its error edge.

Every command module registers itself on :data:`app`. A :class:`DdpmToolsError`
raised anywhere below a command is printed as one sentence on stderr and the
process exits with code 2 (no traceback); click's own usage errors (unknown, missing or
malformed options) are one sentence too, exit 2. Every ``--seed`` is checked against
:data:`ddpm_tools.core.limits.MAX_SEED`. Ctrl-C prints one sentence and exits with code
130; SIGTERM is handled the same way (every worker stopped) and exits with code 143.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ddpm_tools.cli.common import err_console
from ddpm_tools.core.limits import check_seed
from ddpm_tools.errors import DdpmToolsError

INTERRUPTED = ("interrupted: every file written so far is complete (outputs are written "
               "atomically); rerun the same command to continue (training resumes from "
               "each member's last checkpoint)")
# what an interrupted command keeps, and how to continue, where it differs from INTERRUPTED
INTERRUPTED_BY_COMMAND = {
    "cost-table": ("interrupted: the columns computed so far are saved in the table's "
                   ".partial file next to --out; rerun the same command with --resume to "
                   "compute only the missing ones"),
}
TERMINATED_EXIT = 143  # 128 + SIGTERM, as a shell reports a terminated process


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, ``kill PID``), handled like Ctrl-C: every worker
    is stopped and one sentence printed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


# click's UsageError and ClickException, found through typer's public BadParameter (newer
# typer vendors click, older typer re-exports it): BadParameter -> UsageError -> ClickException
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]
_CLICK_EXCEPTION: type[Exception] = typer.BadParameter.__mro__[2]


def _given(argv: list[str], opts: list[str]) -> str | None:
    """The value given on the command line ``argv`` to the option named ``opts``."""
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1:]
    return None


def usage_sentence(e: Any, argv: list[str] | None = None) -> str:
    """A click/typer usage error (bad choice, not an integer, missing or unknown option) as
    one sentence: option, value (found in ``argv``) and what is accepted, then where to
    read more."""
    msg = " ".join(str(e.format_message()).split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    opts = list(getattr(getattr(e, "param", None), "opts", None) or [])
    value = _given(argv or [], opts) if opts else None
    if value is not None:
        msg += f" (got {value!r})"
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "ddpm-tools"
    return f"{msg}; see {path} --help for the accepted options and values"


def _check_seeds(cmd: Any) -> None:
    """Every command's --seed must be in [0, MAX_SEED]: its callback checks it first."""
    callback = getattr(cmd, "callback", None)
    if callback is not None and not getattr(callback, "_seed_checked", False):
        @functools.wraps(callback)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if isinstance(kwargs.get("seed"), int):
                check_seed(kwargs["seed"])
            return callback(*args, **kwargs)

        checked._seed_checked = True  # type: ignore[attr-defined]
        cmd.callback = checked
    for sub in (getattr(cmd, "commands", None) or {}).values():
        _check_seeds(sub)


class _ErrorEdgeGroup(TyperGroup):
    """Catches the project's error family at the CLI edge."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _check_seeds(cmd)
        return cmd

    def main(self, *args: Any, standalone_mode: bool = True,  # type: ignore[override]
             **kwargs: Any) -> Any:
        """click's main, with a usage error printed as one sentence (exit 2)."""
        kwargs["standalone_mode"] = False  # errors come back here instead of being printed
        if not standalone_mode:
            return super().main(*args, **kwargs)
        try:
            rv = super().main(*args, **kwargs)
        except _USAGE_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare command: its help
                e.show()  # type: ignore[attr-defined]
                sys.exit(0)
            argv = kwargs.get("args") or (args[0] if args else None) or sys.argv[1:]
            msg = escape(usage_sentence(e, [str(a) for a in argv]))
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except _CLICK_EXCEPTION as e:
            e.show()  # type: ignore[attr-defined]
            sys.exit(getattr(e, "exit_code", 1))
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: Any) -> Any:  # click's Context (vendored by newer typer)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except Terminated:
            what = INTERRUPTED_BY_COMMAND.get(str(ctx.invoked_subcommand), INTERRUPTED)
            err_console.print("terminated (SIGTERM)" + what.removeprefix("interrupted"),
                              highlight=False, soft_wrap=True)
            raise typer.Exit(TERMINATED_EXIT) from None
        except DdpmToolsError as e:
            msg = escape(str(e).rstrip())  # messages may hold [brackets]: not rich markup
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            what = INTERRUPTED_BY_COMMAND.get(str(ctx.invoked_subcommand), INTERRUPTED)
            err_console.print(what, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


app = typer.Typer(
    name="ddpm-tools",
    cls=_ErrorEdgeGroup,
    help=(
        "Train DDPMs as sets of per-interval networks, measure every denoising step once "
        "(the KL cost table), find ELBO-optimal K-step schedules exactly, and evaluate "
        "bits/dim and samples for any schedule."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Train DDPMs as sets of per-interval networks, measure every denoising step once
    (the KL cost table), find ELBO-optimal K-step schedules exactly, and evaluate
    bits/dim and samples for any schedule. Units: nats inside, bits/dim when reporting."""
