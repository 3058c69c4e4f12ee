"""The README documents what the code does: schemas and config keys come from one definition."""

from lookalike import config_docs, schemas

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands():
    opening = "\n".join(README.splitlines()[:30])
    assert "make demo" in opening and "make test" in opening


def test_readme_shows_every_output_schema_as_defined_in_schemas_py():
    for columns in schemas.TABLES.values():
        assert schemas.markdown(columns) in README


def test_every_config_key_is_documented_in_the_readme():
    missing = [key for key, _ in config_docs.keys() if not config_docs.DOCS.get(key)]
    assert not missing, f"add a sentence to lookalike/config_docs.py for: {missing}"
    assert config_docs.markdown() in README, "regenerate with: python -m lookalike.config_docs"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
