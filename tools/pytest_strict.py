"""Run pytest, but treat "no tests collected" (exit code 5) as a failure, not a pass."""
import sys

import pytest

if __name__ == "__main__":
    code = pytest.main(sys.argv[1:])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"pytest_strict: no tests were collected for {sys.argv[1:]}; failing.", file=sys.stderr)
        code = 1
    sys.exit(int(code))
