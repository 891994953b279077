"""Writing files so that nothing is ever half-written, overwritten by surprise or written where it
must not be. Every command that writes goes through here.

- atomic_write: a temporary file in the same folder, fsync, then a rename over the target, so a
  reader (or a crash) sees the old file or the new one, never part of one. It never replaces a
  folder, device node, FIFO or socket, and a full disk or an unwritable folder is one OutputError.
- write_output / check_output: a file the user asked for (--out, --save-preprocessed). It must not
  exist unless force is given, must be a regular file (not a symbolic link, device or FIFO), and
  is never one of the command's own inputs, not even with force. Checked before any work is done.
- make_dir / new_dir: an output folder, with the same one-line errors.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import CnnlabError

# The process's umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(CnnlabError):
    """An output cannot be written where it was asked for (exists, not a regular file, an input,
    an unwritable folder, a full disk)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _hint(err: int) -> str:
    if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space (or choose another place) and run the command again"
    if err in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write to"
    return "choose another place to write to"


def write_failed(path, e: OSError) -> OutputError:
    """The one-line error for an OSError met while writing `path`."""
    reason = e.strerror or str(e)
    return OutputError(f"cannot write {path}: {reason}; {_hint(e.errno)} (nothing was half-written)")


def _lstat(path: Path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise write_failed(path, e) from None


def atomic_write(path: str | os.PathLike, content: bytes | str, *, replace: bool = True) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    replace=False creates the file only if nothing is there (atomically: a file that appears
    meanwhile is not replaced). An existing target that is not a regular file (or a symbolic link,
    which the rename replaces; its target is never written) is refused either way.
    """
    path = Path(path)
    if isinstance(content, str):
        content = content.encode()
    st = _lstat(path)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise OutputError(f"{path} is {_kind(st.st_mode)}; cnnlab writes only regular files - choose another name")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode an ordinary open() would (0666 - umask).
        os.chmod(tmp, 0o666 & ~_UMASK)
        if replace:
            os.replace(tmp, path)
        else:
            _create(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _create(tmp: str, path: Path) -> None:
    """Rename tmp to path only if path does not exist: a hard link fails on an existing name."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(f"{path} appeared while cnnlab was writing it; nothing was replaced") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links (FAT, some network mounts): check, then rename.
        if os.path.lexists(path):
            raise OutputError(f"{path} appeared while cnnlab was writing it; nothing was replaced") from None
        os.rename(tmp, path)


def write_json(path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


# --- outputs the user named ---------------------------------------------------------------------------

def _ids(paths) -> set:
    ids = set()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def probe_dir(path: str | os.PathLike, flag: str = "--out", output=None) -> None:
    """Refuse, before any work, a place nothing can be written to (read-only, /proc, no permission):
    create and remove an empty file in `path`, or in its nearest existing parent folder. `output`
    is what the user named, for the message."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cnnlab-probe.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{flag} {output or path}: cannot write in {folder} ({e.strerror or e}); "
                          f"{_hint(e.errno)}") from None
    os.close(fd)
    os.unlink(tmp)


def check_outputs(paths, *, force: bool = False, inputs=(), flag: str = "--out",
                  parent_must_exist: bool = True) -> list[Path]:
    """Refuse, before any work, outputs whose writing could destroy something: an existing file
    (unless force), anything but a regular file (a link, folder, device or FIFO), or one of the
    command's own `inputs` (never, not even with force); and a place nothing can be written to."""
    checked, input_ids, probed = [], None, set()
    for path in map(Path, paths):
        st = _lstat(path)
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{flag} {path} is {_kind(st.st_mode)}; cnnlab writes only regular files - "
                                  f"choose another name")
            input_ids = _ids(inputs) if input_ids is None else input_ids
            if (st.st_dev, st.st_ino) in input_ids:
                raise OutputError(f"{flag} {path} is one of this command's own inputs; choose another name "
                                  f"(not even --force overwrites an input)")
            if not force:
                raise OutputError(f"{flag} {path} already exists; choose another name, or pass --force to "
                                  f"replace it")
        if parent_must_exist and not path.parent.is_dir():
            raise OutputError(f"{flag} {path}: folder {path.parent} does not exist; create it first")
        if path.parent not in probed:
            probe_dir(path.parent, flag, path)
            probed.add(path.parent)
        checked.append(path)
    return checked


def check_output(path: str | os.PathLike, *, force: bool = False, inputs=(), flag: str = "--out") -> Path:
    """check_outputs for one file."""
    return check_outputs([path], force=force, inputs=inputs, flag=flag)[0]


def write_output(path: str | os.PathLike, content: bytes | str, *, force: bool = False, inputs=(),
                 flag: str = "--out") -> Path:
    """check_output, then atomic_write: a new file, or with force a replaced regular file."""
    path = check_output(path, force=force, inputs=inputs, flag=flag)
    atomic_write(path, content, replace=force)
    return path


def make_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create a folder (and its parents) if needed; an existing non-folder or an unwritable place is
    one OutputError."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{flag} {path} exists and is not a folder; choose another name")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot create the folder ({e.strerror or e}); "
                          f"{_hint(e.errno)}") from None
    return path


def check_new_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder to fill from scratch must not exist yet, or be empty."""
    path = Path(path)
    if os.path.lexists(path) and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"{flag} {path} already exists and is not empty; choose a new folder "
                          f"(cnnlab never overwrites a run)")
    return path


def new_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """check_new_dir, then make_dir."""
    return make_dir(check_new_dir(path, flag), flag)
