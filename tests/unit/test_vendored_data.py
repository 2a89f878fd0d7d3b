"""tests/data: every third-party file has its licence and provenance, and is the corpus file it claims to be."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_formats_corpus import VENDORED

DATA = Path(__file__).resolve().parents[1] / "data"
THIRD_PARTY = [d for d in sorted(DATA.iterdir()) if d.is_dir() and d.name != "mappings"]


def test_every_vendored_folder_has_its_licence_and_provenance_naming_each_file():
    assert {d.name for d in THIRD_PARTY} >= {"fafeitsch", "areski", "bandicoot"}
    for folder in THIRD_PARTY:
        licence = (folder / "LICENSE").read_text()
        provenance = (folder / "PROVENANCE.md").read_text()
        assert re.search(r"\bMIT\b|BSD|Apache", licence + provenance), folder.name  # only permissive licences here
        assert "Licence: MIT" in provenance or "Licence: BSD" in provenance or "Licence: Apache" in provenance
        assert re.search(r"https://github\.com/\S+", provenance) and re.search(r"\b[0-9a-f]{40}\b", provenance)
        for f in folder.iterdir():
            if f.name not in ("LICENSE", "PROVENANCE.md"):
                assert f"`{f.name}`" in provenance, f"{folder.name}/{f.name} is not listed in its PROVENANCE.md"


def test_every_vendored_case_points_at_a_file_here():
    files = {str(p.relative_to(DATA)) for d in THIRD_PARTY for p in d.iterdir()}
    assert set(VENDORED.values()) <= files


@pytest.mark.parametrize("corpus_path", sorted(VENDORED))
def test_vendored_copy_is_byte_identical_to_the_corpus_file(corpus_path, corpus):
    assert (DATA / VENDORED[corpus_path]).read_bytes() == (corpus / corpus_path).read_bytes()
