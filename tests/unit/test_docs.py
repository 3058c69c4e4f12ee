"""The README and docs/ document what the code does: schemas and config keys come from one
definition, links and anchors resolve, and the code they name exists. Fast: no Spark, no imports
of the heavy modules (names are checked in the source)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lookalike import config, schemas
from lookalike.config import reference
from tests.support.paths import ROOT

README_PATH = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
README = README_PATH.read_text(encoding="utf-8")
DOC_FILES = sorted(DOCS_DIR.glob("*.md"))
ALL_MARKDOWN = [README_PATH, *DOC_FILES]
MAX_README_LINES = 300


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- the README's opening ------------------------------------------------------------------------


def _opening_commands() -> list[str]:
    """The commands of the first fenced block in the README's first 30 lines."""
    opening = README.splitlines()[:30]
    fences = [i for i, line in enumerate(opening) if line.startswith("```")]
    assert len(fences) >= 2, "the README's first 30 lines must hold a code block with the two commands"
    block = opening[fences[0] + 1 : fences[1]]
    return [line.split("#")[0].strip() for line in block if line.split("#")[0].strip()]


def test_readme_opens_with_the_two_commands():
    assert _opening_commands() == ["make demo", "make test"]
    opening = "\n".join(README.splitlines()[:30])
    for needed in ("Python 3.10+", "Java 17+", ".venv"):
        assert needed in opening, f"the README's opening must say what the two commands need: {needed}"


def test_readme_is_at_most_300_lines():
    lines = len(README.splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_ci_runs_the_readme_test_command():
    command = _opening_commands()[1]
    # Only the command itself counts: not a comment or a quoted string naming it (`echo "make
    # test"`), nor a longer target such as `make test-compat`.
    words = r"\s+".join(map(re.escape, command.split()))
    runs = re.compile(rf"(?:^|[;&|(]|\b(?:then|do|else|time|exec)\s)\s*{words}(?=$|[\s;&|)<>])")
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        line = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'", "''", line).split("#")[0]
        if runs.search(line):
            return
    pytest.fail(f".ci/run does not run the README's test command `{command}`")


# --- schemas and config keys -----------------------------------------------------------------------


def test_readme_shows_every_output_schema_as_defined_in_schemas_py():
    for name, columns in schemas.TABLES.items():
        assert schemas.markdown(columns) in README, f"README's {name} table differs from schemas.py"


def _config_fields() -> list[str]:
    """Dotted keys of every field of the config models, read from the classes themselves."""
    keys = []
    for name, section in config.Config.model_fields.items():
        cls = section.annotation
        assert isinstance(cls, type) and issubclass(cls, config.models.Settings), (
            f"config section {name} is not a Settings model"
        )
        keys += _fields(name, cls)
    return keys


def _fields(prefix: str, cls) -> list[str]:
    """Dotted keys of a section's fields; a nested section (output.catalog) gives its own keys."""
    keys = []
    for item, info in cls.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, config.models.Settings):
            keys += _fields(f"{prefix}.{item}", nested)
        else:
            keys.append(f"{prefix}.{item}")
    return keys


def test_every_config_field_has_a_sentence():
    fields = _config_fields()
    described = {key: description for key, _, description in reference.keys()}
    missing = [key for key in fields if not described.get(key, "").strip()]
    assert not missing, f"add Field(description=...) in lookalike/config/models.py for: {missing}"
    stale = sorted(set(described) - set(fields))
    assert not stale, f"lookalike.config.reference lists keys that are no config fields: {stale}"
    assert [key for key, _, _ in reference.keys()] == fields, "reference.keys() must list every field, in order"


def test_docs_configuration_md_holds_the_current_key_table():
    text = (DOCS_DIR / "configuration.md").read_text(encoding="utf-8")
    assert text.count(reference.START) == 1 and text.count(reference.END) == 1
    table = text.split(reference.START)[1].split(reference.END)[0].strip()
    assert table == reference.markdown(), f"docs/configuration.md's key table is stale: run {reference.COMMAND}"


# --- links and anchors -----------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation but '-' and '_'
    dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links_in(text: str) -> list[str]:
    out = []
    for line in _prose_lines(text):
        # Inline code is not a link, but a link's text may be inline code.
        line = re.sub(r"(?<!\[)`[^`]*`(?!\])", "", line)
        out += LINK.findall(line)
    return out


