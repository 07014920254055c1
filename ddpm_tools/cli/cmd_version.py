"""``ddpm-tools version``."""

from __future__ import annotations

import platform

import numpy
import torch

from ddpm_tools import __version__
from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, console, print_json


@app.command()
def version(json_out: JsonOpt = False) -> None:
    """Print the version of ddpm-tools and of the libraries it runs on."""
    info = {
        "ddpm_tools": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if json_out:
        print_json(info)
    else:
        console.print(f"ddpm-tools {__version__}  (python {info['python']}, torch "
                      f"{info['torch']}, numpy {info['numpy']}, cuda "
                      f"{'yes' if info['cuda_available'] else 'no'})")
