"""The ``ddpm-tools`` command line: thin typer commands over the Python API."""
