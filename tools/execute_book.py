"""Execute every chapter once, in parallel, into the book's execution cache (`make notebooks`).

Jupyter Book (`execute_notebooks: cache`) reuses a chapter's outputs from jupyter-cache when the
cache holds a notebook whose code cells hash the same as the chapter's. This script fills that
cache itself, so that `make book` afterwards executes nothing and every chapter runs exactly once
per `make test`:

1. each chapter listed in `_toc.yml` is read from its `.md` source with MyST-NB's own reader and
   the same parser settings as the build, so its hash is the one the build will look up;
2. chapters whose hash is already cached are skipped, unless a chapter they read was executed in
   this run (their outputs would be stale);
3. the others run in a pool of worker processes (`--jobs`, default: one per CPU core), longest
   first by the times of the previous run; a chapter that reads other chapters' records
   (`results.ensure([...])` in its source) starts only after those chapters have finished;
4. a failing chapter fails the run with the cell and its error shown, and is not cached; the
   others still run, so one run reports every failure;
5. the time of each chapter is printed as a table and written to `_build/chapter_times.json`
   (all runs, for the order of the next) and `_build/chapter_times_last.json` (this run).

The shared artefacts that several chapters need (the pretrained GPT, the scaling sweep, the
MiniLM embeddings) are computed by the library under file locks, so two workers never compute
the same one twice.

Usage: python tools/execute_book.py [--jobs N] [--timeout S] [--only NN_name ...]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
TIMES = ROOT / "_build" / "chapter_times.json"
LAST_TIMES = ROOT / "_build" / "chapter_times_last.json"
ENSURE = re.compile(r"results\.ensure\(\s*(\w+|\[[^\]]*\])", re.S)


def chapters() -> list[Path]:
    """The chapter sources (book/NN_name.md) in the order of _toc.yml."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [ROOT / f"{f}.md" for f in files if re.fullmatch(r"book/\d\d_\w+", f)]


def dependencies(md: Path) -> set[str]:
    """Chapters whose records ``md`` reads with ``results.ensure([...])``: the names in the list
    literal, or in the list assigned to the name passed to it (``CHAPTERS = [...]``)."""
    text = md.read_text()
    found: set[str] = set()
    for arg in ENSURE.findall(text):
        if not arg.startswith("["):
            match = re.search(rf"^{arg}\s*=\s*(\[[^\]]*\])", text, re.M)
            arg = match.group(1) if match else ""
        found |= set(re.findall(r"[\"'](\d\d_\w+)[\"']", arg))
    return found - {md.stem}


