"""Builds and loads the custom op library (`permutohedral_ops.cc`, `lattice_convolution_ops.cc`,
`roi_pooling_ops.cc`).

The shared library is compiled on first use with the flags of the installed TensorFlow
(`tf.sysconfig.get_compile_flags()` / `get_link_flags()`, `g++ -O3 -std=c++17 -shared -fPIC`)
into a cache folder keyed by the TensorFlow version and a hash of the sources and flags:
`~/.cache/keras_dense/ops/<key>/permutohedral_ops.so`, or `$KERAS_DENSE_OPS_CACHE/<key>/...`.

- Concurrent first uses are safe: the build runs under an exclusive `fcntl` lock on
  `<key>/.lock`, writes to a temporary name and renames it into place, so a process either sees
  no library or a complete one.
- A failed compilation raises `OpBuildError` with the command and the compiler's output.
- Without a C++ compiler (`$CXX`, else `g++`, else `c++`) and no cached library,
  `load_library(required=False)` warns once and returns None; callers then use the pure-TF
  twin (`keras_dense.ops.permutohedral_tf`).

Command line: `python -m keras_dense.ops --build` builds the library if it is missing (what
`make install` runs); `--force` recompiles it (what `keras-dense build-ops` runs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import warnings

SOURCE_DIR = pathlib.Path(__file__).resolve().parent
SOURCES = ("permutohedral_ops.cc", "lattice_convolution_ops.cc", "roi_pooling_ops.cc")
HEADERS = ("lattice_rows.h", "parallel_for.h")  # hashed with the sources: a change rebuilds
LIBRARY_NAME = "permutohedral_ops.so"
CACHE_ENV = "KERAS_DENSE_OPS_CACHE"
DEFAULT_CACHE = pathlib.Path("~/.cache/keras_dense/ops")
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")

_lock = threading.Lock()
_library = None
_warned_no_compiler = False


class OpBuildError(RuntimeError):
    """The custom op library could not be compiled or loaded."""


def find_compiler() -> str | None:
    """Returns the C++ compiler to use: `$CXX` if set, else `g++`, else `c++` (None if absent)."""
    requested = os.environ.get("CXX")
    if requested:
        return shutil.which(requested)
    return shutil.which("g++") or shutil.which("c++")


def _tf_flags() -> tuple[list[str], list[str]]:
    import tensorflow as tf

    compile_flags = [f for f in tf.sysconfig.get_compile_flags() if not f.startswith("--std=")]
    return compile_flags, list(tf.sysconfig.get_link_flags())


def cache_key() -> str:
    """The cache folder name: TensorFlow version plus a hash of the sources and the flags."""
    import tensorflow as tf

    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update((SOURCE_DIR / name).read_bytes())
    compile_flags, link_flags = _tf_flags()
    digest.update(" ".join([*BASE_FLAGS, *compile_flags, *link_flags]).encode())
    return f"tf{tf.__version__}-{digest.hexdigest()[:16]}"


def cache_dir() -> pathlib.Path:
    """The folder holding the compiled library for this TensorFlow and these sources."""
    base = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return pathlib.Path(base).expanduser() / cache_key()


def library_path() -> pathlib.Path:
    """Where the compiled library is (or will be) cached."""
    return cache_dir() / LIBRARY_NAME


def compile_command(compiler: str, output: os.PathLike | str) -> list[str]:
    """The compiler invocation that builds the library into `output`."""
    compile_flags, link_flags = _tf_flags()
    sources = [str(SOURCE_DIR / name) for name in SOURCES]
    return [compiler, *BASE_FLAGS, *compile_flags, *sources, "-o", str(output), *link_flags]


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_library(force: bool = False, verbose: bool = False) -> pathlib.Path:
    """Compiles the op library into the cache unless it is already there.

    Args:
        force: Recompile even when the cached library exists.
        verbose: Print the compiler command.

    Returns:
        The path of the compiled library.

    Raises:
        OpBuildError: No compiler was found, or compilation failed (the message holds the
            command and the compiler's output).
    """
    target = library_path()
    if target.exists() and not force:
        return target
    compiler = find_compiler()
    if compiler is None:
        raise OpBuildError(
            "no C++ compiler found (set $CXX or install g++) to build the permutohedral op"
        )
    with _file_lock(target.parent / ".lock"):
        # Another process may have finished the build while we waited for the lock.
        if target.exists() and not force:
            return target
        temporary = target.with_name(f".{LIBRARY_NAME}.{os.getpid()}.tmp")
        command = compile_command(compiler, temporary)
        if verbose:
            print(" ".join(command), flush=True)
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as error:
            raise OpBuildError(f"could not run the compiler {compiler!r}: {error}") from error
        if result.returncode != 0 or not temporary.exists():
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise OpBuildError(
                "compiling the permutohedral op failed (exit status "
                f"{result.returncode}).\ncommand: {' '.join(command)}\n"
                f"compiler output:\n{result.stdout}{result.stderr}"
            )
        os.replace(temporary, target)
    return target


def load_library(required: bool = True):
    """Loads the op library, compiling it first if it is not cached.

    Args:
        required: When False and no compiler is available (and nothing is cached), warn once
            and return None instead of raising.

    Returns:
        The module returned by `tf.load_op_library`, or None (see `required`).

    Raises:
        OpBuildError: Compilation or loading failed, or no compiler while `required`.
    """
    global _library, _warned_no_compiler
    with _lock:
        if _library is not None:
            return _library
        if not library_path().exists() and find_compiler() is None and not required:
            if not _warned_no_compiler:
                _warned_no_compiler = True
                warnings.warn(
                    "keras_dense: no C++ compiler to build the permutohedral custom op; using "
                    "the pure-TensorFlow implementation (slower on CPU). Install g++ and run "
                    "`keras-dense build-ops` for the fast path.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        path = build_library()
        import tensorflow as tf

        try:
            _library = tf.load_op_library(str(path))
        except Exception as error:  # noqa: BLE001 - TF raises several types here
            raise OpBuildError(
                f"could not load the permutohedral op library {path}: {error}. Rebuild it "
                "with `keras-dense build-ops`."
            ) from error
        return _library


def main(argv: list[str] | None = None) -> int:
    """Command line: build (`--build`) or rebuild (`--force`) the op library."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_dense.ops",
        description="Build the permutohedral-lattice TensorFlow op library into the cache.",
    )
    parser.add_argument("--build", action="store_true", help="build it if missing (default)")
    parser.add_argument("--force", action="store_true", help="recompile even if cached")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        path = build_library(force=args.force, verbose=True)
        load_library()
    except OpBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"permutohedral op library: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
