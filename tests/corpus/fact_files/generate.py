"""Write the bad-input corpus of fact files (run it from anywhere: ``python tests/corpus/fact_files/generate.py``).

Each file is a few lines that a careless or hostile user could hand to ``revinterp train --facts``;
``tests/test_fact_file_corpus.py`` states what the command must answer for each. The files are written as bytes
so the encodings (a byte-order mark, Latin-1, UTF-16, bare carriage returns) are exactly what they claim. The
size-guard cases are not here: the test builds them against a small configured limit.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = "subject,relation,object,inverse\n"
GOOD = "Ada Ash,parent_of,Ben Birch,child_of\nCleo Cedar,parent_of,Dan Dale,child_of\n"
COLUMNS = ("subject", "relation", "object", "inverse")


def csv(*rows: str) -> bytes:
    return (HEADER + "".join(r + "\n" for r in rows)).encode()


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows).encode()


def row(subject="Ada Ash", relation="parent_of", obj="Ben Birch", inverse="child_of") -> dict:
    return dict(zip(COLUMNS, (subject, relation, obj, inverse)))


CASES: dict[str, bytes] = {
    # relation names that str.format would read as placeholders
    "relation_brace.csv": csv("Ada,{foo},Ben,child_of", "Cleo,{foo},Dan,child_of"),
    "relation_positional.csv": csv("Ada,{0},Ben,child_of", "Cleo,{0},Dan,child_of"),
    "relation_subject.csv": csv("Ada,{subject},Ben,child_of", "Cleo,{subject},Dan,child_of"),
    "inverse_object.csv": csv("Ada,parent_of,Ben,{object}", "Cleo,parent_of,Dan,{object}"),
    # the tokenizer's special tokens, whole or inside a word
    "special_relation.csv": csv("Ada,<bos>,Ben,child_of", "Cleo,<bos>,Dan,child_of"),
    "special_entity.csv": csv("Ada,parent_of,<eos>,child_of", "Cleo,parent_of,Dan,child_of"),
    "special_inside_word.csv": csv("Ada,parent_of,Ben<pad>Birch,child_of", "Cleo,parent_of,Dan,child_of"),
    "special_entity.jsonl": jsonl(row(subject="Ada <unk>"), row("Cleo", obj="Dan")),
    # names that would split or join words unseen
    "whitespace_only.csv": csv("Ada,parent_of,Ben,child_of", "   ,parent_of,Dan,child_of"),
    "no_break_space.csv": csv("Ada\u00a0Ash,parent_of,Ben,child_of", "Cleo,parent_of,Dan,child_of"),
    "zero_width_space.csv": csv("Ada,parent_of,Ben\u200b,child_of", "Cleo,parent_of,Dan,child_of"),
    "control_character.csv": csv("Ada\x1b[31m,parent_of,Ben,child_of", "Cleo,parent_of,Dan,child_of"),
    "relation_with_space.csv": csv("Ada,parent of,Ben,child_of", "Cleo,parent of,Dan,child_of"),
    "long_name.csv": csv(" ".join(f"w{i}" for i in range(65)) + ",parent_of,Ben,child_of",
                         "Cleo,parent_of,Dan,child_of"),
    # JSONL values that are not strings
    "jsonl_list.jsonl": jsonl(row(subject=["Ada", "Ash"]), row("Cleo", obj="Dan")),
    "jsonl_dict.jsonl": jsonl(row(), row("Cleo", relation={"name": "parent_of"}, obj="Dan")),
    "jsonl_number.jsonl": jsonl(row(obj=42), row("Cleo", obj="Dan")),
    "jsonl_null.jsonl": jsonl(row(inverse=None), row("Cleo", obj="Dan")),
    "jsonl_bool.jsonl": jsonl(row(), row("Cleo", obj=True)),
    "jsonl_not_object.jsonl": jsonl(row(), ["Cleo", "parent_of", "Dan", "child_of"]),
    "jsonl_bad_json.jsonl": jsonl(row(), '{"subject": "Cleo", "relation": "parent_of",'),
    "jsonl_missing_field.jsonl": jsonl(row(), {"subject": "Cleo", "relation": "parent_of", "object": "Dan"}),
    # encodings
    "bom_header.csv": b"\xef\xbb\xbf" + csv(*GOOD.splitlines()),  # accepted
    "bom_header.jsonl": b"\xef\xbb\xbf" + jsonl(row(), row("Cleo Cedar", obj="Dan Dale")),  # accepted
    "latin1.csv": HEADER.encode() + "Zo\u00eb,parent_of,Ben,child_of\n".encode("latin-1") + GOOD.encode(),
    "utf16.csv": (HEADER + GOOD).encode("utf-16"),
    "bare_carriage_returns.csv": (HEADER + GOOD).replace("\n", "\r").encode(),  # old Mac line ends: accepted
    # structure
    "empty.csv": b"",
    "header_only.csv": HEADER.encode(),
    "one_fact.csv": csv("Ada,parent_of,Ben,child_of"),
    "missing_column.csv": b"subject,relation,object\nAda,parent_of,Ben\nCleo,parent_of,Dan\n",
    "semicolons.csv": b"subject;relation;object;inverse\nAda;parent_of;Ben;child_of\n",
    "repeated_column.csv": b"subject,relation,object,inverse,subject\nAda,parent_of,Ben,child_of,Eve\n",
    "unquoted_comma.csv": csv("Ash, Ada,parent_of,Ben,child_of", "Cleo,parent_of,Dan,child_of"),
    "short_row.csv": csv("Ada,parent_of", "Cleo,parent_of,Dan,child_of"),
    "empty.jsonl": b"\n\n",
    "facts.txt": b"Ada parent_of Ben\n",
    # several answers per question (a parent's children, a child's two parents) are data: accepted
    "one_to_many.csv": csv("Ada,parent_of,Ben,child_of", "Ada,parent_of,Cleo,child_of",  # two answers
                           "Dan,parent_of,Ben,child_of", "Cleo,child_of,Dan,parent_of",  # two parents each
                           "Gus,teacher_of,Hal,student_of", "Ivy,teacher_of,Hal,student_of"),  # Hal's teachers
    # facts whose given splits contradict each other: every conflict at once
    "conflicts.csv": (HEADER.strip() + ",split\n" + "".join(r + "\n" for r in (
        "Ada,parent_of,Ben,child_of,both", "Ben,child_of,Ada,parent_of,both",  # the same split twice: fine
        "Dan,parent_of,Eve,child_of,both", "Eve,child_of,Dan,parent_of,forward_held_out",  # both vs reverse held out
        "Gus,teacher_of,Hal,student_of,reverse_held_out", "Gus,teacher_of,Hal,student_of,both",
        "Ivy,teacher_of,Jo,student_of,forward_held_out", "Ivy,teacher_of,Jo,student_of,reverse_held_out"))).encode(),
    "inverse_changes.csv": csv("Ada,parent_of,Ben,child_of", "Cleo,parent_of,Dan,kid_of",
                               "Eve,parent_of,Fay,offspring_of"),
    "own_inverse.csv": csv("Ada,sibling_of,Ben,sibling_of", "Cleo,sibling_of,Dan,sibling_of"),
    # a name hostile to an HTML report is still data (the report escapes it): accepted
    # braces in entity names are data, never read as placeholders: accepted
    "braces_in_entity.csv": csv("{subject},parent_of,{0},child_of", "{object} x,parent_of,Dan,child_of"),
    "html_entity.csv": csv("</script><svg/onload=document.title='x'>,parent_of,Ben,child_of",
                           "Cleo,parent_of,<b>Dan</b>,child_of"),
}


def main() -> None:
    for old in HERE.iterdir():
        if old.name != Path(__file__).name and old.suffix in (".csv", ".jsonl", ".txt"):
            old.unlink()
    for name, data in CASES.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
