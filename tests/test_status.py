"""`clinpaper status NAME` and the build's refusal of a run that its sources no longer match.

On the tiny real project of test_faults (one MyST notebook, a flat table): each change a user
makes (prose, code, the study, a -p of the run, the codebook, the data, a copied project) is made
for real on disk, and the status and the build are read from the command line.
"""
import json
import shutil

import pytest
import yaml

from conftest import clinpaper
from test_faults import cli, refused, tree

# one worker makes the tiny project (conftest tiny_made) once and runs these tests on copies of it
pytestmark = pytest.mark.xdist_group("faults")


@pytest.fixture
def project(tiny_made, tmp_path):
    "A copy of the session's tiny project, elsewhere (conftest's tiny_made: runs `first` and `quick`)."
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_made, copy, symlinks=True)
    return copy


def status(project, name="first"):
    return cli(project, "status", name)


def edit_study(project, change):
    study = yaml.safe_load((project / "study.yaml").read_text())
    change(study)
    (project / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))


def test_up_to_date_with_its_own_overrides(project):
    "A run made with -p seed=5 is up to date: its own overrides are applied again."
    for name in ("first", "quick"):
        result = status(project, name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"run {name} (finished " in result.stdout and "up to date" in result.stdout


def test_prose_edit_is_up_to_date_and_builds(tiny_made, project):
    "In a copy of the project: the edited prose reaches the copy's own build; the original is untouched."
    original = tree(tiny_made / "_build")
    page = project / "manuscript.md"
    page.write_text(page.read_text().replace("of whom", "among whom"))
    result = status(project)
    assert result.returncode == 0 and "prose edited since (a build takes it without a rerun)" in result.stdout
    built = clinpaper("build", "first", cwd=project)
    assert str(project / "_build" / "first") in built.stdout
    assert "among whom" in (project / "_build" / "first" / "html" / "manuscript.html").read_text()
    assert tree(tiny_made / "_build") == original


def test_code_edit_is_outdated_and_the_build_refuses(project):
    page = project / "manuscript.md"
    page.write_text(page.read_text().replace('paper.count("n_patients", len(data))',
                                             'paper.count("n_patients", len(data) - 1)'))
    result = status(project)
    assert result.returncode == 1, result.stdout
    assert "manuscript.ipynb  outdated" in result.stdout
    assert "code: the code cells of manuscript.md changed" in result.stdout
    built = tree(project / "_build" / "first")
    refused(cli(project, "build", "first"),
            "is out of date with the project", "the code cells of manuscript.md changed",
            "clinpaper run --name first")
    assert tree(project / "_build" / "first") == built   # the previous build stays as it was


@pytest.mark.parametrize("change, reason", [
    (lambda s: s["parameters"].update(seed=2), "study: parameters.seed: 1 → 2"),
    (lambda s: s.update(title="Another title"), 'study: title: "A tiny paper" → "Another title"'),
    (lambda s: s["outcome"].update(label="Death in hospital"), 'study: outcome.label: "Death" → "Death in hospital"'),
    (lambda s: s.update(short_title="Tiny"), "study: short_title added"),
])
def test_study_edits_are_outdated(project, change, reason):
    edit_study(project, change)
    result = status(project)
    assert result.returncode == 1 and reason in result.stdout, result.stdout
    refused(cli(project, "build", "first"), reason.split(": ", 1)[1])


def test_the_runs_own_override_is_not_a_change_but_the_default_is(project):
    edit_study(project, lambda s: s["parameters"].update(seed=5))   # what quick was run with
    assert status(project, "quick").returncode == 0
    assert "study: parameters.seed: 1 → 5" in status(project, "first").stdout


def test_codebook_and_data_changes(project):
    codebook = yaml.safe_load((project / "codebook.yaml").read_text())
    codebook["variables"]["age"]["label"] = "Age at admission"
    (project / "codebook.yaml").write_text(yaml.safe_dump(codebook))
    assert "study: the codebook file changed" in status(project).stdout
    with open(project / "data.csv", "a") as handle:
        handle.write("9999,50,0\n")
    result = status(project)
    assert result.returncode == 1 and "data: the fingerprint of data.csv changed" in result.stdout
    (project / "data.csv").unlink()
    assert "data: data.csv no longer exists" in status(project).stdout


def test_a_copied_project_is_up_to_date(project):
    "Paths are not the study: a copy of the project, elsewhere, holds the same paper."
    assert status(project).returncode == 0


def test_a_package_change_is_reported_but_does_not_block_the_build(project):
    manifest_file = project / "_runs" / "first" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["packages"]["pymc"] = "5.0.0"   # as if the run had been made with another PyMC
    manifest_file.write_text(json.dumps(manifest))
    result = status(project)
    assert result.returncode == 1 and "package: pymc 5.0.0 → " in result.stdout
    built = clinpaper("build", "first", cwd=project)
    assert "was made with other package versions (pymc 5.0.0 → " in built.stderr


def test_status_of_a_missing_run(project):
    refused(status(project, "nope"), "no run named 'nope'", "Runs there: first, quick")


def test_status_refuses_a_hand_edited_run(project):
    results = project / "_runs" / "first" / "results.json"
    results.write_text(results.read_text().replace('"240"', '"241"'))
    refused(status(project), "does not match its manifest (changed: results.json)")