def read_notebook(md: Path):
    """The notebook MyST-NB builds from ``md`` (same reader and parser settings as the book)."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    extensions = config.get("parse", {}).get("myst_enable_extensions", [])
    return read_myst_markdown_notebook(md.read_text(), MdParserConfig(enable_extensions=extensions),
                                       add_source_map=True, path=md)


def execute(md: Path, timeout: int) -> tuple[str, object, float, str | None]:
    """Run one chapter in its folder (in a worker process); returns (name, notebook, seconds,
    error text or None).

    The kernel talks to this process over Unix sockets in a folder of its own (IPC transport),
    not over TCP ports: two kernels started at once by two workers can pick the same free TCP
    port, and a client then waits for a reply that went elsewhere (a chapter once stalled for
    the whole cell timeout that way)."""
    from jupyter_cache.executors.utils import single_nb_execution
    from jupyter_client.manager import KernelManager

    nb = read_notebook(md)
    with tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
        km = KernelManager(kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                           transport="ipc", ip=str(Path(sockets) / "k"))
        try:
            result = single_nb_execution(nb, cwd=str(md.parent), timeout=timeout,
                                         allow_errors=False, km=km)
        finally:   # nbclient shuts down only the kernels it created itself
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    error = None if result.err is None else (result.exc_string or repr(result.err))
    return md.stem, nb, result.time, error


def previous_times() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(TIMES.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def plan(mds: list[Path], cache, names: set[str]) -> tuple[list[Path], dict[str, set[str]]]:
    """Which of ``mds`` must run, and what each waits for (``names``: every chapter)."""
    deps = {md.stem: dependencies(md) for md in mds}
    for name, needs in deps.items():
        unknown = needs - names
        if unknown:
            sys.exit(f"execute_book: {name} reads records of {sorted(unknown)}, which are not "
                     "chapters in _toc.yml")
    todo = set()
    for md in mds:
        try:
            cache.match_cache_notebook(read_notebook(md))
        except KeyError:
            todo.add(md.stem)
    changed = True
    while changed:   # a chapter that reads a re-executed chapter must run again too
        changed = False
        for name, needs in deps.items():
            if name not in todo and needs & todo:
                todo.add(name)
                changed = True
    return [md for md in mds if md.stem in todo], deps


def run(mds: list[Path], deps: dict[str, set[str]], jobs: int, timeout: int, cache):
    """Execute ``mds`` respecting ``deps``; cache the successes. Returns (times, failures)."""
    from jupyter_cache.base import CacheBundleIn

    pending = {md.stem: md for md in mds}
    estimate = previous_times()
    done: set[str] = {n for n in deps if n not in pending}
    failed: dict[str, str] = {}
    times: dict[str, float] = {}
    running = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [n for n in pending if deps[n] <= done]
            blocked = [n for n in pending if deps[n] & set(failed)]
            for name in blocked:
                failed[name] = f"not run: it reads {sorted(deps[name] & set(failed))}, which failed"
                del pending[name]
            for name in sorted(ready, key=lambda n: -estimate.get(n, 60.0)):
                if len(running) >= jobs:
                    break
                print(f"[{time.perf_counter() - started:6.0f} s] start {name}", flush=True)
                running[pool.submit(execute, pending.pop(name), timeout)] = name
            if not running:
                if pending:   # nothing runs and nothing can start: the reads form a cycle
                    sys.exit(f"execute_book: chapters {sorted(pending)} read each other's "
                             "records in a cycle")
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    _, nb, seconds, error = future.result()
                except Exception as err:  # the worker itself died
                    nb, seconds, error = None, 0.0, repr(err)
                times[name] = seconds
                if error is None:
                    cache.cache_notebook_bundle(
                        CacheBundleIn(nb, str(ROOT / "book" / f"{name}.md"),
                                      data={"execution_seconds": seconds}),
                        check_validity=False, overwrite=True)
                    done.add(name)
                    status = "ok"
                else:
                    failed[name] = error
                    status = "FAILED"
                print(f"[{time.perf_counter() - started:6.0f} s] {status:6} {name} "
                      f"({seconds:.1f} s)", flush=True)
    return times, failed, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BOOK_JOBS", 0))
                        or os.cpu_count() or 1)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--only", nargs="*", help="chapter names (e.g. 03_vae) to consider")
    args = parser.parse_args()
    if args.jobs < 1:
        sys.exit(f"--jobs must be >= 1, got {args.jobs}")
    from jupyter_cache import get_cache

    mds = chapters()
    names = {md.stem for md in mds}
    if args.only:
        unknown = set(args.only) - names
        if unknown:
            sys.exit(f"--only: {sorted(unknown)} are not chapters in _toc.yml")
        mds = [md for md in mds if md.stem in args.only]
    cache = get_cache(str(CACHE))
    todo, deps = plan(mds, cache, names)
    skipped = [md.stem for md in mds if md not in todo]
    print(f"execute_book: {len(todo)} chapters to run with {args.jobs} workers; "
          f"{len(skipped)} cached: {' '.join(skipped) or '-'}", flush=True)
    times, failed, wall = run(todo, {k: v & {m.stem for m in mds} for k, v in deps.items()},
                              args.jobs, args.timeout, cache)
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text(json.dumps({**previous_times(), **times}, indent=1, sort_keys=True))
    LAST_TIMES.write_text(json.dumps(times, indent=1, sort_keys=True))
    for name, error in failed.items():
        print(f"\n{'=' * 30} {name} failed {'=' * 30}\n{error}", file=sys.stderr)
    print("\nchapter                          seconds")
    for name in sorted(times):
        print(f"{name:32} {times[name]:7.1f}{'  FAILED' if name in failed else ''}")
    print(f"{'all chapters, wall clock':32} {wall:7.1f}   (sum {sum(times.values()):.1f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
