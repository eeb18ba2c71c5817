"""Pre-flight checks every command shares, run before it writes anything (a run, a directory, a file):

    problems = tracking_problems(uri)      # the MLflow URI's scheme is one MLflow reads; a server answers now
    problems += data_problems(cfg)         # data.source exists, and a local one's first records parse
    problems += writable_problems(path, "train.out_dir")
    check(problems, "stlm train")          # StlmError listing them all (exit 2), or nothing

`stlm sweep`'s pre-flight (stlm/sweep/run/preflight.py) adds tokenizers, eval data and resources to these.
Each problem is one sentence naming the key, file or address, and what to do instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from stlm.data.sources import LocalSource, get_source
from stlm.errors import StlmError
from stlm.offline import unreachable

# what MLflow's tracking store reads: a local path, a file:// store, a database, a server
TRACKING_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check(found: list[str], what: str) -> None:
    if found:
        lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(found, 1))
        raise StlmError(
            f"pre-flight found {len(found)} problem{'s' if len(found) > 1 else ''} in {what}; nothing was started "
            f"or written:\n{lines}"
        )


def tracking_problems(uri: str | None) -> list[str]:
    """The URI's scheme is one MLflow reads, and an http(s) server answers now: MLflow's client would retry a
    dead one for about 4 minutes and then fail with a traceback."""
    if not uri:
        return []
    scheme = urlparse(uri).scheme.split("+")[0].lower()  # postgresql+psycopg2://
    if len(scheme) == 1:  # a Windows drive letter, C:\\mlruns
        scheme = ""
    if scheme not in TRACKING_SCHEMES:
        return [
            f"the MLflow tracking URI {uri!r} (--tracking-uri / tracking.uri / $MLFLOW_TRACKING_URI) has the "
            f"scheme {scheme + '://'!r}, which MLflow does not read; use sqlite:///mlflow.db, a directory, or "
            "http(s)://host:port of an `mlflow server`."
        ]
    if scheme not in ("http", "https"):
        return []
    why = unreachable(uri)
    if why is None:
        return []
    return [
        f"the MLflow tracking server {uri} (--tracking-uri / tracking.uri / $MLFLOW_TRACKING_URI) does not "
        f"answer: {why}. Start it (cluster/l40.yaml starts `mlflow server` on the head), or log to a local "
        f"file with --tracking-uri sqlite:///mlflow.db."
    ]


def check_tracking(uri: str | None, what: str) -> None:
    """StlmError (exit 2) within seconds when the tracking URI cannot be used."""
    check(tracking_problems(uri), what)


def data_problems(cfg) -> list[str]:
    """data.source names a source; a local one's first records are read and parsed as training reads them
    (the text column present, the file not empty). A hub dataset is the caller's to probe (offline rules)."""
    try:
        source = get_source(cfg.data)
        if isinstance(source, LocalSource) and not any(d.strip() for d in source.head()):
            return [f"data.source={cfg.data.source!r}: its first records hold no text ({source.files[0]})."]
    except StlmError as e:
        return [str(e)]
    return []


def writable_problems(path: str | os.PathLike, key: str) -> list[str]:
    """`path` (which may not exist yet) can be created and written: its nearest existing ancestor is a
    writable directory. Nothing is created here."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return [f"{key}: {str(p)!r} is a file, not a directory."]
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        return [f"{key}: {str(p)!r} cannot be created: {str(existing)!r} is a file."]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{key}: {str(p)!r} cannot be written: {str(existing)!r} is not writable by this user."]
    return []
