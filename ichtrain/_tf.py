"""Import TensorFlow once, without its native start-up chatter on stderr.

TensorFlow's C++ logging ignores ``TF_CPP_MIN_LOG_LEVEL`` in current nightlies and prints several lines
at import and at the first device query (oneDNN notices; "failed call to cuInit" on a machine without a
GPU). A command's stderr is for its own messages, so file descriptor 2 points at /dev/null for those two
steps only; ``ICHPREP_DEBUG=1`` (or ``--debug``) leaves it alone.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ichprep.errors import MissingDependencyError

__all__ = ["import_tensorflow", "gpus"]


@contextlib.contextmanager
def _native_stderr_silenced():
    if os.environ.get("ICHPREP_DEBUG", "") not in ("", "0"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded, captured)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    """The tensorflow module, imported (and its devices listed) quietly; later calls cost nothing."""
    if "tensorflow" in sys.modules and getattr(import_tensorflow, "done", False):
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _native_stderr_silenced():
            import keras  # noqa: F401  (Keras 3 on the TensorFlow backend)
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
    except ImportError as exc:
        raise MissingDependencyError(
            f"ichtrain needs TensorFlow and Keras, which are not installed here ({exc}): install them with "
            "pip install 'ichprep[train]'") from None
    import_tensorflow.done = True
    return tf


def gpus() -> list:
    return import_tensorflow().config.list_physical_devices("GPU")
