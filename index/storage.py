"""The storage layer: every path a user gives is a local path or an fsspec URL (s3://, gs://, az://, file://).

    out = location("s3://bucket/work/split")      # a UPath; a local path stays a plain pathlib.Path
    write_bytes(out / "clips.parquet", data)        # atomic in the store's own way
    with open_read(out / "raw" / "a.mp4") as f: ... # range reads (PyAV reads from this file object)

- Local paths (and `file://` URLs) are `pathlib.Path`: everything a stage does on a folder keeps working as before,
  with writes as temp file + fsync + rename (`index.files.atomic_write_bytes`).
- URLs are `upath.UPath` over fsspec: credentials and endpoints come from each store's standard configuration (for
  S3 the usual `AWS_*` variables, `AWS_ENDPOINT_URL`, profiles, instance roles); nothing about a bucket is written
  here. An object is written with one PUT (a multipart upload for large files), so it appears only when complete:
  there is no rename, and no half-written object is ever visible under its final name.
- A missing driver (gcsfs, adlfs), an unreachable store, missing credentials or a missing bucket is a
  `StorageError`: one line, exit status 2, found before any work (`check_store`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .engine import BadInput, UsageError

# the package that brings each scheme's fsspec driver
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
           "abfss": "adlfs", "hf": "huggingface_hub", "http": "aiohttp", "https": "aiohttp"}
READ_BLOCK = 8 << 20  # bytes per range read of a remote source (read ahead: one decode reads a file in order)
LOCAL = ("", "file", "local")


class StorageError(UsageError):
    """A store that cannot be used as asked (no driver, unreachable, no credentials, no bucket): one line."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path) -> str:
    """'s3' for 's3://bucket/key', '' for a local path."""
    m = _SCHEME.match(os.fsdecode(path) if isinstance(path, bytes) else str(path))
    return m.group(1).lower() if m else ""


def is_remote(path) -> bool:
    """True for a URL of an object store or other non-local filesystem."""
    if isinstance(path, Path) and not _is_upath(path):
        return False
    protocol = getattr(path, "protocol", None)
    if protocol is not None:
        return protocol not in LOCAL
    return scheme(path) not in LOCAL


def _is_upath(path) -> bool:
    try:
        from upath import UPath
    except ImportError:  # pragma: no cover - a dependency
        return False
    return isinstance(path, UPath) and getattr(path, "protocol", "") not in LOCAL


def location(path):
    """A user's path as an object with pathlib's `/`, `.name`, `.parent`: `Path` when local, `UPath` otherwise."""
    if isinstance(path, Path) and not _is_upath(path):
        return path
    if _is_upath(path):
        return path
    text = os.fsdecode(path)
    s = scheme(text)
    if s in LOCAL:
        return Path(text[len("file://"):] if s == "file" else text)
    try:
        from upath import UPath

        # no listings cache: another process (a worker, the next command) may have written there since
        return UPath(text, **({"use_listings_cache": False} if s in ("s3", "s3a") else {}))
    except (ImportError, ValueError) as e:  # an unknown scheme, or one whose driver is missing
        raise StorageError(_driver_message(s, e)) from None


def _driver_message(s: str, error: Exception | None = None) -> str:
    pkg = DRIVERS.get(s)
    if pkg:
        return f"{s}:// needs the {pkg} package: pip install {pkg}"
    return f"{s}:// is not a storage scheme fsspec knows ({' '.join(str(error).split())[:120] if error else ''})"


def text(path) -> str:
    """The path as the user would write it (a URL keeps its scheme)."""
    return str(path)


def fs_path(path) -> tuple:
    """(fsspec filesystem, path inside it) of a remote location."""
    loc = location(path)
    return loc.fs, loc.path


# ---------------------------------------------------------------- reading

def exists(path) -> bool:
    return location(path).exists()


def is_dir(path) -> bool:
    return location(path).is_dir()


def is_file(path) -> bool:
    return location(path).is_file()


