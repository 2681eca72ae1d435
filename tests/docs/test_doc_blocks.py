"""The shell blocks of README.md and docs/*.md and their test directives, checked quickly.

Every shell block is run by ``test_doc_commands.py`` unless a directive says why not:
``skip`` with a reason, or ``same-as`` a file whose blocks hold each of its commands
(and run them). Every directive must be one the runner follows, and every
``replace`` must match its block (a stale placeholder fails here, not in a long run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.commands import (
    Block,
    DirectiveError,
    commands,
    program,
    read_blocks,
    substitute,
)
from tests.docs.runner import ROOT, doc_commands

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCKS = [block for doc in DOCS for block in read_blocks(doc)]


def test_every_document_has_shell_blocks_read() -> None:
    assert {b.path.name for b in BLOCKS if b.is_shell} >= {
        "README.md",
        "deployment.md",
        "privacy.md",
        "robustness.md",
        "kubernetes.md",
    }


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.is_shell], ids=lambda b: b.name)
def test_shell_block_runs_or_says_why_not(block: Block) -> None:
    for skip in block.of("skip"):
        assert len(skip.args.split()) >= 4, f"{block.name}: a skip needs its reason"
    for same in block.of("same-as"):
        there = doc_commands(ROOT / same.args)
        missing = [c for c in commands(block.text) if program(c) not in there]
        assert not missing, f"{block.name}: not in {same.args}: {missing}"
    assert commands(block.text), f"{block.name}: a shell block without a command"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.directives], ids=lambda b: b.name)
def test_directives_match_their_block(block: Block) -> None:
    substitute(block.text, [d.pair() for d in block.of("replace")], where=block.name)
    cmds = commands(block.text) if block.is_shell else []
    for kind in ("append", "daemon", "detach", "retry"):
        for directive in block.of(kind):
            prefix = directive.pair()[0] if " => " in directive.args else directive.args
            assert any(prefix in c for c in cmds), f"{block.name}: {kind} {prefix!r} matches none"
    for directive in block.of("daemon"):
        how = directive.pair()[1].split(" ", 1)[0]
        assert how in ("log", "listening"), f"{block.name}: daemon readiness {how!r}"
    assert not (block.of("write") and block.is_shell), f"{block.name}: write is for config blocks"


def test_replace_all_pairs_each_match_a_later_block() -> None:
    for doc in DOCS:
        blocks = read_blocks(doc)
        for i, block in enumerate(blocks):
            for directive in block.of("replace-all"):
                old, _ = directive.pair()
                assert any(
                    substitute(b.text, [(old, "X")], where="", required=False) != b.text
                    for b in blocks[i:]
                ), f"{block.name}: replace-all {old!r} matches nothing"


def test_an_unknown_directive_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- commands-test: repalce a => b -->\n```bash\necho a\n```\n")
    with pytest.raises(DirectiveError, match="unknown directive 'repalce'"):
        read_blocks(doc)


def test_a_stale_replacement_is_refused() -> None:
    with pytest.raises(DirectiveError, match="matches nothing"):
        substitute("flwr run . local", [("rounds=3", "rounds=1")], where="x")


def test_commands_join_continuations_and_drop_comments() -> None:
    text = (
        "# a comment\nfedrank simulate \\\n    --rounds 2   # two rounds\n\necho '#not a comment'\n"
    )
    assert commands(text) == ["fedrank simulate      --rounds 2", "echo '#not a comment'"]


def test_replacements_respect_word_bounds() -> None:
    text = "--port 8000 --other 18000 host:8000 rounds=20 rounds=200"
    out = substitute(text, [("8000", "P"), ("rounds=20", "rounds=2")], where="x")
    assert out == "--port P --other 18000 host:P rounds=2 rounds=200"
