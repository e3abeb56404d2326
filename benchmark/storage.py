"""Writing files safely: a full disk becomes one clear error naming the path, not a traceback.

``DiskFull`` is raised wherever gfbench writes shards, manifests, records, renders or tables and the file
system says there is no room (ENOSPC) or the quota is spent (EDQUOT). The command line reports it on one line.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """No space left (or quota exceeded) while writing ``path``; ``what`` says what was being written."""

    def __init__(self, path: Path | str, what: str = "", detail: str = ""):
        self.path = Path(path)
        self.what = what
        self.detail = detail
        super().__init__(errno.ENOSPC, str(self))

    def __str__(self) -> str:
        what = f" while writing {self.what}" if self.what else ""
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.path}: disk full (no space left on device){what}{detail}"


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from (``__cause__`` / ``__context__``) is ENOSPC or
    EDQUOT: libraries (PIL, torch, tarfile) often wrap the OSError they got."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in NO_SPACE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def reporting_disk_full(path: Path | str, what: str = "", detail: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into ``DiskFull(path, what, detail)``; other errors pass through."""
    try:
        yield
    except DiskFull:
        raise
    except BaseException as exc:
        if is_disk_full(exc):
            raise DiskFull(path, what, detail) from exc
        raise
