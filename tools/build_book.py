"""Build the HTML book from the execution cache that `make notebooks` filled (`make book`).

Runs `jupyter-book build . -W -n --keep-going`, shows its output, keeps a copy in
_build/build.log, and fails if the build executed any chapter itself: every chapter must come
from the cache (tools/execute_book.py), so that `make test` executes each chapter exactly once.
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "_build" / "build.log"
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")


def main() -> int:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    command = [str(JUPYTER_BOOK), "build", ".", "-W", "-n", "--keep-going", "-v"]
    with LOG.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if "[mystnb]" not in line or "Executing" in line or "failed" in line:
                sys.stdout.write(line)
        status = process.wait()
    text = LOG.read_text()
    cached = re.findall(r"(\S+\.md): Using cached notebook", text)
    executed = re.findall(r"(\S+\.md): Executing notebook", text)
    print(f"build_book: {len(cached)} chapters taken from the execution cache")
    if executed:
        print(f"build_book: the build executed {executed} itself: `make notebooks` must run "
              "every chapter first (were they changed after it ran?)", file=sys.stderr)
        return status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
