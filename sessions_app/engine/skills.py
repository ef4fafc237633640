"""Skills: named instruction sets loaded from `SKILL.md` folders.

A skill folder holds a `SKILL.md` that starts with YAML front matter between two `---` lines
(`name`, `description`); the rest of the file is the skill's content, given to the LLM when it
calls `activate_skill`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

SKILL_FILE = "SKILL.md"
FENCE = "---"


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    description: str
    content: str


def load_skills(dirs: Sequence[str]) -> dict[str, Skill]:
    """Every skill found below each dir, by name; a later registration of a name wins."""
    skills: dict[str, Skill] = {}
    for directory in dirs:
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"skills directory {directory!r} does not exist")
        for path in sorted(root.rglob(SKILL_FILE)):
            skill = parse_skill_file(path)
            skills[skill.name] = skill
    return skills


def parse_skill_file(path: Path) -> Skill:
    """Read one SKILL.md; a malformed file raises ValueError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
        return parse_skill(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed skill file {path}: {exc}") from exc


def parse_skill(text: str) -> Skill:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != FENCE:
        raise ValueError("it must start with YAML front matter between '---' lines")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == FENCE)
    except StopIteration:
        raise ValueError("the front matter has no closing '---' line") from None
    try:
        front = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML front matter: {exc}") from exc
    if not isinstance(front, dict):
        raise ValueError("the front matter must be a mapping with name and description")
    name, description = front.get("name"), front.get("description")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the front matter needs a non-empty 'name'")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("the front matter needs a non-empty 'description'")
    content = "\n".join(lines[end + 1 :]).strip()
    return Skill(name=name.strip(), description=description.strip(), content=content)


def visible_skills(
    all_skills: Mapping[str, Skill], whitelist: tuple[str, ...] | None
) -> dict[str, Skill]:
    """The skills a session may use: None = all, () = none, else only the listed names."""
    if whitelist is None:
        return dict(all_skills)
    return {name: skill for name, skill in all_skills.items() if name in whitelist}
