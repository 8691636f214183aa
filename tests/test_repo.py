"""The repository keeps its promises: one test command, a true roadmap, README numbers from real runs."""
import json
import re
from pathlib import Path

from common.export import notebooks

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
STAGES = ["stage0_components", "stage1_advanced", "stage2_cnn", "stage3_resnets",
          "stage4_transformers", "stage5_selfsupervised", "stage6_frontier"]


def _command_block(title):
    match = re.search(rf"<!-- {title} -->\s*```(?:bash|sh)?\n(.*?)```", README, re.S)
    assert match, f"README has no code block after <!-- {title} -->"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _command_block("test-command")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci, f"`{command}` must appear verbatim in .ci/run"
    assert "pytest" in command and "requirements.txt" in command
    assert "jupyter lab" in _command_block("open-command")


def test_every_stage_folder_has_a_readme():
    for stage in STAGES:
        assert (ROOT / stage / "README.md").is_file(), f"{stage}/README.md"


def test_roadmap_lists_every_notebook_and_marks_the_committed_ones_done():
    rows = re.findall(r"^\|\s*`?(stage\d_\w+/\d\d_\w+)`?\s*\|.*?\|\s*(✅|🚧|⬜)[^|]*\|", README, re.M)
    status = {path: mark for path, mark in rows}
    assert len(status) >= 25, f"the roadmap lists {len(status)} notebooks; CURRICULUM.md has 25"
    committed = {p.relative_to(ROOT).with_suffix("").as_posix() for p in notebooks(ROOT)}
    for path in committed:
        assert status.get(path) == "✅", f"{path} is committed: mark it ✅ in the roadmap"
    for path, mark in status.items():
        if mark == "✅":
            assert path in committed, f"the roadmap marks {path} done but no notebook is committed"


def test_results_table_quotes_committed_outputs():
    section = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`(stage\d_\w+/\d\d_\w+)`\s*\|(.*)$", section, re.M)
    for path, rest in rows:
        nb = json.loads((ROOT / f"{path}.ipynb").read_text(encoding="utf-8"))
        outputs = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                          for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
        for number in re.findall(r"\d+\.\d+%", rest):
            assert number in outputs, f"README quotes {number} for {path}, but its stored outputs never print it"


def _committed_text_files():
    """Every file git tracks (or, outside a git checkout, every file but the ignored folders), text only."""
    import subprocess
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        paths = [ROOT / line for line in listed.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "data", "build", "__pycache__"}
        paths = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    for path in paths:
        if not path.is_file():
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file


_OUTSIDE = re.compile(r"\.\./shared|/work/main|/work/shared")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _outside_references(root: Path, path: Path, text: str) -> list:
    """What in one file points outside `root`: the sibling `shared/` folder or a build-machine path, or a relative
    Markdown link that leaves the checkout or names a missing file."""
    rel = path.relative_to(root).as_posix()
    problems = [f"{rel}: refers to {m.group(0)!r}" for m in _OUTSIDE.finditer(text)]
    if path.suffix == ".md":
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            resolved = (path.parent / target).resolve()
            if root not in resolved.parents:
                problems.append(f"{rel}: links outside the repository: {target}")
            elif not resolved.exists():
                problems.append(f"{rel}: links to a missing file: {target}")
    return problems


def test_no_committed_file_points_outside_the_repository():
    """A user has only this repository: the specification lives in it (CURRICULUM.md, NOTEBOOKS.md, REVIEW.md)."""
    problems = []
    for path, text in _committed_text_files():
        if path.relative_to(ROOT).as_posix() != "tests/test_repo.py":  # this file names the patterns
            problems += _outside_references(ROOT, path, text)
    assert not problems, "\n".join(problems)


def test_the_outside_reference_check_can_fail(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "present.md").write_text("x")
    page = tmp_path / "stage" / "README.md"
    sibling = "../" + "shared"  # spelled in two parts so that this file itself does not match
    text = f"See {sibling}/CURRICULUM.md, [ok](../present.md), [gone](../absent.md), [out](../../elsewhere.md)."
    problems = _outside_references(tmp_path, page, text)
    assert len(problems) == 3, problems
    assert any(sibling in p for p in problems) and any("missing" in p for p in problems)
    assert any("outside" in p for p in problems)


def test_import_common_reaches_every_submodule():
    import common

    assert common.nn.Conv2d is not None and common.data is not None
    assert "nn" in dir(common) and "models" in common.__all__
    import pytest
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        common.nope  # noqa: B018
