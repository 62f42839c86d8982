"""Generate the sync client (memory_admin_client/sync.py) from the async one (aio.py).

    python client/generate_sync.py           # rewrite sync.py
    python client/generate_sync.py --check   # exit 1 when sync.py is not what aio.py generates

unasync drops `async` and `await` and renames tokens (below); lines of aio.py that end with
`# async only` are left out (the `close = aclose` alias: the sync client's method is `close`);
ruff sorts and formats the result (a line without `await` may fit where its async form did not).
Everything the two clients do differently is in _aio_runtime.py / _sync_runtime.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

PACKAGE = Path(__file__).resolve().parent / "memory_admin_client"
SOURCE, TARGET = PACKAGE / "aio.py", PACKAGE / "sync.py"
ASYNC_ONLY = "# async only"
HEADER = "# Generated from aio.py by client/generate_sync.py: edit aio.py, then run that script.\n"

RENAMES = {
    "AsyncMemoryClient": "MemoryClient",
    "AsyncLock": "Lock",
    "AsyncClient": "Client",  # httpx
    "aclose": "close",
    "aread": "read",
    "aiter_lines": "iter_lines",
    "_aio_runtime": "_sync_runtime",
}


def generate(source: str) -> str:
    lines = source.splitlines(keepends=True)
    kept = "".join(line for line in lines if not line.rstrip().endswith(ASYNC_ONLY))
    with tempfile.TemporaryDirectory() as tmp:
        async_file, sync_file = Path(tmp, "_async", "client.py"), Path(tmp, "_sync", "client.py")
        async_file.parent.mkdir()
        async_file.write_text(kept)
        unasync.unasync_files([str(async_file)], [unasync.Rule("/_async/", "/_sync/", RENAMES)])
        unformatted = HEADER + sync_file.read_text()
    return ruff(ruff(unformatted, "check", "--select", "I", "--fix"), "format")


def ruff(source: str, *command: str) -> str:
    """`source` after `ruff <command>` with the project's settings (imports sorted, formatted)."""
    args = [sys.executable, "-m", "ruff", *command, "--quiet", "--stdin-filename", str(TARGET), "-"]
    return subprocess.run(args, input=source, capture_output=True, text=True, check=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when sync.py is stale")
    args = parser.parse_args()
    expected = generate(SOURCE.read_text())
    if args.check:
        if TARGET.read_text() != expected:
            print(
                f"{TARGET} is not generated from {SOURCE.name}: run python client/generate_sync.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
