"""Execute one chapter notebook and print its text outputs and timing (a development aid).

Usage: python tools/run_notebook.py book/01_probability_and_losses.ipynb
"""
import sys
import time

import nbformat
from nbclient import NotebookClient

path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": "book"}}).execute()
print(f"== executed {path} in {time.perf_counter() - start:.1f} s")
for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
        continue
    for out in cell.get("outputs", []):
        text = out.get("text") or out.get("data", {}).get("text/plain", "")
        if text:
            print(f"[{i}] {text if isinstance(text, str) else ''.join(text)}".rstrip()[:1500])
