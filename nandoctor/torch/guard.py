"""The recorder's work inside the user's training loop: guarded, so that an error stops recording and not
the training, and timed, so that the sampler's cost cap sees what the sampled statistics cost.

Everything the recorder runs in the user's loop goes through here: the public calls (`entry_point`),
and the hooks PyTorch calls back (`Guard.timed`). After the first error the recorder is `broken`: it
warns once and every later call and hook does nothing (strict=True raises the error instead).
"""

from __future__ import annotations

import contextlib
import functools
import time
import traceback
import warnings
from collections.abc import Iterator


class Guard:
    """Whether recording has stopped after an error, the warnings already given, and the seconds of sampled
    work since the last rec.step (`cost`, read and reset there)."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.broken = False
        self.cost = 0.0
        self._warned: set[str] = set()

    def fail(self, where: str, exc: BaseException, stacklevel: int = 3) -> None:
        """A recorder bug must not stop the user's training: warn once, stop recording."""
        if self.strict:
            raise exc
        self.broken = True
        warnings.warn(f"nandoctor recorder disabled after an error in {where}: {exc!r}\n"
                      f"{traceback.format_exc()}", RuntimeWarning, stacklevel=stacklevel)

    def warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(text, RuntimeWarning, stacklevel=3)

    @contextlib.contextmanager
    def timed(self, where: str) -> Iterator[None]:
        """Sampled work in a hook: its time counts towards `cost`, and an error in it stops recording."""
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.fail(where, exc, stacklevel=5)  # the warning points where `fail` pointed from the hook itself
        finally:
            self.cost += time.perf_counter() - t0


def entry_point(where: str):
    """A public method called from the user's training loop: nothing once recording has stopped,
    and a recorder error stops recording (`Guard.fail`) instead of the training."""
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            if self.guard.broken or self.closed:
                return
            try:
                method(self, *args, **kwargs)
            except Exception as exc:
                self.guard.fail(where, exc)
        return guarded
    return wrap
