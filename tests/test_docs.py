"""The README and the Slack manifest say what the code does: every `/kf` command and every
`kfbot` subcommand is in the README, the name limit is the one ``naming`` enforces, and the slash
command's usage hint names only commands that exist, with the README's words."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot import cli
from handlers import naming, parse

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match is not None, title
    return match.group(1)


def test_what_it_does_lists_every_command() -> None:
    table = _section("What it does")
    missing = [words for words in parse.USAGE if f"`/kf {words}" not in table]
    assert missing == []


def test_the_commands_table_lists_every_kfbot_subcommand_with_its_required_options() -> None:
    table = _section("Commands")
    for name in cli.COMMANDS:
        assert f"| `kfbot {name}" in table, name
    parser = cli.build_parser()
    shell = parser.parse_args(["shell", "--as", "a@example.com"])
    assert shell.as_ == "a@example.com"
    assert "`kfbot shell --as EMAIL [--admin]`" in table  # required, so not in brackets


def test_the_name_limit_is_namings() -> None:
    assert f"at most {naming.MAX_WORKSPACE_NAME} characters" in _section("What it does")


def test_the_manifest_usage_hint_names_real_commands_in_the_readmes_words() -> None:
    manifest = yaml.safe_load((ROOT / "slack-app-manifest.yaml").read_text(encoding="utf-8"))
    (command,) = manifest["features"]["slash_commands"]
    hint = command["usage_hint"]
    table = _section("What it does")
    for alternative in (a.strip() for a in hint.split("|")):
        usage = f"/kf {alternative}"
        # The words before the first argument name a command; the whole alternative is how the
        # README and /kf help spell the start of its usage.
        assert any(line.startswith(usage) for line in parse.USAGE.values()), alternative
        assert f"`{usage}" in table, alternative
