"""How the heavy commands call networks: precision (autocast) and a batch size that halves
when the GPU runs out of memory.

The networks run in their own dtype (float32 for ddpm-tools sets) and, with
``precision`` ``bf16`` or ``fp16``, under :func:`torch.autocast`; everything after the
network (posterior, KL terms, bits/dim) stays float64. :class:`AdaptiveBatch` runs a
batch loop and, on ``torch.cuda.OutOfMemoryError``, halves the examples per call and
retries the same rows: the results are the same rows' results, only computed in smaller
calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ddpm_tools.errors import BadInputError

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,  # no autocast: the network's own dtype
    "bf16": torch.bfloat16,  # autocast to bfloat16 (Ampere or newer GPUs; also on CPU)
    "fp16": torch.float16,  # autocast to float16 (any CUDA GPU)
}
PRECISION_HELP = ("Network arithmetic: fp32 (default), bf16 or fp16 autocast; the KL math "
                  "stays float64.")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a BadInputError."""
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown --precision {precision!r}; choose "
                            f"{', '.join(PRECISIONS)}")
    return precision


@contextmanager
def network_precision(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Autocast to ``precision``'s dtype on ``device`` (nothing for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def module_dtype(net: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a network's parameters (float32 when it has none)."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError)


class AdaptiveBatch:
    """Examples per network call, halved (and said once through ``warn``) when a call runs
    out of GPU memory; the smaller size is kept for the rest of the run.

    Args:
        size: the examples per call to start with (``--batch-size``).
        warn: called once with one sentence when the size is first halved.
    """

    def __init__(self, size: int, warn: Callable[[str], None] | None = None) -> None:
        if size < 1:
            raise BadInputError(f"the batch size must be at least 1 (got {size})")
        self.size = size
        self.warn = warn
        self.halvings = 0  # how often the size was halved (for tests and diagnostics)
        self._said = False  # whether warn was called

    def run(self, n: int, body: Callable[[int, int], None]) -> None:
        """Call ``body(a, b)`` for consecutive row ranges [a, b) covering [0, n).

        ``body`` must be safe to repeat for the same rows (it writes its rows' results):
        a range that ran out of memory is retried in halves.
        """
        a = 0
        while a < n:
            b = min(n, a + self.size)
            try:
                body(a, b)
            except Exception as e:
                if not _is_oom(e):
                    raise
                self._halve(e)
                continue
            a = b
            if self.halvings and not self._said:  # the size that fits, said once
                self._said = True
                if self.warn is not None:
                    self.warn(f"the GPU ran out of memory: {self.size} examples per network "
                              "call from now on (--batch-size sets the start)")

    def _halve(self, e: BaseException) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.size == 1:
            raise BadInputError("one example per network call does not fit in the GPU's "
                                "memory; free the GPU or run with --device cpu") from e
        self.size = max(1, self.size // 2)
        self.halvings += 1
