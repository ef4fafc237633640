"""Skills from SKILL.md folders, and the per-session whitelist."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessions_app.engine.skills import Skill, load_skills, visible_skills


def write_skill(folder: Path, front: str, body: str = "Body text.\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SKILL.md"
    path.write_text(f"---\n{front}\n---\n{body}", encoding="utf-8")
    return path


def test_every_skill_folder_below_a_dir_is_loaded(tmp_path: Path) -> None:
    write_skill(
        tmp_path / "pdf", "name: pdf\ndescription: Work with PDF files", "\nStep 1.\nStep 2.\n"
    )
    write_skill(tmp_path / "deep" / "nested" / "sql", "name: sql\ndescription: 'Write SQL: well'")
    (tmp_path / "not-a-skill").mkdir()

    skills = load_skills([str(tmp_path)])

    assert skills == {
        "pdf": Skill("pdf", "Work with PDF files", "Step 1.\nStep 2."),
        "sql": Skill("sql", "Write SQL: well", "Body text."),
    }


def test_the_last_registration_of_a_name_wins(tmp_path: Path) -> None:
    write_skill(tmp_path / "a" / "x", "name: same\ndescription: first", "FIRST")
    write_skill(tmp_path / "b" / "x", "name: same\ndescription: second", "SECOND")

    skills = load_skills([str(tmp_path / "a"), str(tmp_path / "b")])

    assert skills["same"].content == "SECOND"


@pytest.mark.parametrize(
    "text",
    [
        "no front matter at all",
        "---\nname: x\ndescription: never closed\n",
        "---\n[not, a, mapping]\n---\nbody",
        "---\nname: x\n---\nno description",
        "---\nname: ''\ndescription: d\n---\n",
        "---\nname: x\ndescription: [unclosed\n---\n",
    ],
)
def test_a_malformed_file_raises_naming_it(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "SKILL.md").write_text(text, encoding="utf-8")

    with pytest.raises(ValueError, match="broken"):
        load_skills([str(tmp_path)])


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does-not-exist"):
        load_skills([str(tmp_path / "does-not-exist")])


def test_visible_skills_follow_the_whitelist() -> None:
    skills = {"a": Skill("a", "A", "1"), "b": Skill("b", "B", "2")}
    assert visible_skills(skills, None) == skills
    assert visible_skills(skills, ()) == {}
    assert visible_skills(skills, ("b", "unknown")) == {"b": skills["b"]}