def read_bytes(path) -> bytes:
    return location(path).read_bytes()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def listing(folder) -> dict[str, dict]:
    """{name: info} of the entries directly inside `folder`, in one listing ({} when it does not exist).
    `info` has `size`, `type` ("file"/"directory") and, remote, the store's own fields (ETag, LastModified)."""
    loc = location(folder)
    if not is_remote(loc):
        out = {}
        try:
            with os.scandir(loc) as it:
                for e in it:
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    out[e.name] = {"size": st.st_size, "type": "directory" if e.is_dir() else "file",
                                   "mtime_ns": st.st_mtime_ns}
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return out
    fs, p = fs_path(loc)
    try:
        entries = fs.ls(p, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries if e["name"].rstrip("/") != p.rstrip("/")}


def walk_files(folder, skip=None):
    """(location, info) of every file under `folder`, recursively, hidden entries (a name starting with '.')
    and the folder `skip` (an output inside the input) left out, in sorted path order. Local: os.walk, one folder
    at a time; remote: the store's recursive listing (one request per 1,000 objects on S3)."""
    loc = location(folder)
    if not is_remote(loc):
        skip = Path(skip).absolute() if skip is not None and not is_remote(skip) else None
        for root, dirs, files in os.walk(loc):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or Path(root, d) != skip))
            for name in sorted(files):
                if not name.startswith("."):
                    p = Path(root, name)
                    try:
                        st = os.stat(p)
                    except OSError:
                        st = None
                    yield p, {"size": st.st_size if st else None}
        return
    fs, base = fs_path(loc)
    found = fs.find(base, detail=True, withdirs=False)
    prefix = base.rstrip("/") + "/"
    skipped = (location(skip).path.rstrip("/") + "/") if skip is not None and is_remote(skip) else None
    for name in sorted(found):
        rel = name[len(prefix):] if name.startswith(prefix) else name
        if any(part.startswith(".") for part in rel.split("/")) or (skipped and name.startswith(skipped)):
            continue
        yield loc / rel, found[name]


def open_read(path, block_size: int = READ_BLOCK):
    """A binary file object for reading a source. Local: a regular file only (a FIFO or device would block);
    remote: range reads of `block_size` ahead, so a sequential decode costs size / block_size requests.
    A missing or unreadable source is bad input (`BadInput`)."""
    loc = location(path)
    if not is_remote(loc):
        from .files import open_regular

        return open_regular(loc)
    fs, p = fs_path(loc)
    try:
        return fs.open(p, "rb", block_size=block_size, cache_type="readahead")
    except FileNotFoundError:
        raise BadInput("file not found") from None
    except (OSError, PermissionError) as e:
        raise BadInput(f"cannot read object ({' '.join(str(e).split())[:160]})") from None


@contextlib.contextmanager
def local_copy(path, block_size: int = READ_BLOCK):
    """A local path holding `path`'s bytes for a reader that passes over a source more than once (a demux, then a
    decode): a local path as it is; an object copied once to a temporary file (one source's size of local disk,
    removed at the end), so the store serves each byte once instead of once per pass."""
    loc = location(path)
    if not is_remote(loc):
        yield loc
        return
    fd, tmp = tempfile.mkstemp(prefix="shotcap-source-", suffix=loc.suffix)
    try:
        with os.fdopen(fd, "wb") as out, open_read(loc, block_size) as src:
            shutil.copyfileobj(src, out, block_size)
        yield Path(tmp)
    finally:
        os.unlink(tmp)


