"""Repository checks: paired notebooks, the Colab cell, config consistency, workflows, packaging."""
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))


def test_there_are_chapters_and_each_is_in_the_toc():
    assert CHAPTERS, "no chapters found in book/"
    toc = (ROOT / "_toc.yml").read_text()
    for md in CHAPTERS:
        assert f"book/{md.stem}" in toc, f"{md.name} is not listed in _toc.yml"


def code_cells(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code" and c.source.strip()]


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_paired_with_an_output_free_notebook(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{md.name} has no paired {ipynb.name} (run `make sync`)"
    text = md.read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["kernelspec"]["name"] == "python3"
    assert header["jupytext"]["text_representation"]["format_name"] == "myst"
    source, paired = jupytext.read(md), nbformat.read(ipynb, as_version=4)
    assert code_cells(source) == code_cells(paired), \
        f"{md.name} and {ipynb.name} have drifted apart (run `make sync`)"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, \
                f"{ipynb.name} is committed with outputs"
    assert paired.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_installs_from_the_configured_repository_in_colab_only(md, monkeypatch):
    first = code_cells(jupytext.read(md))[0]
    assert "google.colab" in first and f"git+{REPO_URL}" in first
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, *a, **k: calls.append(cmd))
    exec(compile(first, md.name, "exec"), {})
    assert calls == [], "the install cell must do nothing outside Colab"
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    exec(compile(first, md.name, "exec"), {})
    assert len(calls) == 1 and any(f"git+{REPO_URL}" in part for part in calls[0])


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit_the_page(md):
    """The rendered book shows 88 columns of code without a scroll bar."""
    for cell in code_cells(jupytext.read(md)):
        for line in cell.splitlines():
            assert len(line) <= 88, f"{md.name}: {len(line)} columns: {line!r}"


def test_every_repository_url_in_the_book_is_the_configured_one():
    for path in list((ROOT / "book").rglob("*.md")) + list((ROOT / "book").rglob("*.ipynb")):
        for url in re.findall(r"git\+(https://[^\s\"'\\]+)", path.read_text()):
            assert url == REPO_URL, f"{path.name} installs from {url}, _config.yml says {REPO_URL}"


def normalise(requirements) -> dict[str, str]:
    out = {}
    for line in requirements:
        req = Requirement(line)
        out[req.name.lower().replace("_", "-")] = str(req.specifier)
    return out


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("book", "test"):
        wanted += project["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [line for line in pip_section if not line.startswith("-")]
    assert normalise(listed) == normalise(wanted)
    assert "--editable ." in pip_section


def test_dependencies_are_ranges_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    everything = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for line in everything:
        assert "==" not in line, f"exact pin in pyproject.toml: {line}"
    assert "jupyter-book>=1.0.4,<2" in [r.replace(" ", "") for r in everything]


def test_config_excludes_notebooks_and_points_colab_at_them():
    assert "**.ipynb" in CONFIG["exclude_patterns"]
    assert CONFIG["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert CONFIG["execute"]["execute_notebooks"] == "cache"
    assert "sphinx-mathjax-offline" in CONFIG["sphinx"]["extra_extensions"]
    for script in CONFIG["sphinx"]["config"]["nb_ipywidgets_js"]:
        assert (ROOT / "book" / "_static" / script).exists(), f"vendored {script} is missing"


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_pass_actionlint():
    assert len(WORKFLOWS) >= 2
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint, "actionlint is not installed (test extra)"
    result = subprocess.run([actionlint, "-no-color", *map(str, WORKFLOWS)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_cpu_test_job_and_gpu_book_job():
    jobs = {}
    for path in WORKFLOWS:
        jobs.update(yaml.safe_load(path.read_text())["jobs"])
    steps_text = json.dumps(jobs)
    assert "make test" in steps_text
    gpu = [job for job in jobs.values() if "gpu" in json.dumps(job.get("runs-on", ""))]
    assert gpu, "no job runs on the self-hosted gpu runner"
    assert any(job.get("env", {}).get("AIGC_PROFILE") == "gpu" for job in gpu)
    assert "actions/deploy-pages" in steps_text and "upload-pages-artifact" in steps_text
    for job in jobs.values():
        for step in job.get("steps", []):
            run = step.get("run", "")
            if run.strip().count("\n") >= 1:
                assert run.lstrip().startswith("set -eo pipefail"), \
                    f"multi-line step {step.get('name')!r} must start with set -eo pipefail"


def test_a_wheel_builds(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("aigc_lib-*.whl"))
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "aigc_lib/training.py" in names and "aigc_lib/losses.py" in names
    # a chapter opened alone (Colab) runs the chapters it reads from these copies
    # (aigc_lib.results.packaged_notebooks)
    assert {f"aigc_lib/notebooks/{md.stem}.ipynb" for md in CHAPTERS} <= set(names)
    assert "aigc_lib/models/gpt.py" in names


def test_readme_shows_the_two_commands_and_ci_runs_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_book_cache_is_wiped_when_the_key_changes(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import book_cache_key as bck
    finally:
        sys.path.remove(str(ROOT / "tools"))
    for name in ("CACHE", "DOCTREES", "STAMP"):
        monkeypatch.setattr(bck, name, tmp_path / getattr(bck, name).name)
    bck.CACHE.mkdir()
    bck.DOCTREES.mkdir()
    assert bck.refresh("a") and not bck.CACHE.exists() and not bck.DOCTREES.exists()
    bck.CACHE.mkdir()
    bck.DOCTREES.mkdir()
    assert not bck.refresh("a") and bck.CACHE.exists() and bck.DOCTREES.exists()
    assert bck.refresh("b") and not bck.DOCTREES.exists()
    assert len(bck.current_key()) == 64

    # the pages are written anew (static files copied) when the look of the book changes,
    # without touching the execution cache
    for name in ("HTML", "HTML_STAMP"):
        monkeypatch.setattr(bck, name, tmp_path / getattr(bck, name).name)
    bck.CACHE.mkdir()
    bck.HTML.mkdir()
    assert bck.refresh_html("x") and not bck.HTML.exists() and bck.CACHE.exists()
    bck.HTML.mkdir()
    assert not bck.refresh_html("x") and bck.HTML.exists()
    assert bck.refresh_html(bck.html_key()) and len(bck.html_key()) == 64


def test_references_parse_and_every_citation_has_an_entry():
    """A broken entry (a lost closing brace after a merge) stops the whole bibliography."""
    import pybtex.database

    entries = pybtex.database.parse_file(str(ROOT / "book" / "references.bib")).entries
    cited = set()
    for md in (ROOT / "book").rglob("*.md"):
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", md.read_text()):
            cited |= {key.strip() for key in group.split(",")}
    missing = cited - set(entries)
    assert cited and not missing, f"cited but not in references.bib: {sorted(missing)}"
