"""The typer app and its error edge.

Every command module registers itself on :data:`app`. A :class:`DdpmToolsError`
raised anywhere below a command is printed as one sentence on stderr and the
process exits with code 2 (no traceback); click's own usage errors also exit 2.
Ctrl-C prints one sentence and exits with code 130.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ddpm_tools.cli.common import err_console
from ddpm_tools.errors import DdpmToolsError

INTERRUPTED = ("interrupted: every file written so far is complete (outputs are written "
               "atomically); rerun the same command to continue (training resumes from "
               "each member's last checkpoint)")


class _ErrorEdgeGroup(TyperGroup):
    """Catches the project's error family at the CLI edge."""

    def invoke(self, ctx: Any) -> Any:  # click's Context (vendored by newer typer)
        try:
            return super().invoke(ctx)
        except DdpmToolsError as e:
            msg = escape(str(e).rstrip())  # messages may hold [brackets]: not rich markup
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None


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