def links(path: Path) -> list[str]:
    return links_in(path.read_text(encoding="utf-8"))


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    return broken


def test_the_link_checker_knows_githubs_anchors():
    assert slug("Training on the embeddings: `lookalike.readers`") == "training-on-the-embeddings-lookalikereaders"
    assert (
        slug("Shipping the environment: `--package-env` and `--env`")
        == "shipping-the-environment---package-env-and---env"
    )
    assert slug("What `./spark-submit.sh` does") == "what-spark-submitsh-does"
    assert slug("Neighbours at scale: exact against IVF") == "neighbours-at-scale-exact-against-ivf"
    assert slug("max_error_fraction & [links](x.md)") == "max_error_fraction--links"
    assert links_in(
        "[a](x.md#b) ![img](p.png) `[not](code.md)` [https](https://e.org)\n"
        '```\n[fenced](no.md)\n```\n[`code` text](y.md "title")'
    ) == ["x.md#b", "p.png", "https://e.org", "y.md"]


@pytest.mark.parametrize("path", ALL_MARKDOWN, ids=_rel)
def test_every_relative_link_and_anchor_resolves(path):
    assert links(path) or path == README_PATH, f"{_rel(path)} links nowhere: a newcomer cannot get back"
    broken = broken_links(path)
    assert not broken, f"{_rel(path)}: broken links: {broken}"


def test_every_docs_file_is_linked_from_the_readme():
    linked = {(README_PATH.parent / t.partition("#")[0]).resolve() for t in links(README_PATH) if not t.startswith("#")}
    unlinked = [_rel(p) for p in DOC_FILES if p.resolve() not in linked]
    assert DOC_FILES, "docs/ holds no Markdown files"
    assert not unlinked, f"README.md does not link: {unlinked}"


def test_markdown_tables_have_as_many_cells_as_their_header():
    """An unescaped '|' in a cell (inside backticks too) splits it on GitHub."""
    bad = []
    for path in ALL_MARKDOWN:
        width = None
        for line in _prose_lines(path.read_text(encoding="utf-8")):
            if not line.startswith("|"):
                width = None
                continue
            cells = len(re.split(r"(?<!\\)\|", line.strip().strip("|")))
            if width is None:
                width = cells
            elif cells != width:
                bad.append(f"{_rel(path)}: {line[:80]}")
    assert not bad, f"table rows with the wrong number of cells: {bad}"


# --- the code the docs name ------------------------------------------------------------------------

LIB = ROOT / "lib"
DOTTED = re.compile(r"`(lookalike(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
REPO_PATH = re.compile(r"(?<![\w./~-])((?:lib|tests|bench|conf|scripts|deploy|jobs|notebooks|samples)/[\w./-]*[\w/])")


def _module_file(parts: list[str]) -> Path | None:
    base = LIB.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(body: list[ast.stmt], name: str) -> list[ast.stmt] | None:
    """The body of `name` if it is a class, [] if it is another top-level name, else None."""
    found = None
    for node in body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            found = []
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                found = []
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = []
    return found


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(parts[:cut])
        if module is None:
            continue
        body: list[ast.stmt] | None = ast.parse(module.read_text(encoding="utf-8")).body
        for name in parts[cut:]:
            body = _defines(body, name) if body is not None else None
            if body is None:
                return False
        return True
    return False


def test_the_name_checker_tells_real_names_from_stale_ones():
    assert resolves("lookalike.config.Config")
    assert resolves("lookalike.schemas.markdown")
    assert not resolves("lookalike.no_such_module")
    assert not resolves("lookalike.config.no_such_function")


@pytest.mark.parametrize("path", ALL_MARKDOWN, ids=_rel)
def test_every_module_and_name_the_docs_mention_exists(path):
    text = path.read_text(encoding="utf-8")
    stale = sorted({name for name in DOTTED.findall(text) if not resolves(name)})
    assert not stale, f"{_rel(path)} names code that does not exist (moved?): {stale}"


@pytest.mark.parametrize("path", ALL_MARKDOWN, ids=_rel)
def test_every_repository_path_the_docs_mention_exists(path):
    text = path.read_text(encoding="utf-8")
    named = {p.rstrip("/.") for p in REPO_PATH.findall(text) if not p.startswith("bench/results")}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{_rel(path)} names files that do not exist: {missing}"
