"""The docs stay true to the code: every module under fleet/ has its row in docs/architecture.md,
the CLI reference is what fleet's parser prints today and names every public flag, and the
README's two set-up commands are scripts that exist, the test one being what CI runs."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from fleet.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module_files() -> set[str]:
    """Every module and host script under fleet/, as `fleet/...` paths."""
    package = ROOT / "fleet"
    files = {*package.rglob("*.py"), *package.rglob("*.sh")}
    return {path.relative_to(ROOT).as_posix() for path in files if "__pycache__" not in path.parts}


def _architecture_rows() -> set[str]:
    """The `fleet/...` paths docs/architecture.md names (in backquotes)."""
    return set(re.findall(r"`(fleet/[^`\s]*)`", (DOCS / "architecture.md").read_text()))


def test_every_module_under_fleet_has_a_row_in_the_architecture_page():
    missing = sorted(_module_files() - _architecture_rows())
    assert not missing, (
        "docs/architecture.md has no row for these (add `| `PATH` | what it is |` to their part's table):\n"
        + "\n".join(missing))


def test_every_path_the_architecture_page_names_exists():
    stale = sorted(path for path in _architecture_rows() if not (ROOT / path).exists())
    assert not stale, "docs/architecture.md names files that are gone (moved? update the row):\n" + "\n".join(stale)


def test_the_cli_reference_is_what_the_parser_prints_today():
    page = (DOCS / "cli.md").read_text()
    assert page == _gen_cli().render(), "docs/cli.md is stale: run `.venv/bin/python docs/gen_cli.py`"


def _public_flags() -> dict[str, set[str]]:
    """Per `fleet` and `fleet VERB` (the verbs `fleet --help` lists), the option strings of its help."""
    parser = _parser()
    verbs = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    parsers = {"fleet": parser} | {f"fleet {row.dest}": verbs.choices[row.dest] for row in verbs._choices_actions}
    return {title: {flag for action in sub._actions if action.help != argparse.SUPPRESS
                    for flag in action.option_strings}
            for title, sub in parsers.items()}


def _reference_sections() -> dict[str, str]:
    page = (DOCS / "cli.md").read_text()
    parts = re.split(r"^## (.+)$", page, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_public_verb_and_flag_is_in_the_cli_reference():
    sections = _reference_sections()
    flags = _public_flags()
    assert set(flags) <= set(sections), f"verbs without a section in docs/cli.md: {sorted(set(flags) - set(sections))}"
    missing = [f"{title} {flag}" for title, names in flags.items() for flag in sorted(names)
               if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", sections[title])]
    assert not missing, "docs/cli.md lacks (run docs/gen_cli.py):\n" + "\n".join(missing)
    # and the flag sets are real: the reference would not pass with every verb's section empty
    assert {"--inventory", "--dry-run", "--detach"} <= flags["fleet run"]
    assert {"--listen", "--credentials", "--page-profile"} <= flags["fleet serve"]


@pytest.mark.parametrize("internal", ["serve-worker", "--ready-fd", "==SUPPRESS=="])
def test_the_cli_reference_names_nothing_internal(internal):
    assert internal not in (DOCS / "cli.md").read_text()


def test_the_readme_set_up_commands_are_the_scripts_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```\n(.*?)^```", setup, flags=re.MULTILINE | re.DOTALL)
    assert block, "README's Set up has no command block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["scripts/demo", "scripts/test"]
    for command in commands:
        assert (ROOT / command).is_file() and (ROOT / command).stat().st_mode & 0o111, command
    assert re.search(r"^exec scripts/test\b", (ROOT / ".ci" / "run").read_text(), flags=re.MULTILINE)
    assert len(readme.splitlines()) <= 160
