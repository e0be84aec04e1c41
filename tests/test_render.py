"""The manuscript's rendering, fast (no run, no Sphinx): the typed-number rule on prose between
fenced directives and on the manuscripts the templates ship; the page as `paper_size` asks
(Letter and A4) in the PDF and the DOCX; captions in Word's Caption style; the citations
numbered "[1]" in the DOCX and the PDF as the web book's settings number them."""
import json

import nbformat
import pandas as pd
import pytest
import yaml

from conftest import TEMPLATES
from clinpaper.core import RunError
from clinpaper.report import render_manuscript, typed_numbers


def test_a_number_between_two_fenced_directives_is_typed():
    "The hole: a fence's third backtick opened an inline-code span that hid the next lines."
    manuscript = """## Results

```{glue:figure} fig_forest
:name: fig-forest

Adjusted odds ratios.
```

Sepsis doubled the odds of death in 4 of the hospitals.

```{glue} table_odds_ratios
```

## Discussion

Typed numbers are allowed here: 7.
"""
    found = typed_numbers(manuscript)
    assert [item.split(" in ")[0] for item in found] == ["'4'"], found
    # without the number, nothing is found: the directives' own lines are not prose
    assert typed_numbers(manuscript.replace(" in 4 of the hospitals", "")) == []


@pytest.mark.parametrize("template", ["hospital-variation", "prediction", "comparative"])
def test_shipped_manuscripts_type_no_number(template):
    "Each template's manuscript passes the rule it is rendered with (the build would refuse it)."
    manuscript = (TEMPLATES / template / "manuscript.md").read_text()
    assert "## Results" in manuscript and "```{glue" in manuscript
    assert typed_numbers(manuscript) == []


def tiny_paper(folder):
    "A run folder with one table, the authors, and a manuscript notebook that cites two works."
    (folder / "tables").mkdir(parents=True)
    pd.DataFrame({"Characteristic": ["Age, years", "Sepsis at admission, n (%)"],
                  "Overall": ["64 (52 to 75)", "310 (15.2)"]}).to_csv(folder / "tables" / "t1.csv",
                                                                      index=False)
    results = {"t1": {"kind": "table", "file": "tables/t1.csv", "caption": "", "text": "",
                      "value": None},
               "authors": {"kind": "text", "value": "A. Author", "text": "A. Author"}}
    (folder / "results.json").write_text(json.dumps(results))
    text = ("**Authors:** {glue:text}`authors`\n\n## Methods\n\nWe followed STROBE "
            "{cite}`vonelm2007` and pooled partially {cite}`gelman2006,vonelm2007`.\n\n"
            "## Results\n\n**Table 1.** Characteristics.\n\n```{glue} t1\n```\n\n"
            "## References\n\n```{bibliography}\n```\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    nbformat.write(notebook, str(folder / "manuscript.ipynb"))
    return folder / "manuscript.ipynb"


@pytest.mark.parametrize("paper_size, points, millimetres",
                         [("letter", (612, 792), (216, 279)), ("a4", (595, 842), (210, 297))])
def test_page_captions_and_citations(tmp_path, paper_size, points, millimetres):
    import docx
    from pypdf import PdfReader
    notebook = tiny_paper(tmp_path / "run")
    made = render_manuscript(notebook, tmp_path / "run", tmp_path / "out", title="A tiny paper",
                             authors=["A. Author"], paper_size=paper_size,
                             bibliography=TEMPLATES / "_common" / "references.bib")
    reader = PdfReader(made["pdf"])
    for page in reader.pages:
        assert (round(float(page.mediabox.width)), round(float(page.mediabox.height))) == points
    document = docx.Document(made["docx"])
    section = document.sections[0]
    assert (round(section.page_width.mm), round(section.page_height.mm)) == millimetres
    # the table's title is its caption, in Word's Caption style, and the table a Word table
    assert [p.text for p in document.paragraphs if p.style.name == "Caption"] == \
        ["Table 1. Characteristics."]
    assert len(document.tables) == 1 and document.tables[0].cell(1, 0).text == "Age, years"
    # the authors once (the manuscript's own line), and in the file's properties
    assert sum("A. Author" in p.text for p in document.paragraphs) == 1
    assert document.core_properties.author == "A. Author"
    # numbered in order of first citation, one bracket per citation, as the web book does
    text = "\n".join(p.text for p in document.paragraphs)
    assert "We followed STROBE [1] and pooled partially [2, 1]." in text
    references = [p.text for p in document.paragraphs if p.style.name == "Bibliography"]
    assert [r.split("]")[0] for r in references] == ["[1", "[2"]
    assert references[1].startswith("[2]") and "Andrew Gelman. Prior distributions" in references[1]
    pdf = "".join(page.extract_text() for page in reader.pages)
    assert "STROBE [1]" in pdf and "[2, 1]" in pdf


def test_web_book_settings_number_citations_too():
    "The web book's settings (sphinxcontrib-bibtex) use the numbered style the CSL file gives."
    settings = yaml.safe_load((TEMPLATES / "_common" / "_config.yml").read_text())["sphinx"]["config"]
    assert settings["bibtex_reference_style"] == "label"
    assert settings["bibtex_default_style"] == "unsrt"
    assert (TEMPLATES / "_common" / "clinpaper-numeric.csl").is_file()


def test_unknown_paper_size_is_refused(tmp_path):
    notebook = tiny_paper(tmp_path / "run")
    with pytest.raises(RunError, match="one of a4, letter"):
        render_manuscript(notebook, tmp_path / "run", tmp_path / "out", title="x",
                          paper_size="a5")
