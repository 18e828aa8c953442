"""Run by testutils.sfvgen_in_one_process (the bad-input and bad-YAML tables): many `sfvgen` command lines in
one process (each new process imports torch and Lightning: seconds of a 2-core CPU apiece). Per command line:
the return code of ``slowfast_vgen.cli.main`` and what it wrote to stdout / stderr; an exception that escapes
``main`` is recorded as Python would print it (exit 1, its traceback on stderr), so a test that forbids
tracebacks still sees it.

    python tests/cli_driver.py CASES.json RESULTS.json   (CASES.json: {"id": [argv...]}; run in the cwd wanted)
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from pathlib import Path


def run(argv: list[str]) -> dict:
    from slowfast_vgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001 - what an uncaught exception would print
            traceback.print_exc()
            code = 1
    return {"returncode": int(code or 0), "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> int:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = {case: run(argv) for case, argv in cases.items()}
    Path(sys.argv[2]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
