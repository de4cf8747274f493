"""Files every stage reads and writes: atomic writes, content hashes cached by file identity, the output lock.

- `atomic_write_bytes/text`: temp file (named `.NAME.shotcap-PID-RAND.tmp`) + fsync + rename, so an output is
  complete or absent; `remove_own_temps` deletes only temp files of that pattern, in the folders named.
- `file_sha256`: regular files only (a FIFO or a device named `*.mp4` would block or never end).
- `HashCache`: a source's sha256 keyed by (path, size, mtime_ns, device, inode) in OUT_DIR/.shotcap/hashes.jsonl,
  so a re-run over an unchanged corpus stats its files instead of reading them.
- `OutputLock`: one run per output folder; a second run says which process holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import sys
import time
from pathlib import Path

from .engine import BadInput, UsageError

STATE_DIR = ".shotcap"  # a stage's own bookkeeping inside its output folder (hash cache, lock)

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMP = re.compile(r"^\..+\.shotcap-\d+-[0-9a-f]{8}\.tmp$")


def temp_name(path: Path) -> Path:
    """A temp file beside `path` that no other process or run uses, recognisable by `remove_own_temps`."""
    return path.with_name(f".{path.name}.shotcap-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)  # the modes of a plain open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_own_temps(*folders) -> int:
    """Delete the temp files an interrupted write of ours left in these folders (not their subfolders).
    Only names of `temp_name`'s pattern: a user's own hidden or .tmp files are never touched."""
    removed = 0
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _TEMP.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed += 1
    return removed


# ---------------------------------------------------------------- content hashes

def open_regular(path):
    """Open a source for reading, refusing what is not a regular file (a FIFO, a device, a folder): reading
    those blocks or never ends. OSError (missing, unreadable) is bad input too: one line, the file's failure."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    except OSError as e:
        raise BadInput(f"cannot read file ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput("not a regular file (a pipe, device or folder)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        try:
            while block := f.read(chunk):
                h.update(block)
        except OSError as e:
            raise BadInput(f"cannot read file ({e.strerror or e})") from None
    return h.hexdigest()


class HashCache:
    """sha256 of source files, remembered by (path, size, mtime_ns, device, inode).

    Entries are appended to OUT_DIR/.shotcap/hashes.jsonl as they are computed (a kill loses none already
    written; a torn last line is ignored). `also`: other stage folders whose caches are read too (the input
    manifest's folder: caption-videos need not hash again what split-videos hashed). `rehash=True` ignores
    every cached entry (and rewrites them), for a full check."""

    def __init__(self, out_dir, also=(), rehash: bool = False):
        self.path = Path(out_dir) / STATE_DIR / "hashes.jsonl"
        self.rehash = rehash
        self.entries: dict[tuple, str] = {}
        self.hashed = 0  # files read in full by this object
        self.cached = 0
        if not rehash:
            for folder in [*also, out_dir]:
                self._load(Path(folder) / STATE_DIR / "hashes.jsonl")
        self._file = None

    def _load(self, path: Path) -> None:
        if not path.is_file():
            return
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                e = json.loads(line)
                self.entries[(e["path"], e["size"], e["mtime_ns"], e["dev"], e["ino"])] = e["sha256"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed run

    @staticmethod
    def identity(path) -> tuple:
        p = os.path.abspath(os.fsdecode(path))
        try:
            st = os.stat(p)
        except OSError as e:
            raise BadInput(f"cannot read file ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadInput("not a regular file (a pipe, device or folder)")
        return (p, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)  # json keeps undecodable names as \udcXX

    def sha256(self, path) -> str:
        """The file's content hash: from the cache when its identity is unchanged, else read in full."""
        key = self.identity(path)
        sha = self.entries.get(key)
        if sha is not None:
            self.cached += 1
            return sha
        sha = file_sha256(path)
        self.hashed += 1
        if self.identity(path) != key:  # changed while we read it: do not remember a hash of mixed content
            raise BadInput("file changed while being read (still being copied?)")
        self.entries[key] = sha
        self._append({"path": key[0], "size": key[1], "mtime_ns": key[2], "dev": key[3], "ino": key[4],
                      "sha256": sha})
        return sha

    def _append(self, entry: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------- one run per output folder

class LockError(UsageError):
    """Another run holds the output folder (a usage error: exit code 2)."""


class OutputLock:
    """An exclusive lock on OUT_DIR/.shotcap/lock for the length of a run (`with OutputLock(out, cmd, "split-videos")`).

    The kernel drops the lock when the process ends, however it ends, so a killed run never leaves the folder
    locked. The file names its holder, which a second run reports before exiting. `owner` claims the folder for
    one command (OUT_DIR/.shotcap/owner): another command is refused it, so that no stage writes its
    clips.parquet or failed.jsonl over another stage's."""

    def __init__(self, out_dir, command: str, owner: str | None = None):
        self.path = Path(out_dir) / STATE_DIR / "lock"
        self.command, self.owner = command, owner
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockError(f"{self.path.parent.parent} is in use by another run ({holder}); wait for it to "
                            f"finish or use another output folder") from None
        info = (f"{self.command}, pid {os.getpid()} on {socket.gethostname()}, "
                f"since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self.fd = fd
        if self.owner:
            self._claim()
        return self

    def _claim(self) -> None:
        mark = self.path.parent / "owner"
        try:
            held = mark.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            held = ""
        if held and held != self.owner:
            self.__exit__()
            raise LockError(f"{self.path.parent.parent} holds the output of {held}; give {self.owner} another "
                            f"output folder (no command writes over another one's files)")
        if not held:
            atomic_write_text(mark, self.owner + "\n")

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


def command_line() -> str:
    """The command being run, for the lock's holder line."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
