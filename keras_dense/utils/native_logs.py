"""Keeping TensorFlow's C++ log lines (absl, CUDA probing, oneDNN notices) out of the CLI.

TensorFlow's shared libraries log a few lines while they load, before absl's logging is
initialised: those go to the process's stderr (file descriptor 2) whatever
`TF_CPP_MIN_LOG_LEVEL` says ("WARNING: All log messages before absl::InitializeLog() ...",
`I0000 ... port.cc] oneDNN custom operations are on`, `cudart_stub.cc] Could not find cuda
drivers`). Later lines (the `E0000 ... cuda_platform.cc] failed call to cuInit` of a machine
without a GPU) obey `TF_CPP_MIN_LOG_LEVEL`, which TensorFlow reads once, so it must be set
before TensorFlow is imported.

`quiet_tensorflow()` does both: it sets `TF_CPP_MIN_LOG_LEVEL=3` (unless the user set it) and
imports TensorFlow with file descriptor 2 redirected to a temporary file, then writes back
every captured line that is not a native log line, so nothing else printed during the
import is lost. Python exceptions are unaffected: they are raised, not printed, and the CLI
reports them after the import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator

# absl / TensorFlow C++ log lines: `I0000 00:00:1796147410.375807    3908 port.cc:153] ...`
# (severity letter, MMDD), absl's pre-initialisation notice, and LiteRT's own "INFO:" lines.
NATIVE_LOG_LINE = re.compile(
    r"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ ]+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|INFO: (Created TensorFlow Lite|Initialized TensorFlow Lite)"
    r"|fully_quantize: \d)"
)

# Quiet unless the user chose a level: FATAL only.
QUIET_TF_LOG_LEVEL = "3"
# What `import keras_dense` sets for library users when the user chose no level.
LIBRARY_TF_LOG_LEVEL = "2"
_ENV = "TF_CPP_MIN_LOG_LEVEL"
_library_default = False


def set_library_log_level() -> None:
    """Sets `TF_CPP_MIN_LOG_LEVEL=2` (no C++ INFO/WARNING lines) unless the user set a level.

    `import keras_dense` calls it; the CLI later tells a level the user chose from this one.
    """
    global _library_default
    if _ENV not in os.environ:
        os.environ[_ENV] = LIBRARY_TF_LOG_LEVEL
        _library_default = True


def user_chose_log_level() -> bool:
    """Whether `TF_CPP_MIN_LOG_LEVEL` was set by the user rather than by keras_dense."""
    return _ENV in os.environ and not _library_default


def leave_tensorflow_logging() -> None:
    """Undoes keras_dense's own default level, so TensorFlow logs as it would alone (--verbose)."""
    global _library_default
    if _library_default:
        os.environ.pop(_ENV, None)
        _library_default = False


def is_native_log_line(line: str) -> bool:
    """Whether a line of stderr is one of TensorFlow's / absl's C++ log lines (not FATAL)."""
    return bool(NATIVE_LOG_LINE.match(line))


@contextlib.contextmanager
def filtered_native_stderr(
    keep: Callable[[str], bool] = lambda line: not is_native_log_line(line),
) -> Iterator[None]:
    """Redirects file descriptor 2 to a temporary file and writes back the lines to `keep`.

    Native code (TensorFlow's C++ logging, converters) writes to file descriptor 2 directly,
    past `sys.stderr`; this catches it. The kept lines are written to `sys.stderr` when the
    block ends, also when it raises.

    Args:
        keep: Which captured lines to write back (default: all but native log lines).
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (e.g. a daemon): nothing to filter
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if keep(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_tensorflow() -> None:
    """Imports TensorFlow without its C++ log noise and quiets its Python-side warnings.

    Call it before anything imports TensorFlow (the `keras-dense` entry point does, unless
    `--verbose`). A `TF_CPP_MIN_LOG_LEVEL` the user set wins. Python warnings raised from
    TensorFlow's and Keras's own modules (deprecation notices) are ignored; warnings and errors
    of keras_dense itself are not touched.
    """
    global _library_default
    if not user_chose_log_level():
        os.environ[_ENV] = QUIET_TF_LOG_LEVEL
        _library_default = True
    if "tensorflow" not in sys.modules:
        with filtered_native_stderr():
            import tensorflow  # noqa: F401
    for module in (r"tensorflow(\.|$)", r"keras(\.|$)", r"absl(\.|$)", r"ai_edge_litert(\.|$)"):
        warnings.filterwarnings("ignore", module=module)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
