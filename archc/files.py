"""The files archc reads and writes: clear errors on read, atomic sets on write.

Reading: `read_bytes` and `read_text` turn a missing file, a directory, a permission problem
or a file over 64 MiB (`TEXT_LIMIT`) into a `cannot read` diagnostic with the path, and text
that is not UTF-8 into a diagnostic at the line and column of the first bad byte.

Writing: `write_files({path: data})` writes each file to a temporary file in its own directory
(so the rename stays on one filesystem), flushes and fsyncs it, gives it the mode of the file it
replaces (a new file gets the umask's default), and only when every file of the set is
written renames them into place with `os.replace`. A failure before the renames (a full disk,
a read-only directory, an exporter that raises) removes the temporaries and leaves every
previous output byte-identical. `os.replace` replaces a symlink at the target with the new
file; it never writes through the link into its target.

The renames are the only window left: a crash between the renames of one set leaves some
files new and some old, each of them whole.

A target that exists and is not a regular file or a directory (`/dev/null`, `/dev/stdout`, a
FIFO, followed through symlinks) is written in place, after the rest of the set is staged: a
rename would replace the device node itself (as root, `--out /dev/null` turned /dev/null into
a regular file), and a stream has no earlier contents to keep. A write error there (ENOSPC on
`/dev/full`) is a `cannot write` diagnostic.

`data` is bytes, or a function that writes the file at the path it is given (safetensors and
NumPy writers want a path or a file, not bytes).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from archc.diagnostics import ArchcError, Diagnostic, Span

Data = bytes | Callable[[Path], None]


def cannot_read(path: str | Path, why: str, code: str = "E0004") -> ArchcError:
    return ArchcError([Diagnostic(code, f"cannot read `{path}`: {why}")])


def open_read(path: str | Path, what: str = "file"):
    """`open(path, "rb")`, or a `cannot read` error that says why (`what` names the kind of
    file expected, for the directory case)."""
    try:
        return open(path, "rb")  # the caller closes it
    except IsADirectoryError:
        raise cannot_read(path, f"it is a directory, not a {what}") from None
    except FileNotFoundError:
        raise cannot_read(path, "no such file") from None
    except OSError as e:
        raise cannot_read(path, _why(e)) from None


TEXT_LIMIT = 64 * 2**20  # a spec or a config.json; `/dev/zero` or a 10 GB file by mistake


def read_bytes(path: str | Path, what: str = "file", limit: int = TEXT_LIMIT) -> bytes:
    """The whole file, or `cannot read` when it holds more than `limit` bytes (read no
    further: a device such as /dev/zero never ends)."""
    with open_read(path, what) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise cannot_read(path, _why(e)) from None
    if len(data) > limit:
        raise cannot_read(path, f"it is over {limit // 2**20} MiB, too large for a {what}")
    return data


def decode(data: bytes, path: str | Path, code: str = "E0006") -> str:
    """UTF-8 text, or an error located at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        text = data.decode("utf-8", errors="replace")
        start = len(data[: e.start].decode("utf-8"))
        span = Span(str(path), start, start + 1)
        raise ArchcError([Diagnostic(code, f"`{path}` is not UTF-8 text: byte "
                                     f"0x{data[e.start]:02x} at offset {e.start}", span,
                                     "not UTF-8", help="save the file as UTF-8")],
                         {str(path): text}) from None


def read_text(path: str | Path, what: str = "file") -> str:
    return decode(read_bytes(path, what), path)


def cannot_write(path: str | Path, why: str) -> ArchcError:
    return ArchcError([Diagnostic("E0005", f"cannot write `{path}`: {why}")])


def write_files(files: dict[str | Path, Data]) -> None:
    staged: list[tuple[Path, Path]] = []
    streams = [(Path(p), d) for p, d in files.items() if _is_stream(Path(p))]
    current = None
    try:
        for path, data in files.items():
            current = Path(path)
            if not _is_stream(current):
                staged.append((_stage(current, data), current))
        for current, data in streams:
            _write(current, data)
        for tmp, current in staged:
            os.replace(tmp, current)
    except OSError as e:
        raise cannot_write(current, _why(e)) from None
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_file(path: str | Path, data: Data) -> None:
    write_files({path: data})


def _is_stream(path: Path) -> bool:
    """An existing target that is not a regular file or a directory: a device or a FIFO."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: /dev/stdout -> /proc/self/fd/1
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _write(path: Path, data: Data) -> None:
    """Write a device or FIFO in place, in one pass (no fsync: it does not apply to a
    stream). A writer function runs on a temporary file first: NumPy's zip writer seeks and
    reads back offsets, which a stream cannot give."""
    if not isinstance(data, bytes):
        with tempfile.TemporaryDirectory(prefix="archc-") as tmp:
            staged = Path(tmp) / path.name
            data(staged)
            data = staged.read_bytes()
    with open(path, "wb") as f:
        f.write(data)


def _stage(path: Path, data: Data) -> Path:
    parent = path.parent
    if not parent.is_dir():
        raise cannot_write(path, f"no such directory `{parent}`" if not parent.exists()
                           else f"`{parent}` is not a directory")
    if path.is_dir() and not path.is_symlink():
        raise cannot_write(path, "it is a directory")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    tmp = Path(name)
    try:
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            os.close(fd)
            data(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(path))
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _mode(path: Path) -> int:
    """The mode of the regular file being replaced; for a new file (or a replaced symlink),
    what `open` would have given it under the current umask."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _why(e: OSError) -> str:
    return (e.strerror or str(e)).lower()
