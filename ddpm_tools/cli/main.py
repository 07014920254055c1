"""Entry point of the ``ddpm-tools`` console script: imports every command module."""

from __future__ import annotations

from ddpm_tools.cli import (  # noqa: F401  (each module registers its commands)
    cmd_costs,
    cmd_demo,
    cmd_eval,
    cmd_eval_samples,
    cmd_export,
    cmd_import,
    cmd_inspect,
    cmd_optimize,
    cmd_partition,
    cmd_prior,
    cmd_train,
    cmd_version,
)
from ddpm_tools.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI."""
    app()


if __name__ == "__main__":  # python -m ddpm_tools.cli.main (as under torchrun)
    main()
