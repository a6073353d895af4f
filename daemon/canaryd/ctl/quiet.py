"""How ``canaryctl`` and ``canaryd`` end when the terminal or the pipe ends them first.

Two ordinary events must not read as crashes: the reader of a pipe going away
(``canaryctl history web | head -1``) and Ctrl-C. Both are wrapped here, once, around each
program's ``main``, so that every command, present and future, gets the same ending:

- a closed pipe: exit 0, nothing on stderr. The reader stopped reading because it had what it
  wanted; that is not this program's failure, and ``set -o pipefail`` scripts that cut a
  listing short keep working (this was already canaryctl's answer for its API commands).
  stdout is pointed at ``/dev/null`` so the interpreter's final flush cannot raise again
  ("Exception ignored ... BrokenPipeError"), as the Python docs advise.
- Ctrl-C (SIGINT): exit 130, as shells report a command stopped by SIGINT (128 + 2), with a
  bare newline on stderr so the prompt starts on its own line, and no traceback. An
  ``asyncio`` program interrupted inside a task group may raise the interruption wrapped in an
  exception group, beside the cancellations it caused; that counts as Ctrl-C too.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def run_quietly(main: Callable[[], int]) -> int:
    """``main()``'s exit code; a closed stdout is exit 0 and Ctrl-C exit 130, both silent."""
    try:
        try:
            return main()
        finally:  # inside the guard: buffered output (argparse's --help too) meets the pipe here
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return _interrupted()
    except BaseExceptionGroup as group:
        if not _is_interruption(group):
            raise
        return _interrupted()


def _interrupted() -> int:
    try:
        sys.stderr.write("\n")
        sys.stderr.flush()
    except OSError:  # stderr gone too: nothing left to tell
        pass
    return EXIT_INTERRUPTED


def _is_interruption(group: BaseExceptionGroup) -> bool:
    """A group holding a ``KeyboardInterrupt`` and otherwise only the cancellations it caused."""
    leaves = _leaves(group)
    return any(isinstance(e, KeyboardInterrupt) for e in leaves) and all(
        isinstance(e, (KeyboardInterrupt, asyncio.CancelledError)) for e in leaves
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's last flush of stdout succeeds silently."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real fd behind stdout (embedded, tests)
        pass
