"""A griffe extension that reads revinterp's docstrings the way Sphinx/Napoleon would, for mkdocstrings.

The docstrings are Google style with two habits of the Sphinx world that mkdocstrings does not know:

- ``Example:`` (singular) opens the examples section. Napoleon accepts it; griffe's Google parser only knows
  ``Examples:`` and would render a singular one as an admonition whose ``>>>`` lines become nested quotes. The
  header is renamed to ``Examples:`` before parsing.
- reST literal blocks (a paragraph ending in ``::`` followed by an indented block) become fenced code blocks, and
  reST simple tables (columns framed by ``=====  =====`` rules) become Markdown tables.
- Cross-references are written as Sphinx roles, ``:func:`train```, ``:class:`~revinterp.data.FactSet```. Each
  role becomes an *optional* autorefs link to the object's canonical path (resolved from the object's own scope
  outwards, as Sphinx does), shown as inline code: mkdocs-autorefs links it when the object is rendered on some
  page and leaves plain code otherwise, so a reference to a private or external object never breaks
  ``mkdocs build --strict``.

Loaded by mkdocstrings-python through ``extensions: [docs/_ext/sphinx_roles.py:SphinxRoles]`` in mkdocs.yml;
``exclude_docs`` keeps this file out of the site.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc|const|type):`(?P<target>[^`]+)`")
EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", flags=re.MULTILINE)


class SphinxRoles(griffe.Extension):
    """Read Sphinx/reST habits in docstrings as Markdown (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self.rewrite(obj.docstring.value, obj)

    def rewrite(self, text: str, scope: griffe.Object) -> str:
        text = EXAMPLE_HEADER.sub(r"\g<indent>Examples:", text)
        text = "\n".join(_simple_tables(_literal_blocks(text.split("\n"))))
        return ROLE.sub(lambda match: _link(match["target"], scope), text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _literal_blocks(lines: list[str]) -> list[str]:
    """``text::`` + blank line + an indented block -> ``text:`` + a fenced code block at the paragraph's indent.

    Inside a list item whose content is indented less than Markdown's four spaces (``- item`` continued by two
    spaces), the fence and the rest of the item are indented to four, so the block stays in the item and the
    next item still starts a list.
    """
    out: list[str] = []
    shift, shift_from = 0, 0  # extra indent for the rest of the current list item, from which original indent
    i = 0
    while i < len(lines):
        original = lines[i]
        line = original
        if shift and line.strip():
            if _indent(line) >= shift_from and not LIST_ITEM.match(line):
                line = " " * shift + line
            else:
                shift = 0
                if out and out[-1].strip():  # a list item cannot interrupt the (now nested) paragraph above
                    out.append("")
        if original.rstrip().endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            item = LIST_ITEM.match(original)
            content = len(item["lead"]) if item else _indent(original)  # where the paragraph's text starts
            end = i + 2
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > content):
                end += 1
            block = lines[i + 2:end]
            while block and not block[-1].strip():
                block.pop()
            if block:
                if not shift:
                    marker = len(item["indent"]) if item else _list_marker(lines, i, content)
                    if marker is not None and content < marker + 4:
                        shift, shift_from = marker + 4 - content, content
                inner = min(_indent(b) for b in block if b.strip())
                pad = " " * (content + shift)
                out += [line.rstrip()[:-1], "", pad + "```text"]
                out += [pad + b[inner:] if b.strip() else "" for b in block]
                out += [pad + "```", ""]
                i = end
                continue
        out.append(line)
        i += 1
    return out


LIST_ITEM = re.compile(r"^(?P<lead>(?P<indent>[ ]*)(?:[-*+]|\d+\.)[ ]+)\S")


def _list_marker(lines: list[str], index: int, content_indent: int) -> int | None:
    """The indent of the list marker whose item holds line ``index`` (text at ``content_indent``), if any."""
    for k in range(index, -1, -1):
        if not lines[k].strip():
            return None
        match = LIST_ITEM.match(lines[k])
        if match and len(match["lead"]) == content_indent:
            return len(match["indent"])
        if _indent(lines[k]) < content_indent:
            return None
    return None


RULE = re.compile(r"^\s*=+(?: +=+)+\s*$")


def _simple_tables(lines: list[str]) -> list[str]:
    """A reST simple table (rule, header, rule, rows, rule) -> a Markdown pipe table."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        rules = [k for k in range(i, min(len(lines), i + 200)) if RULE.match(lines[k])][:3]
        if not (rules and rules[0] == i and len(rules) == 3):
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        header = [_cells(row, starts) for row in lines[rules[0] + 1:rules[1]] if row.strip()]
        body = [_cells(row, starts) for row in lines[rules[1] + 1:rules[2]] if row.strip()]
        pad = " " * _indent(lines[i])
        out.append("")
        for row in header[:1] + [["---"] * len(starts)] + body:
            out.append(pad + "| " + " | ".join(row) + " |")
        out.append("")
        i = rules[2] + 1
    return out


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if member.is_alias:  # its docstring is the target's, rewritten where the target is defined
            continue
        yield from _walk(member)


def _link(target: str, scope: griffe.Object) -> str:
    shown = target.lstrip("~").removesuffix("()")
    title = shown.rsplit(".", 1)[-1] if target.startswith("~") else shown
    path = _resolve(shown, scope)
    code = f"<code>{html.escape(title)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(name: str, scope: griffe.Object) -> str | None:
    """Canonical path of ``name`` looked up from ``scope`` outwards (then from the package root), or ``None``."""
    scopes = []
    current: griffe.Object | None = scope
    while current is not None:
        scopes.append(current)
        current = current.parent
    root = scopes[-1]
    if name.startswith(root.name + "."):
        scopes, name = [root], name[len(root.name) + 1:]
    for candidate in scopes:
        try:
            found = candidate[name]
            path = found.final_target.path if found.is_alias else found.path
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if any(part.startswith("_") and not part.startswith("__") for part in path.split(".")):
            return None  # private objects are not rendered
        return path
    return None


def _cells(row: str, starts: list[int]) -> list[str]:
    """The cells of a simple-table row whose columns start at ``starts`` (the last one runs to the end)."""
    bounds = [*starts, len(row) + 1]
    return [row[bounds[c]:bounds[c + 1]].strip().replace("|", "\\|") for c in range(len(starts))]
