"""Atomic writes, shared by every writer of files that readers or a resumed run may see: a file or a directory is
built in a temp place beside its target, then renamed into place, so nobody ever reads half of one."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_file(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """Yield a new temp file beside `path` open for writing (UTF-8 text unless `binary`); on success it is synced
    to disk and renamed over `path`.

    On error the temp file is removed and `path` is left as it was. The temp name is unique, so processes
    writing the same target concurrently do not mix their bytes: the last rename wins, whole.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory next to `path`; on success it replaces `path` (see `replace_directory`).

    On error the temp directory is removed and `path` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a checkpoint should be as readable as any directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, final)


def replace_directory(tmp: str | Path, path: str | Path) -> None:
    """Rename the finished directory `tmp` to `path` in one rename. A previous `path` is moved aside first and
    deleted only after the new one is in place, so a crash never leaves neither."""
    final = Path(path)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