def identity(path) -> tuple:
    """What says a source is unchanged without reading it: (path, size, mtime_ns, device, inode) on disk,
    (url, size, ETag or modification time, '', '') on a store. Raises BadInput when it cannot be stat'ed."""
    loc = location(path)
    if not is_remote(loc):
        p = os.path.abspath(os.fsdecode(loc))
        try:
            st = os.stat(p)
        except OSError as e:
            raise BadInput(f"cannot read file ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadInput("not a regular file (a pipe, device or folder)")
        return (p, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
    fs, p = fs_path(loc)
    try:
        info = fs.info(p)
    except FileNotFoundError:
        raise BadInput("file not found") from None
    except OSError as e:
        raise BadInput(f"cannot read object ({' '.join(str(e).split())[:160]})") from None
    return remote_identity(loc, info)


def remote_identity(loc, info: dict) -> tuple:
    """`identity` from a listing entry (no request of its own)."""
    if info.get("type") == "directory":
        raise BadInput("not a regular file (a folder)")
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or str(info.get("LastModified") or
                                                                           info.get("mtime") or "")
    return (str(loc), int(info.get("size") or 0), str(tag).strip('"'), "", "")


# ---------------------------------------------------------------- writing

def write_bytes(path, data: bytes) -> object:
    """Write `data` so that `path` holds either the old content or all of the new one, never a part."""
    loc = location(path)
    if not is_remote(loc):
        from .files import atomic_write_bytes

        return atomic_write_bytes(loc, data)
    fs, p = fs_path(loc)
    fs.pipe_file(p, bytes(data))  # one PUT (multipart above 100 MB): the object appears when complete
    return loc


def write_text(path, text_: str) -> object:
    return write_bytes(path, text_.encode("utf-8"))


def upload(local_file, path) -> object:
    """Place a finished local file at `path` (a rename on disk, an upload to a store); the local file is gone."""
    loc = location(path)
    if not is_remote(loc):
        loc.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_file, loc)
        return loc
    fs, p = fs_path(loc)
    try:
        fs.put_file(os.fspath(local_file), p)  # multipart for large files: the object appears when complete
    finally:
        Path(local_file).unlink(missing_ok=True)
    return loc


def create_exclusive(path, data: bytes) -> bool:
    """Create `path` holding `data` only if nothing is there; False when something is. On disk O_EXCL; on S3 a
    conditional PUT (If-None-Match); elsewhere a check then a write (a race two runs could both win: see README)."""
    loc = location(path)
    if not is_remote(loc):
        from .files import atomic_write_bytes

        loc.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(loc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        os.close(fd)
        atomic_write_bytes(loc, data)
        return True
    fs, p = fs_path(loc)
    if loc.protocol in ("s3", "s3a"):
        try:
            fs.pipe_file(p, bytes(data), mode="create")
        except FileExistsError:
            return False
        return True
    if fs.exists(p):
        return False
    fs.pipe_file(p, bytes(data))
    return True


def remove(path) -> None:
    """Delete one file of ours (nothing when it is already gone)."""
    loc = location(path)
    if not is_remote(loc):
        Path(loc).unlink(missing_ok=True)
        return
    fs, p = fs_path(loc)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        pass


def remove_many(paths) -> None:
    paths = [location(p) for p in paths]
    remote = [p for p in paths if is_remote(p)]
    for p in paths:
        if not is_remote(p):
            Path(p).unlink(missing_ok=True)
    if remote:
        fs = remote[0].fs
        try:
            fs.rm([p.path for p in remote])  # batched deletes (1,000 keys per request on S3)
        except FileNotFoundError:
            pass


def makedirs(path) -> None:
    """A folder on disk; nothing on an object store (prefixes need no creating, and no bucket is ever created)."""
    loc = location(path)
    if not is_remote(loc):
        Path(loc).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- checks before any work

def check_store(path, what: str = "path") -> None:
    """One request that tells whether the store at `path` can be used: raises StorageError with one line for a
    missing driver, missing credentials, an unreachable endpoint, a missing bucket or a refused access."""
    loc = location(path)
    if not is_remote(loc):
        return
    fs, p = fs_path(loc)
    root = p.split("/", 1)[0]
    try:
        fs.ls(root, refresh=True) if root else fs.ls("", refresh=True)
    except FileNotFoundError:
        raise StorageError(f"{what} {loc}: no bucket or container {root!r} there") from None
    except PermissionError as e:
        raise StorageError(f"{what} {loc}: access denied ({_brief(e)})") from None
    except Exception as e:  # the drivers raise their own types (botocore, aiohttp, google.auth, azure)
        name = type(e).__name__
        if "Credential" in name or "credential" in str(e).lower() or "NoAuth" in name:
            raise StorageError(f"{what} {loc}: no credentials for {loc.protocol}:// ({_brief(e)}); set them as the "
                               f"store's tools expect (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                               f"AWS_PROFILE or an instance role)") from None
        raise StorageError(f"{what} {loc}: cannot reach the store ({name}: {_brief(e)})") from None


def _brief(e: BaseException) -> str:
    return " ".join(str(e).split())[:160]
