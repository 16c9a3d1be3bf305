"""The documentation against the code it describes: links that resolve, the commands CI reads out
of the README, and a reference that names every console script, every node parameter (with its
default and unit) and every module of the layout. Each check fails when the docs go stale."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(path.read_text()):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            target = m.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                links.append((number, target))
    return links


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_to_files_and_anchors(doc):
    bad = []
    for number, target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            bad.append(f"{doc.name}:{number}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{doc.name}:{number}: {target}: no heading #{anchor} in {dest.name}")
    assert not bad, "\n".join(bad)


def test_link_checker_sees_broken_links_and_anchors(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# Top (`x`)\n\n[ok](#top-x) [gone](missing.md) `[code](nothing.md)`\n\n```\n[f](x.md)\n```\n"
                   "[web](https://example.org) [self](a.md#nowhere)\n")
    assert anchors(doc) == {"top-x"}
    assert relative_links(doc) == [(3, "#top-x"), (3, "missing.md"), (8, "a.md#nowhere")]


def readme_command(name: str) -> str:
    """The command .ci/run takes from the README's `<!-- ci:NAME -->` block, by .ci/run's own parser."""
    ci = (ROOT / ".ci" / "run").read_text()
    func = re.search(r"^readme_command\(\) \{\n.*?^\}\n", ci, re.S | re.M)
    assert func, ".ci/run has no readme_command function"
    proc = subprocess.run(["bash", "-c", func.group(0) + f'readme_command "{name}"'], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_readme_keeps_the_commands_ci_runs():
    main = readme_command("main")
    steps = [s.strip() for s in main.split("&&")]
    assert any(s.startswith("pip install") and ".[ros,train,replay,test]" in s for s in steps), main
    assert steps[-1] == "crossview-demo"
    assert readme_command("test") == "python -m pytest -q test"


def console_scripts() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [ast.literal_eval(e).split("=")[0].strip() for e in value.elts]
    raise AssertionError("setup.py declares no console_scripts")


def test_every_console_script_has_a_row_in_the_reference():
    text = REFERENCE.read_text()
    scripts = console_scripts()
    assert "localize_node" in scripts and "crossview-replay" in scripts
    missing = [s for s in scripts if not re.search(rf"^\| `{re.escape(s)}` \|", text, re.M)]
    assert not missing, f"docs/reference.md's command table lacks {missing}"


def yaml_parameters() -> dict[str, tuple[str, str]]:
    """name -> (default as written, unit) from config/localize.yaml's lines `name: value  # [unit] ...`."""
    params = {}
    for line in (ROOT / "config" / "localize.yaml").read_text().splitlines():
        m = re.match(r"^ {4}(\w+):\s*(.*?)\s*#\s*\[([^\]]*)\]", line)
        if m:
            params[m.group(1)] = (m.group(2), m.group(3))
    return params


def test_every_parameter_is_in_the_reference_with_its_default_and_unit():
    params = yaml_parameters()
    assert len(params) > 50 and "tile_set" in params and "diagnostics_period_s" in params
    rows = {}
    for line in REFERENCE.read_text().splitlines():
        m = re.match(r"^\| `(\w+)` \| `(.*?)` \| (.*?) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3).replace("\\|", "|"))
    stale = [f"{name}: yaml {value}, reference {rows.get(name, 'missing')}" for name, value in params.items()
             if rows.get(name) != value]
    assert not stale, "docs/reference.md 'Every parameter' disagrees with config/localize.yaml:\n" + "\n".join(stale)


def layout_entries() -> list[str]:
    """Paths of the reference's layout block: first column, nested by two-space indentation."""
    text = REFERENCE.read_text()
    block = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert block, "docs/reference.md has no Layout block"
    paths, parent = [], ""
    for line in block.group(1).splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent > 2:  # blank, or a description's continuation
            continue
        name = re.split(r"\s{2,}", line.strip())[0]
        if indent == 0:
            parent = name if name.endswith("/") else ""
            paths.append(name)
        else:
            paths.append(parent + name)
    return paths


def test_layout_lists_existing_paths_and_every_runtime_module():
    paths = layout_entries()
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/reference.md's layout names paths that do not exist: {missing}"
    package = ROOT / "crossview_ros"
    modules = {f"crossview_ros/{p.name}/" if p.is_dir() else f"crossview_ros/{p.name}"
               for p in package.iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    unlisted = sorted(modules - set(paths))
    assert not unlisted, f"docs/reference.md's layout does not list {unlisted}"


MAX_MODULE_LINES = 600  # the style guide's "no module over ~600 lines": one job per module


def test_no_package_module_is_over_the_line_limit():
    modules = sorted((*ROOT.joinpath("crossview_ros").rglob("*.py"), *ROOT.joinpath("training").rglob("*.py")))
    assert len(modules) > 50, "the package's modules were not found"
    over = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {over}"
