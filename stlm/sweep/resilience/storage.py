"""Where a sweep's experiment directory lives: a local (or NFS) path, or an object store (s3://bucket/prefix).

    st = storage.open("s3://bucket/sweeps/ffn")   # or "sweep_runs/ffn", an absolute path, an NFS mount
    st.remote          True for an object-store URI
    st.local           this machine's working directory: the path itself, or (remote) a mirror of
                       the driver's small files under $STLM_CACHE/experiments/<name>-<hash>
    st.ray("train")    the storage_path Ray Tune / Ray Train get: <uri>/train (Ray resolves the URI
                       with pyarrow, as every node does, from its own AWS_* settings)
    st.upload(rel)     the mirror's copy of a file or directory -> the bucket (nothing for a local path)
    st.changed(path)   a mirror file was rewritten: uploaded by a background thread within SYNC_S
    st.read_bytes(rel) / write_bytes / exists / names / delete / download: the bucket itself

A local path is the directory itself: `local` is the path, every upload is a no-op. With an
object store, Ray Tune's state and Ray Train's checkpoints go straight to the bucket (Ray uploads
them); the driver's files (plan.pkl, sweep.json, mlflow_state.json, the MLflow outbox, report/) are
written in the mirror and uploaded when written; trials' side files (trials/<id>/) and the cluster
data store (data/) are read and written through pyarrow.

Which copy of the driver's files wins on --resume: every driver session writes a fresh id to the
mirror and to the bucket (layout.SESSION). If the mirror's id is the bucket's, this machine ran the last
session and its mirror is at least as new as the bucket (a killed driver's last seconds were not
uploaded yet): it is kept and uploaded. Otherwise (another machine, or another session since) the
mirror is replaced by the bucket's copy.

The endpoint and credentials are pyarrow's (the AWS SDK's): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE or an instance profile; AWS_ENDPOINT_URL for an S3-compatible server (MinIO, Ceph,
moto); AWS_DEFAULT_REGION. A URI with a query string (?endpoint_override=...) is refused: Ray
joins paths onto the URI, and the query would end up in the middle of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from stlm.atomic import write_atomic
from stlm.errors import StlmError
from stlm.offline import offline_reason, unreachable
from stlm.sweep.resilience import layout

SYNC_S = 2.0  # the most a mirror file lags behind in the bucket (a killed driver loses at most this)
_ACTIVE: dict[str, Storage] = {}  # mirror root -> its Storage, in the driver (see changed())


def is_remote(uri) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def cache_root() -> Path:
    return Path(os.environ.get("STLM_CACHE") or "~/.cache/stlm").expanduser().absolute()


def filesystem(uri: str):
    """(pyarrow filesystem, path in it) of a local path or a URI such as s3://bucket/prefix."""
    import pyarrow.fs as pafs  # lazy: pyarrow only where a filesystem is used (not on `import stlm.sweep`)

    if "://" not in str(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(str(uri))


def read_fs_json(fs, path: str) -> dict | None:
    """The JSON file at `path` in pyarrow filesystem `fs`; None when it is missing, unreadable or not JSON."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (OSError, FileNotFoundError, ValueError):
        return None


def copy_file(src_fs, src: str, dst_fs, dst: str) -> None:
    """Stream one file between pyarrow filesystems (16 MiB at a time: corpora are large)."""
    with src_fs.open_input_stream(src) as r, dst_fs.open_output_stream(dst) as w:
        while chunk := r.read(1 << 24):
            w.write(chunk)


def open(uri) -> Storage:  # noqa: A001 - storage.open reads as what it is
    """The experiment directory at `uri` (a path or an s3:// URI)."""
    return Storage(uri)


class Storage:
    def __init__(self, uri, *, bucket_ok: bool = False):
        self.remote = is_remote(uri)
        if not self.remote:
            self.uri = str(Path(uri).expanduser().resolve())
            self.local = Path(self.uri)
            self._fs, self.root = None, self.uri
            return
        uri = str(uri).rstrip("/")
        scheme, _, rest = uri.partition("://")
        if "?" in uri or ("/" not in rest.strip("/") and not bucket_ok) or scheme not in ("s3", "gs", "abfs", "hdfs"):
            raise StlmError(
                f"--experiment-dir {uri!r}: use a local path (NFS on a cluster) or an object-store URI such as "
                "s3://bucket/prefix (a prefix inside the bucket: its lock object sits beside it), without a query "
                "string: the endpoint of an S3-compatible server goes in AWS_ENDPOINT_URL, credentials in the usual "
                "AWS_* variables or an instance profile."
            )
        self.uri = uri
        name = rest.rstrip("/").rsplit("/", 1)[-1]
        self.local = cache_root() / "experiments" / f"{name}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"
        self._fs, self.root = None, None
        self._dirty: set[str] = set()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    # ------------------------------------------------------------------ the bucket through pyarrow

    @property
    def fs(self):
        if self._fs is None:
            self._fs, root = filesystem(self.uri)
            if self.remote:
                self.root = root.rstrip("/")
        return self._fs

    def path(self, rel: str = "") -> str:
        """The fs path of `rel` under the experiment directory."""
        self.fs  # noqa: B018 - resolves root
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def ray(self, sub: str) -> str:
        """storage_path for Ray Tune / Ray Train (a URI for an object store, a path otherwise)."""
        return f"{self.uri}/{sub}"

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's content, None when there is none."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or "not found" in str(e).lower() or "NoSuchKey" in str(e):
                return None
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        if not self.remote:
            write_atomic(Path(self.path(rel)), data)
            return
        with self.fs.open_output_stream(self.path(rel)) as f:  # an S3 PUT: the object appears whole
            f.write(data)

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs  # lazy: pyarrow only once the bucket is used

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def names(self, rel: str = "") -> list[str]:
        """The entries directly under `rel` (empty when there is nothing)."""
        import pyarrow.fs as pafs  # lazy: pyarrow only once the bucket is used

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.base_name for i in infos)

    def delete(self, rel: str) -> None:
        """Delete a file or directory (all of it) if it is there."""
        import pyarrow.fs as pafs  # lazy: pyarrow only once the bucket is used

        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    def download(self, rel: str, dest: Path | None = None) -> Path | None:
        """Copy a file or directory of the bucket to `dest` (default: the same place in the mirror);
        None when the bucket has nothing there."""
        import pyarrow.fs as pafs  # lazy: pyarrow only once the bucket is used

        dest = Path(dest) if dest is not None else self.local / rel
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.NotFound:
            return None
        if info.type == pafs.FileType.File:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            pafs.copy_files(
                self.path(rel), str(tmp), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
            )
            os.replace(tmp, dest)
        else:  # whole or not at all: a download cut short is never taken for the directory
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            pafs.copy_files(
                self.path(rel), str(tmp), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
            )
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        return dest

    def upload(self, *rels: str) -> None:
        """The mirror's copies of these files / directories -> the bucket (no-op for a local path)."""
        if not self.remote:
            return
        import pyarrow.fs as pafs  # lazy: pyarrow only once the bucket is used

        for rel in rels:
            src = self.local / rel
            if src.is_dir():
                pafs.copy_files(
                    str(src), self.path(rel), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
                )
            elif src.is_file():
                self.write_bytes(rel, src.read_bytes())  # read whole: the file may be appended to meanwhile

    # ------------------------------------------------------------------ the driver's mirror

    def start_session(self, resume: bool) -> None:
        """Make the mirror this driver's working copy (call once the lock is held): on --resume, bring
        back the bucket's driver files unless this machine ran the last session; then register the
        mirror for background uploads and stamp both copies with a new session id."""
        if not self.remote:
            return
        self.local.mkdir(parents=True, exist_ok=True)
        mine = (self.local / layout.SESSION).read_text().strip() if (self.local / layout.SESSION).is_file() else None
        theirs = (self.read_bytes(layout.SESSION) or b"").decode().strip() or None
        if not resume:
            self.clear_mirror()  # files of an earlier sweep at this URI are not this one's
        elif mine is None or mine != theirs:
            for rel in layout.DRIVER_FILES:
                (self.local / rel).unlink(missing_ok=True)
                self.download(rel)
        session = uuid.uuid4().hex
        (self.local / layout.SESSION).write_text(session)
        self.write_bytes(layout.SESSION, session.encode())
        self.upload(*(rel for rel in layout.DRIVER_FILES if (self.local / rel).is_file()))
        _ACTIVE[str(self.local)] = self
        if self._thread is None:
            self._thread = threading.Thread(target=self._uploader, name="stlm-storage-sync", daemon=True)
            self._thread.start()

    def clear_mirror(self) -> None:
        """An empty mirror (a sweep started afresh here)."""
        if self.remote and self.local.exists():
            for p in self.local.iterdir():
                if p.name != layout.SESSION:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()

    def mark(self, rel: str) -> None:
        with self._cv:
            self._dirty.add(rel)
            self._cv.notify()

    def _uploader(self) -> None:
        while True:
            with self._cv:
                while not self._dirty:
                    self._cv.wait()
            time.sleep(SYNC_S)  # gather the writes of the next few seconds into one upload each
            self._sync()

    def _sync(self) -> None:
        with self._cv:
            rels, self._dirty = sorted(self._dirty), set()
        for rel in rels:
            try:
                self.upload(rel)
            except Exception:  # noqa: BLE001 - the bucket hiccupped: the next change uploads it again
                with self._cv:
                    self._dirty.add(rel)

    def flush(self) -> None:
        """Upload every pending change now (the end of a sweep, an interrupt)."""
        if self.remote:
            self._sync()


def changed(path: Path) -> None:
    """A driver file was rewritten: if it is in an active mirror, upload it soon (no-op otherwise)."""
    path = Path(path)
    for root, st in _ACTIVE.items():
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        st.mark(rel.as_posix())
        return


def flush_all() -> None:
    for st in list(_ACTIVE.values()):
        st.flush()


def probe(uri: str, timeout: float = 10.0) -> str | None:
    """None when the bucket of `uri` can be listed and written within `timeout` seconds, else why not
    (one sentence). Writes and deletes one small object."""

    st = Storage(uri)
    box: dict = {}
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if custom and st.uri.startswith("s3://"):  # nothing listening is known at once (the SDK retries for 6 s)
        why = unreachable(custom if "://" in custom else f"http://{custom}", timeout=min(3.0, timeout))
        if why:
            return why
    elif st.uri.startswith(("s3://", "gs://", "abfs://")) and offline_reason():  # a cloud is never this machine
        return f"{st.uri.split('://')[0]}'s default endpoint was not tried: {offline_reason()}"

    def go():
        try:
            import pyarrow.fs as pafs  # lazy: pyarrow only once the bucket is used

            bucket = st.path().split("/", 1)[0]
            if st.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                box["why"] = f"the bucket {bucket!r} does not exist"
                return
            probe_rel = f".stlm-probe-{uuid.uuid4().hex[:8]}"
            st.write_bytes(probe_rel, b"")
            st.delete(probe_rel)
            box["why"] = None
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            box["why"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"

    t = threading.Thread(target=go, name="stlm-storage-probe", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return f"no answer within {timeout:g} s"
    return box.get("why")


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def read_json(st: Storage, rel: str):
    raw = st.read_bytes(rel)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
