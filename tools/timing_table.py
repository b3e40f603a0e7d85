"""Print where a `.ci/run` went: each step of `make test` and each chapter (from
_build/timings.tsv, written by tools/timed.sh, and _build/chapter_times_last.json, written by
tools/execute_book.py)."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    steps = []
    tsv = ROOT / "_build" / "timings.tsv"
    if tsv.exists():
        steps = [line.split("\t") for line in tsv.read_text().splitlines() if line.strip()]
    chapters = {}
    last = ROOT / "_build" / "chapter_times_last.json"
    if last.exists():
        chapters = json.loads(last.read_text())
    print("\n== where the time went ==")
    print(f"{'step':40} {'seconds':>8}  status")
    for name, seconds, status in steps:
        print(f"{name:40} {float(seconds):8.1f}  {'ok' if status == '0' else 'FAILED ' + status}")
        if name == "notebooks" and chapters:
            for chapter, s in sorted(chapters.items(), key=lambda kv: -kv[1]):
                print(f"  {chapter:38} {s:8.1f}  (in a worker)")
    print(f"{'total of the steps':40} {sum(float(s[1]) for s in steps):8.1f}")


if __name__ == "__main__":
    main()
