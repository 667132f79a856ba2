"""A process-wide memo for kernel builders.

Parsing a TVMScript kernel is slow: a grouped VNNI decode kernel takes ~0.7 s, and the
TVMScript parser accounted for half the time of the CPU backend's tests (cProfile of
``tests/backends/test_cpu_vnni.py`` and three more files: 182 of 345 s). The builders are pure
functions of their arguments (shapes, dtypes, options; the modules' constants), so a process
that lowers the same kernel twice (a test worker, a Python session calling ``compile_model`` on
variants of one model, the GPU check's three ``llama2-7b`` builds) parses it once. A PrimFunc is immutable: callers that rename
it or add attributes get new objects, and the memoized one is shared safely between modules.

Arguments must be hashable to be memoized (ints, strings, floats, tuples, frozen dataclasses);
a call with an unhashable argument is built afresh. ``typed=True``: ``1`` and ``1.0`` are
different keys (they build different kernels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: kernels kept per builder (the least recently used go first)
MAXSIZE = 256


def kernel_memo(fn: F) -> F:
    """Memoize the kernel builder ``fn`` for the life of the process (see the module docstring).

    >>> @kernel_memo
    ... def square(n: int) -> int:
    ...     return n * n
    """
    cached = functools.lru_cache(maxsize=MAXSIZE, typed=True)(fn)

    @functools.wraps(fn)
    def builder(*args: Any, **kwargs: Any) -> Any:
        try:
            hash((args, tuple(kwargs.items())))
        except TypeError:  # e.g. a list argument: no memo, the same result
            return fn(*args, **kwargs)
        return cached(*args, **kwargs)

    builder.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    builder.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return builder  # type: ignore[return-value]


__all__ = ["MAXSIZE", "kernel_memo"]
