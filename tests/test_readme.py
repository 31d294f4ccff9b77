"""The README's example output is what the main job prints: same splits, same columns, same header."""

from __future__ import annotations

import re
from pathlib import Path

from revinterp.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> list[str]:
    block = re.search(r"<!-- readme-example -->\n```\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert block, "README.md has no example block (python analyses/readme_example.py writes it)"
    return block.group(1).splitlines()


def test_readme_example_table_matches_a_fresh_run(tmp_path, capsys):
    lines = readme_table()
    assert re.match(r"run runs/default-seed0: \d+ steps, fitted$", lines[0])
    assert lines[1] == "report: runs/default-seed0/report.html"
    assert main(["run", "--preset", "tiny", "--n-pairs", "30", "--out", str(tmp_path / "run"), "--quiet",
                 "--max-pairs", "8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(printed) if line.startswith("split"))
    table = lines.index(printed[header])  # the README has the same column header, character for character
    assert lines[table + 1] == printed[header + 1]
    assert [row.split()[0] for row in lines[table + 2:]] == [row.split()[0] for row in printed[header + 2:]]
    assert all(len(row.split()) == len(printed[header + 2].split()) for row in lines[table + 2:])
