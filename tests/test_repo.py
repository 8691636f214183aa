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
