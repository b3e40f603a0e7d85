"""Run one chapter the way Google Colab runs it: alone (`make colab-check CHAPTER=NN_name`).

Colab gives each chapter a fresh machine: the chapter's first cell installs aigc_lib from the
repository (a wheel built from it), the notebook sits alone in an empty folder, and nothing is
cached. This script reproduces that offline:

1. builds the wheel of this checkout (`pip wheel --no-deps .`);
2. creates a bare virtual environment, installs torch (tools/install_torch.sh), the wheel with
   its dependencies, and a Jupyter kernel (Colab provides one);
3. copies `book/<chapter>.ipynb`, and nothing else, into an empty folder;
4. executes it there with an empty `AIGC_CACHE`, so a chapter that reads other chapters'
   records (the verdict) must run them from the notebooks shipped inside the wheel.

It prints the time of each stage and exits non-zero if any fails. Usage:
    python tools/colab_check.py 12_gold_or_bubble [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=int(sys.argv[2]), kernel_name="python3",
               resources={"metadata": {"path": sys.argv[3]}}).execute()
print("executed", sys.argv[1])
"""


def stage(name: str, command: list[str], **kwargs) -> None:
    start = time.perf_counter()
    print(f"colab_check: {name} ...", flush=True)
    done = subprocess.run(command, **kwargs)
    print(f"colab_check: {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if done.returncode != 0:
        sys.exit(f"colab_check: {name} failed (exit {done.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapter", help="e.g. 12_gold_or_bubble")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    notebook = ROOT / "book" / f"{args.chapter}.ipynb"
    if not notebook.exists():
        sys.exit(f"colab_check: chapter must name a notebook in book/, got {args.chapter!r}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="colab_check."))
    work.mkdir(parents=True, exist_ok=True)
    python = work / "venv" / "bin" / "python"
    stage("build the wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT),
                              "-w", str(work / "wheel")])
    wheel, = (work / "wheel").glob("aigc_lib-*.whl")
    stage("create a bare virtual environment", [sys.executable, "-m", "venv", str(work / "venv")])
    stage("install torch", [str(ROOT / "tools" / "install_torch.sh"), str(python)])
    stage("install the wheel", [str(python), "-m", "pip", "install", "-q", str(wheel),
                                "nbclient", "nbformat", "ipykernel"])
    stage("register the kernel", [str(python), "-m", "ipykernel", "install", "--sys-prefix",
                                  "--name", "python3"], stdout=subprocess.DEVNULL)
    alone = work / "alone"
    alone.mkdir(exist_ok=True)
    shutil.copy(notebook, alone / notebook.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(AIGC_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1",
               PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}")
    shutil.rmtree(work / "cache", ignore_errors=True)
    stage(f"execute {notebook.name} alone", [str(python), "-c", RUN, str(alone / notebook.name),
                                             str(args.timeout), str(alone)], cwd=alone, env=env)
    print(f"colab_check: {args.chapter} runs alone from the wheel (work folder {work})")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
