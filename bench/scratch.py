"""A benchmark run's scratch folder: server logs, request bodies, wrk scripts.

Why a helper: each run used to leave its ``tempfile.mkdtemp`` folder behind, dozens in /tmp
after a day of A/B pairs. The folder is removed when the run ends normally and kept, its path
printed, when the run fails, is interrupted or exits with an error status: then the server
logs in it are what explains why. ``BENCH_KEEP_SCRATCH=1`` keeps it after a run that went
well too.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def run_scratch(prefix: str) -> Iterator[Path]:
    """A fresh folder for one run, removed after it unless the run failed (or
    ``BENCH_KEEP_SCRATCH`` is set)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        yield path
        ok = True
    except SystemExit as e:  # a module's own exit: its status says how the run went
        ok = e.code in (0, None)
        raise
    finally:
        if not ok:
            print(f"bench: kept {path} (the failed run's server logs and bodies)", file=sys.stderr)
        elif os.environ.get("BENCH_KEEP_SCRATCH"):
            print(f"bench: kept {path} (BENCH_KEEP_SCRATCH)", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
