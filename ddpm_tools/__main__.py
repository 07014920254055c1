"""``python -m ddpm_tools``: the same command line as ``ddpm-tools``."""

from ddpm_tools.cli.main import main

if __name__ == "__main__":
    main()
