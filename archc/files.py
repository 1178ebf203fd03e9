"""The files archc reads and writes: clear errors on read, atomic sets on write.

Reading: `read_bytes` and `read_text` turn a missing file, a directory or a permission problem
into a `cannot read` diagnostic with the path, and text that is not UTF-8 into a diagnostic at
the line and column of the first bad byte.

Writing: `write_files({path: data})` writes each file to a temporary file in its own directory
(so the rename stays on one filesystem), flushes and fsyncs it, gives it the mode of the file it
replaces (a new file gets the umask's default), and only when every file of the set is
written renames them into place with `os.replace`. A failure before the renames (a full disk,
a read-only directory, an exporter that raises) removes the temporaries and leaves every
previous output byte-identical. `os.replace` replaces a symlink at the target with the new
file; it never writes through the link into its target.

The renames are the only window left: a crash between the renames of one set leaves some
files new and some old, each of them whole.

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


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    with open_read(path, what) as f:
        try:
            return f.read()
        except OSError as e:
            raise cannot_read(path, _why(e)) from None


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
    current = None
    try:
        for path, data in files.items():
            current = Path(path)
            staged.append((_stage(current, data), current))
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
