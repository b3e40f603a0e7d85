"""The glossary's conventions (book/appendix/glossary.md), so that entries added by several
authors at once merge cleanly and read alike: every entry pairs English and 中文 terms, says
where the term is used, and sits in alphabetical order; every {term} role in a chapter names
an entry. (The strict build fails on an unknown term too; this test says which one, quickly.)"""
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "book" / "appendix" / "glossary.md"
CJK = re.compile(r"[\u3400-\u9fff]")
TERM_ROLE = re.compile(r"\{term\}`([^`]+)`")


def sort_key(term: str) -> str:
    """Case, accents, punctuation and a leading minus sign do not count."""
    plain = unicodedata.normalize("NFKD", term.casefold())
    return "".join(c for c in plain if c.isalnum() or c == " ").strip()


def entries() -> list[tuple[list[str], str]]:
    """``(term lines, definition)`` for each entry of the glossary directive."""
    text = GLOSSARY.read_text(encoding="utf-8")
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.S)
    assert block, "glossary.md must hold one ```{glossary} directive"
    found = []
    for chunk in block.group(1).strip().split("\n\n"):
        lines = chunk.splitlines()
        terms = [line for line in lines if not line.startswith(" ")]
        definition = " ".join(line.strip() for line in lines if line.startswith(" "))
        assert lines[:len(terms)] == terms, f"term lines must come first: {chunk!r}"
        found.append((terms, definition))
    return found


def term_names() -> set[str]:
    """Every term line, as the {term} role matches it (case-insensitive, markup removed)."""
    return {line.replace("`", "").casefold() for terms, _ in entries() for line in terms}


def test_every_entry_pairs_english_and_chinese_and_says_where():
    for terms, definition in entries():
        english = [t for t in terms if not CJK.search(t)]
        chinese = [t for t in terms if CJK.search(t)]
        assert english and terms[0] == english[0], f"{terms}: the English term comes first"
        assert len(chinese) == 1 and terms[-1] == chinese[0], \
            f"{terms}: end with exactly one line of 中文 terms"
        assert definition, f"{terms[0]}: no definition (indent it by two spaces)"
        assert re.search(r"Where: .*(\{ref\}|chapter \d+)", definition), \
            f"{terms[0]}: end the definition with 'Where:' and a {{ref}} or 'chapter N'"


def test_entries_are_sorted_for_easy_merging():
    firsts = [terms[0] for terms, _ in entries()]
    for before, after in zip(firsts, firsts[1:]):
        assert sort_key(before) < sort_key(after), \
            f"{before!r} comes before {after!r}, out of alphabetical order (see sort_key): " \
            f"move the entry that was added to its place"


def test_no_term_is_defined_twice():
    lines = [line.replace("`", "").casefold() for terms, _ in entries() for line in terms]
    twice = {line for line in lines if lines.count(line) > 1}
    assert not twice, f"terms defined twice: {sorted(twice)}"


def test_required_terms_are_there():
    required = ["macro-F1", "expected calibration error", "MFU", "−100 label", "KV cache",
                "residual stream", "autocast", "bf16", "safetensors", "amortised inference",
                "envelope theorem", "LeakyReLU", "SiLU", "fused AdamW", "torch.compile",
                "chat template", "DPO", "diffusion model", "denoising", "score function",
                "classifier-free guidance", "flow matching"]
    missing = [t for t in required if t.casefold() not in term_names()]
    assert not missing, f"the glossary lacks {missing}"


@pytest.mark.parametrize("chapter", sorted(p.name for p in (ROOT / "book").glob("*.md")))
def test_term_roles_name_glossary_entries(chapter):
    text = (ROOT / "book" / chapter).read_text(encoding="utf-8")
    targets = [m.split("<")[-1].rstrip(">").strip() if m.endswith(">") else m
               for m in TERM_ROLE.findall(text)]
    unknown = [t for t in targets if t.replace("`", "").casefold() not in term_names()]
    assert not unknown, f"{chapter}: {{term}} roles with no glossary entry: {unknown}"
