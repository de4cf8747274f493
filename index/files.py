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
import shutil
import socket
import stat
import sys
import tempfile
import threading
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


def temp_file_for(path) -> str:
    """A new empty file to fill, then to place at `path` with `storage.upload`: beside it on disk (named as
    `temp_name` names, so that `remove_own_temps` finds it after a kill), in the system's temp folder for a store."""
    from .storage import is_remote

    if is_remote(path):
        fd, local = tempfile.mkstemp(prefix="shotcap-", suffix=Path(str(path)).suffix)
        os.close(fd)
        return local
    local = temp_name(Path(path))
    local.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK))
    return os.fspath(local)


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
    Only names of `temp_name`'s pattern: a user's own hidden or .tmp files are never touched. On an object
    store nothing is left to remove (an object appears only when complete)."""
    from .storage import is_remote

    removed = 0
    for folder in folders:
        if is_remote(folder):
            continue
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not _TEMP.match(p.name) or p.is_symlink():
                continue
            if p.is_file():
                p.unlink(missing_ok=True)
            elif p.is_dir():  # a folder of ours being filled (a manifest's files before they are placed)
                shutil.rmtree(p, ignore_errors=True)
            else:
                continue
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
    """The sha256 of a source, read in full (a local regular file, or an object streamed from its store)."""
    from . import storage

    h = hashlib.sha256()
    with storage.open_read(path) as f:
        try:
            while block := f.read(chunk):
                h.update(block)
        except OSError as e:
            raise BadInput(f"cannot read file ({e.strerror or e})") from None
    return h.hexdigest()


class HashCache:
    """sha256 of source files, remembered by their identity: (path, size, mtime_ns, device, inode) on disk,
    (url, size, ETag, '', '') on an object store (`index.storage.identity`).

    Entries are appended to OUT_DIR/.shotcap/hashes.jsonl as they are computed (a kill loses none already
    written; a torn last line is ignored); when OUT_DIR is on an object store, where nothing can be appended,
    new entries are written in batches as OUT_DIR/.shotcap/hashes-RUN-N.jsonl. `also`: other stage folders whose
    caches are read too (the input manifest's folder: caption-videos need not hash again what split-videos
    hashed). `rehash=True` ignores every cached entry (and rewrites them), for a full check."""

    BATCH = 500  # entries per object when appending is not possible

    def __init__(self, out_dir, also=(), rehash: bool = False):
        from . import storage

        self.out = storage.location(out_dir)
        self.path = self.out / STATE_DIR / "hashes.jsonl"
        self.remote = storage.is_remote(self.out)
        self.rehash = rehash
        self.entries: dict[tuple, str] = {}
        self.hashed = 0  # files read in full by this object
        self.cached = 0
        if not rehash:
            for folder in [*also, out_dir]:
                self._load(storage.location(folder) / STATE_DIR)
        self._file = None
        self._new: list = []
        self._token = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(3)}"
        self._seq = 0

    def _load(self, state) -> None:
        from . import storage

        names = sorted(n for n in storage.listing(state) if n.startswith("hashes") and n.endswith(".jsonl"))
        for name in names:
            try:
                text = storage.read_bytes(state / name).decode("utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                try:
                    e = json.loads(line)
                    self.entries[(e["path"], e["size"], e["mtime_ns"], e["dev"], e["ino"])] = e["sha256"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line from a killed run

    @staticmethod
    def identity(path, info: dict | None = None) -> tuple:
        """See `index.storage.identity`; `info`: a listing's entry for a remote source (no request of its own)."""
        from . import storage

        if info is not None and storage.is_remote(path):
            return storage.remote_identity(storage.location(path), info)
        return storage.identity(path)

    def sha256(self, path, info: dict | None = None) -> str:
        """The file's content hash: from the cache when its identity is unchanged, else read in full."""
        key = self.identity(path, info)
        sha = self.entries.get(key)
        if sha is not None:
            self.cached += 1
            return sha
        return self._remember(key, self._read(path, key))

    def sha256_many(self, items, threads: int | None = None):
        """(path, info, sha256 or the BadInput saying why not) for each (path, info) of `items`, in order. Files
        not in the cache are read on `threads` threads at once (SHOTCAP_HASH_THREADS, default 8): hashing is
        reading, and on a bucket each read waits on the network, so one reader at a time would make the listing
        of a large corpus take as long as the sum of its downloads. At most 4 x threads files are in flight."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        threads = int(threads or os.environ.get("SHOTCAP_HASH_THREADS", 8))

        def read(path, key):
            try:
                return self._read(path, key)
            except BadInput as e:
                return e

        def finish(path, info, key, got):
            if hasattr(got, "result"):  # read on a thread; remembered here, on the caller's
                got = got.result()
                if not isinstance(got, BadInput):
                    self._remember(key, got)
            return path, info, got

        window: deque = deque()
        with ThreadPoolExecutor(threads, thread_name_prefix="shotcap-hash") as pool:
            for path, info in items:
                try:
                    key = self.identity(path, info)
                except BadInput as e:
                    window.append((path, info, None, e))
                else:
                    sha = self.entries.get(key)
                    if sha is not None:
                        self.cached += 1
                    window.append((path, info, key, sha if sha is not None else pool.submit(read, path, key)))
                while window and (len(window) > 4 * threads or not hasattr(window[0][3], "result")
                                  or window[0][3].done()):
                    yield finish(*window.popleft())
            while window:
                yield finish(*window.popleft())

    def _read(self, path, key: tuple) -> str:
        sha = file_sha256(path)
        if self.identity(path) != key:  # changed while we read it: do not remember a hash of mixed content
            raise BadInput("file changed while being read (still being copied?)")
        return sha

    def _remember(self, key: tuple, sha: str) -> str:
        self.hashed += 1
        self.entries[key] = sha
        self._append({"path": key[0], "size": key[1], "mtime_ns": key[2], "dev": key[3], "ino": key[4],
                      "sha256": sha})
        return sha

    def _append(self, entry: dict) -> None:
        if self.remote:
            self._new.append(entry)
            if len(self._new) >= self.BATCH:
                self._write_batch()
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def _write_batch(self) -> None:
        from . import storage

        if not self._new:
            return
        self._seq += 1
        text = "".join(json.dumps(e) + "\n" for e in self._new)
        storage.write_text(self.out / STATE_DIR / f"hashes-{self._token}-{self._seq:04d}.jsonl", text)
        self._new = []

    def close(self) -> None:
        self._write_batch()
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

    On disk the kernel drops the lock (flock) when the process ends, however it ends, so a killed run never leaves
    the folder locked. On an object store the lock is a lease: an object created only if absent (a conditional PUT,
    If-None-Match, where the store has one: S3; elsewhere a check then a write, which two runs starting in the same
    instant could both pass), renewed every third of `LEASE_SECONDS` while the run lasts and deleted at its end. A
    lease whose holder stopped renewing (a killed run) lapses after `LEASE_SECONDS`, at once when its holder's
    process on this same machine is gone. The holder is named in the error a second run reports. `owner` claims the
    folder for one command (OUT_DIR/.shotcap/owner): another command is refused it, so that no stage writes its
    clips.parquet or failed.jsonl over another stage's."""

    LEASE_SECONDS = float(os.environ.get("SHOTCAP_LEASE_SECONDS", 120))

    def __init__(self, out_dir, command: str, owner: str | None = None):
        from . import storage

        self.out = storage.location(out_dir)
        self.path = self.out / STATE_DIR / "lock"
        self.remote = storage.is_remote(self.out)
        self.command, self.owner = command, owner
        self.fd = None
        self._lease = None

    def _holder(self) -> str:
        return (f"{self.command}, pid {os.getpid()} on {socket.gethostname()}, "
                f"since {time.strftime('%Y-%m-%d %H:%M:%S')}")

    def __enter__(self):
        if self.remote:
            self._take_lease()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise LockError(f"{self.out} is in use by another run ({holder}); wait for it to "
                                f"finish or use another output folder") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._holder().encode(), 0)
            self.fd = fd
            remove_own_temps(self.out)  # what a killed run of ours was writing here; the lock keeps any other out
        if self.owner:
            self._claim()
        return self

    # ------------------------------------------------------------ a lease on an object store
    def _lease_bytes(self) -> bytes:
        return json.dumps({"holder": self._holder(), "token": self._token, "host": socket.gethostname(),
                           "pid": os.getpid(), "expires": time.time() + self.LEASE_SECONDS}).encode()

    def _take_lease(self) -> None:
        from . import storage

        self._token = secrets.token_hex(8)
        for _ in range(3):
            if storage.create_exclusive(self.path, self._lease_bytes()):
                break
            try:
                held = json.loads(storage.read_bytes(self.path))
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except ValueError:
                held = {"holder": "a run whose lease cannot be read", "expires": 0}
            if not self._lapsed(held):
                left = max(0, int(held.get("expires", 0) - time.time()))
                raise LockError(f"{self.out} is in use by another run ({held.get('holder', 'another process')}); "
                                f"wait for it to finish or use another output folder (a killed run's lease lapses "
                                f"by itself in {left} s)")
            storage.remove(self.path)  # a lapsed lease: taken over
        else:
            raise LockError(f"{self.out}: could not take the output lock (other runs keep taking it)")
        self._stop = threading.Event()
        self._lease = threading.Thread(target=self._renew, name="shotcap-lease", daemon=True)
        self._lease.start()

    @staticmethod
    def _lapsed(held: dict) -> bool:
        if held.get("expires", 0) < time.time():
            return True
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
            try:
                os.kill(held["pid"], 0)
            except ProcessLookupError:
                return True  # its process on this machine is gone
            except PermissionError:
                return False
        return False

    def _renew(self) -> None:
        from . import storage

        while not self._stop.wait(self.LEASE_SECONDS / 3):
            try:
                storage.write_bytes(self.path, self._lease_bytes())
            except Exception as e:  # the store is unreachable for a moment: the next renewal tries again
                print(f"shotcap: could not renew the lease on {self.out} ({type(e).__name__})", file=sys.stderr)

    def _claim(self) -> None:
        from . import storage

        mark = self.path.parent / "owner"
        try:
            held = storage.read_text(mark).strip()
        except (FileNotFoundError, UnicodeDecodeError):
            held = ""
        if held and held != self.owner:
            self.__exit__()
            raise LockError(f"{self.out} holds the output of {held}; give {self.owner} another "
                            f"output folder (no command writes over another one's files)")
        if not held:
            storage.write_text(mark, self.owner + "\n")

    def __exit__(self, *exc):
        from . import storage

        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self._lease is not None:
            self._stop.set()
            self._lease.join()
            self._lease = None
            try:
                if json.loads(storage.read_bytes(self.path)).get("token") == self._token:
                    storage.remove(self.path)
            except (FileNotFoundError, ValueError):
                pass
        return False


def command_line() -> str:
    """The command being run, for the lock's holder line."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
