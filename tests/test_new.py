"""`clinpaper new`: the templates it lists, the files it writes for each template and source,
the errors it gives (exit 2, nothing written), and a scaffolded project working as a git
repository of its own (the session's paper run records the project's commit)."""
import json
import subprocess

import pytest
import yaml

from clinpaper.config import load_study
from clinpaper.new import TEMPLATES as PACKAGED, list_templates
from clinpaper.run import _study_notebooks, _toc_files, check_before_run
from conftest import TEMPLATES, clinpaper, git, new_project

NAMES = sorted(p.name for p in TEMPLATES.iterdir()
               if p.is_dir() and (p / "template.yaml").is_file())
CASES = [(name, source) for name in NAMES
         for source in yaml.safe_load((TEMPLATES / name / "template.yaml").read_text())["sources"]]


def assert_refused(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_templates_are_the_package_data():
    assert PACKAGED == TEMPLATES
    assert {"hospital-variation", "comparative"} <= set(NAMES)


def test_list_shows_each_template_with_its_description():
    listed = clinpaper("new", "--list").stdout.splitlines()
    assert len(listed) == len(NAMES)
    for line, template in zip(listed, list_templates()):
        name, description = line.split(None, 1)
        assert name == template["name"]
        spec = yaml.safe_load((TEMPLATES / name / "template.yaml").read_text())
        assert description.strip() == " ".join(spec["description"].split())


@pytest.mark.parametrize("template,source", CASES)
def test_files_written(tmp_path, template, source):
    "Every template and source: the project's files, a valid study, every page and glue name accounted for."
    from clinpaper.new import new_project as write_project
    project = write_project(tmp_path / "paper", template=template, source=source, log=lambda m: None)
    spec = yaml.safe_load((TEMPLATES / template / "template.yaml").read_text())
    chosen = spec["sources"][source]
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    for name in ("_toc.yml", "_config.yml", "study.yaml", "README.md", ".gitignore",
                 "references.bib", "manuscript.md"):
        assert name in files, name
    assert (project / "_data").is_dir()
    assert (project / "study.yaml").read_bytes() == (TEMPLATES / template / chosen["study"]).read_bytes()
    for extra in chosen.get("files", []):
        assert (project / extra).read_bytes() == (TEMPLATES / template / extra).read_bytes()
    others = {f for s in spec["sources"].values() for f in [s["study"], *s.get("files", [])]}
    others -= {"study.yaml", *chosen.get("files", [])}
    assert not files & ({"template.yaml", "gitignore"} | others)
    for entry in spec.get("common", []):
        assert (project / (".gitignore" if entry in ("gitignore", ".gitignore") else entry)).exists()
    assert {"_runs/", "_build/", "_data/"} <= set((project / ".gitignore").read_text().split())
    readme = (project / "README.md").read_text()
    assert "{{" not in readme and "manuscript.md" in readme and "clinpaper run" in readme
    # the study validates, its notebooks and pages exist, and its glue names are all made
    study = load_study(project / "study.yaml")
    notebooks, manuscript = _study_notebooks(study, project / "study.yaml")
    assert manuscript == "manuscript.ipynb"
    check_before_run(study, notebooks, root=project)
    pages = {p.stem for p in notebooks}
    assert set(_toc_files(project / "_toc.yml")) <= pages


def test_unknown_template_lists_the_known_ones(tmp_path):
    result = clinpaper("new", "paper", "--template", "hospital_variation", check=False, cwd=tmp_path)
    assert_refused(result, "--template hospital_variation: no such template", *NAMES)
    assert not (tmp_path / "paper").exists()


def test_folder_not_empty(tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "notes.txt").write_text("mine")
    result = clinpaper("new", "paper", "--template", "comparative", check=False, cwd=tmp_path)
    assert_refused(result, "the folder exists and is not empty")
    assert [p.name for p in (tmp_path / "paper").iterdir()] == ["notes.txt"]


def test_folder_inside_another_project(tmp_path):
    outer = new_project(tmp_path / "outer", "comparative")
    before = sorted(p.name for p in outer.iterdir())
    result = clinpaper("new", "inner", "--template", "comparative", check=False, cwd=outer / "_data")
    assert_refused(result, f"inside the paper project {outer.resolve()} (it holds _toc.yml)")
    assert sorted(p.name for p in outer.iterdir()) == before and not (outer / "_data" / "inner").exists()


def test_source_the_template_does_not_offer(tmp_path):
    result = clinpaper("new", "paper", "--template", "comparative", "--source", "flat",
                       check=False, cwd=tmp_path)
    assert_refused(result, "--source flat: the comparative template offers omop")
    assert not any(tmp_path.iterdir())


def test_folder_and_template_are_needed(tmp_path):
    result = clinpaper("new", "--template", "comparative", check=False, cwd=tmp_path)
    assert_refused(result, "`clinpaper new DIR --template NAME`", "hospital-variation")


def test_git_init_commits_nothing(tmp_path):
    project = new_project(tmp_path / "paper", "hospital-variation", "--git")
    assert (project / ".git").is_dir()
    log = subprocess.run(["git", "log"], cwd=project, capture_output=True, text=True)
    assert log.returncode != 0 and "does not have any commits" in log.stderr
    status = git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert "?? study.yaml" in status and "?? .gitignore" in status
    assert not any("_data" in line for line in status)   # .gitignore keeps data out


def test_git_absent_is_said_and_skipped(tmp_path):
    result = clinpaper("new", "paper", "--template", "comparative", "--git", cwd=tmp_path,
                       env={"PATH": str(tmp_path / "no-bin")})
    assert "git is not installed" in result.stderr
    assert (tmp_path / "paper" / "_toc.yml").is_file() and not (tmp_path / "paper" / ".git").exists()


@pytest.mark.xdist_group("paper")
def test_project_is_its_own_git_repository(paper):
    "The session's paper was made with --git and committed: its run records that commit."
    head = git(paper["project"], "rev-parse", "HEAD")
    manifest = json.loads((paper["runs"] / "first" / "manifest.json").read_text())
    assert manifest["git"] == {"commit": head, "dirty": False}
    # runs, builds and data stay out of the project's git
    assert git(paper["project"], "status", "--porcelain") == ""
    assert (paper["runs"] / "first").is_dir() and (paper["builds"] / "first").is_dir()
