"""The shell blocks of README.md and docs/*.md, with the test directives written beside them.

A fenced block tagged ``bash`` (or ``sh``, ``shell``) holds commands a reader types;
``tests/docs/test_commands.py`` runs them as written. What the test changes or adds is
written in the document itself, in HTML comments just above the block (invisible when
rendered), one directive each::

    <!-- commands-test: skip REASON -->               not run (the reason is required)
    <!-- commands-test: replace OLD => NEW -->         OLD (a literal, at word bounds) -> NEW
    <!-- commands-test: replace-all OLD => NEW -->     the same, in every later block of the file
    <!-- commands-test: append PREFIX => FLAGS -->     FLAGS added to each command holding PREFIX
    <!-- commands-test: before COMMAND -->             a setup command run before the block
    <!-- commands-test: daemon PREFIX => log TEXT -->  commands holding PREFIX run in the
    <!-- commands-test: daemon PREFIX => listening PORT -->  background until the file ends
                                                        (or a stop-daemons); ready when
                                                        their log holds TEXT / PORT listens
    <!-- commands-test: stop-daemons -->               stop the running daemons first
    <!-- commands-test: detach PREFIX -->              run in the background; must exit 0
                                                        by the end of the block
    <!-- commands-test: retry PREFIX -->               rerun until it exits 0 (bounded)
    <!-- commands-test: write PATH -->                 a non-shell block: written to PATH
    <!-- commands-test: expect FOLDER rounds=N [federated] -->  the block's run wrote
                                                        FOLDER/summary.json with N rounds
                                                        (and federated evaluation rows)
    <!-- commands-test: same-as FILE -->               each command also appears in FILE's
                                                        blocks (run there)

NEW, FLAGS, PATH and FOLDER may hold ``{tmp}`` (a temporary folder), ``{cwd}`` (the
copy of the checkout the commands run in) and ``{port:NAME}`` (a free port, the same
for the same NAME), and ``$VAR`` (the commands' environment, for ``write``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

DIRECTIVE = re.compile(r"^\s*<!--\s*commands-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
SHELLS = frozenset({"bash", "sh", "shell"})
KINDS = frozenset(
    {
        "skip",
        "replace",
        "replace-all",
        "append",
        "before",
        "daemon",
        "stop-daemons",
        "detach",
        "retry",
        "write",
        "expect",
        "same-as",
    }
)


class DirectiveError(ValueError):
    """A directive the test cannot follow (unknown, malformed, or about nothing)."""


@dataclasses.dataclass(frozen=True)
class Directive:
    """One ``<!-- commands-test: KIND ARGS -->`` comment."""

    kind: str
    args: str
    line: int

    def pair(self) -> tuple[str, str]:
        """``OLD => NEW`` split in two."""
        old, sep, new = self.args.partition(" => ")
        if not sep or not old.strip():
            raise DirectiveError(f"line {self.line}: {self.kind} needs 'A => B', got {self.args!r}")
        return old.strip(), new.strip()


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced block and the directives just above it."""

    path: Path
    line: int
    lang: str
    text: str
    directives: tuple[Directive, ...]

    @property
    def name(self) -> str:
        """``README.md:26`` (where the block starts)."""
        return f"{self.path.name}:{self.line}"

    def of(self, kind: str) -> list[Directive]:
        """This block's directives of one kind."""
        return [d for d in self.directives if d.kind == kind]

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELLS


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with the directives of the comment lines above it.

    Raises
    ------
    DirectiveError
        An unknown directive kind, or directives followed by no block.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: list[Directive] = []
    i = 0
    while i < len(lines):
        match = DIRECTIVE.match(lines[i])
        if match:
            kind, _, args = match["body"].partition(" ")
            if kind not in KINDS:
                raise DirectiveError(f"{path.name}:{i + 1}: unknown directive {kind!r}")
            pending.append(Directive(kind, args.strip(), i + 1))
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if fence:
            start, indent = i, len(fence["indent"])
            body: list[str] = []
            i += 1
            while i < len(lines) and not FENCE.match(lines[i]):
                body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
                i += 1
            blocks.append(Block(path, start + 1, fence["lang"], "\n".join(body), tuple(pending)))
            pending = []
        elif lines[i].strip() and pending:
            raise DirectiveError(
                f"{path.name}:{pending[0].line}: directives must stand right above a block"
            )
        i += 1
    if pending:
        raise DirectiveError(f"{path.name}:{pending[0].line}: directives above no block")
    return blocks


def substitute(
    text: str, pairs: Sequence[tuple[str, str]], *, where: str, required: bool = True
) -> str:
    """``text`` with each OLD (a literal bounded by non-word characters) replaced by NEW.

    Raises
    ------
    DirectiveError
        ``required`` and an OLD that does not occur (a stale directive).
    """
    for old, new in pairs:
        pattern = re.compile(r"(?<![\w.])" + re.escape(old) + r"(?!\w)")
        text, count = pattern.subn(lambda _, new=new: new, text)  # type: ignore[misc]
        if required and count == 0:
            raise DirectiveError(f"{where}: 'replace {old} => ...' matches nothing")
    return text


def commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(_strip_comment(line).strip())
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` outside quotes, after a blank)."""
    quote: str | None = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def program(command: str) -> str:
    """A command with a leading ``.venv/bin/`` dropped (how ``same-as`` compares)."""
    return re.sub(r"(^|\s)\.venv/bin/", r"\1", " ".join(command.split()))
