"""What both command lines share: the argument parser, exit codes, and the error-to-exit mapping.

A command never prints a traceback for a user's mistake or a fault of the environment: one line on
stderr names the problem, the exit code says what kind it was, and ``--debug`` (or ``ICHPREP_DEBUG=1``)
prints the traceback as well. The console entry points end the process with ``os._exit`` once the
streams are flushed: TensorFlow's input threads (and Dask's) can otherwise keep a finished or failed
process alive at interpreter shutdown (a tf.data iterator destroyed while holding the GIL waits for
reader threads that wait for the GIL).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
import traceback
from typing import Callable

from ichprep.errors import IchprepError, UsageError

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "UsageErrorParser",
           "Terminated", "run_main", "console_entry", "debug_requested"]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_TERMINATED = 130, 141, 143  # 128 + SIGINT, SIGPIPE, SIGTERM
DEBUG_FLAG = "--debug"
# Exceptions whose tracebacks hold tf.data iterators are kept alive until the process ends: freeing one
# destroys the iterator, which can deadlock (see the module docstring). A failed command exits right after.
_KEPT: list[BaseException] = []


class UsageErrorParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing usage."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that ``finally`` blocks (locks, clusters) run."""


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether a traceback was asked for, argv without ``--debug``)."""
    wanted = DEBUG_FLAG in argv or os.environ.get("ICHPREP_DEBUG", "") not in ("", "0")
    return wanted, [a for a in argv if a != DEBUG_FLAG]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    # TensorFlow wraps an error raised in an input pipeline's Python function with the op's name in
    # braces and that function's whole traceback: keep the message between the two.
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = text.split("Traceback (most recent call last)")[0]
    text = " ".join(text.split())  # library messages (Keras shape errors) span lines
    return text[:400] + ("..." if len(text) > 400 else "")


# botocore's / aiohttp's / Python's names for a connection that could not be made or was lost (matched by
# name: neither library is imported here).
_CONNECTION_ERRORS = frozenset({"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",
                                "ReadTimeoutError", "ClientConnectionError", "ServerDisconnectedError",
                                "ConnectionError"})


def _describe(exc: BaseException) -> tuple[str, int]:
    """(message, exit code) for an exception that reached the command line."""
    if isinstance(exc, UsageError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, IchprepError):
        return str(exc), EXIT_PROBLEM
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename!r}" if exc.filename else ""
        return f"no space left on the device{where}: free some space (or choose another output) and rerun " \
               "the same command; finished work is kept", EXIT_PROBLEM
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror or exc}: {exc.filename!r} is not writable or readable as needed", EXIT_PROBLEM
    if _CONNECTION_ERRORS & {c.__name__ for c in type(exc).__mro__}:
        return f"lost the connection to the storage service ({_one_line(exc)}): check the endpoint and the network, " \
               "then rerun the same command; finished work is kept", EXIT_PROBLEM
    if isinstance(exc, MemoryError):
        return "out of memory: use a smaller --batch-size or --image-size, or fewer workers", EXIT_PROBLEM
    return f"{type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)", EXIT_PROBLEM


def _raise_terminated(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise Terminated()


def run_main(prog: str, argv: list[str] | None, dispatch: Callable[[list[str]], int]) -> int:
    """Run ``dispatch(argv)`` and map whatever it raises to one line on stderr and an exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, argv = debug_requested(argv)
    if debug:  # what this process starts (Dask workers, their logs) sees it too
        os.environ["ICHPREP_DEBUG"] = "1"
    previous = None
    try:
        import threading

        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):  # not settable here (embedded interpreter)
        previous = None
    try:
        return dispatch(argv)
    except BrokenPipeError:  # the reader of our output left (``| head``): stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as exc:
        _KEPT.append(exc)
        print(f"{prog}: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        _KEPT.append(exc)
        print(f"{prog}: terminated (SIGTERM); finished work is kept, rerun the same command to resume",
              file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as exc:  # noqa: BLE001 -- the one place every error becomes an exit code
        _KEPT.append(exc)
        message, code = _describe(exc)
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def console_entry(main: Callable[[list[str] | None], int]) -> None:
    """The installed command: run ``main``, flush, and end the process at once with its exit code."""
    code = main(None)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(code))
