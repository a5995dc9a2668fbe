"""How every handler starts: one typed dependencies object, built lazily once per container.

    @dataclass(frozen=True)
    class Deps: ...                   # what the handler needs, typed

    def build() -> Deps: ...          # Settings.from_env(os.environ, needs=...) validated here

    deps = Lazy(build)                # the handler calls deps() on every invocation

Nothing is read from the environment at import, so tests and the local stack can import a
handler first and set the environment later; the first invocation of a container (its cold
start) builds the object, and a failure (a ConfigError naming the variable) fails that
invocation loudly and is retried on the next one. Tests call `deps.reset()` after changing the
environment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Lazy(Generic[T]):
    """A value built on first use, once per process (thread-safe), forgotten by `reset()`."""

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._value: T | None = None
        self._built = False
        self._lock = threading.Lock()

    def __call__(self) -> T:
        with self._lock:
            if not self._built:
                self._value = self._build()
                self._built = True
            return cast(T, self._value)

    def reset(self) -> None:
        with self._lock:
            self._value, self._built = None, False
