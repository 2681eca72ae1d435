"""Runs the shell blocks of one document, in order, as a reader would (see ``commands.py``).

The commands run in a fresh copy of the checkout (its tracked and untracked files,
``.venv`` linked to this test's virtual environment) so that what they write
(results, certificates, ``fed/``) never lands in the working tree, with this copy's
code first on ``PYTHONPATH``. Every process is started in a session of its own and
stopped by PID, descendants included (:class:`fedrank.deploy.processes.ProcessGroup`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

from fedrank.deploy.launch import environment_bin, flower_env
from fedrank.deploy.processes import ProcessGroup, free_ports, listening
from tests.docs.commands import Block, DirectiveError, commands, program, read_blocks, substitute

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 600.0  # seconds; a command that takes longer fails the test
READY_TIMEOUT = 300.0  # a daemon's readiness (a loaded 2-core machine is slow)
RETRY_TIMEOUT = 300.0


def checkout_copy(target: Path) -> Path:
    """The checkout's tracked and untracked (not ignored) files under ``target``, with
    ``.venv`` pointing at this test's virtual environment."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(environment_bin().parent, target_is_directory=True)
    return target


class DocumentRun:
    """One document's blocks run in order in ``cwd``; ``tmp`` for placeholders."""

    def __init__(self, doc: Path, *, cwd: Path, tmp: Path) -> None:
        self.doc = doc
        self.cwd = cwd
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.ports: dict[str, int] = {}
        self.env = flower_env(
            PYTHONPATH=str(cwd),
            RAY_USAGE_STATS_ENABLED="0",
            FLWR_HOME=str(cwd / "flwr-home"),
            HOME=str(tmp / "home"),
            MPLBACKEND="Agg",
        )
        (tmp / "home").mkdir(exist_ok=True)
        self.group = ProcessGroup(self.logs, new_session=True, die_with_parent=True)
        self.daemons = ProcessGroup(self.logs / "daemons", new_session=True, die_with_parent=True)
        self.every: list[tuple[str, str]] = []  # replace-all pairs so far
        self.count = 0

    # ------------------------------------------------------------------ placeholders

    def fill(self, text: str) -> str:
        """``{tmp}``, ``{cwd}`` and ``{port:NAME}`` filled in."""

        def port(match: re.Match[str]) -> str:
            name = match[1]
            if name not in self.ports:
                taken = set(self.ports.values())
                self.ports[name] = next(p for p in free_ports(8) if p not in taken)
            return str(self.ports[name])

        text = re.sub(r"\{port:([\w-]+)\}", port, text)
        return text.replace("{tmp}", str(self.tmp)).replace("{cwd}", str(self.cwd))

    def prepared(self, block: Block) -> str:
        """The block's text with its replacements and the file's replace-all ones."""
        self.every += [d.pair() for d in block.of("replace-all")]
        text = substitute(block.text, [d.pair() for d in block.of("replace")], where=block.name)
        text = substitute(text, self.every, where=block.name, required=False)
        return self.fill(text)

    def globally(self, text: str) -> str:
        """A directive's argument with the file's replace-all pairs and placeholders."""
        return self.fill(substitute(text, self.every, where=self.doc.name, required=False))

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Every block of the document, in order; stops every process at the end."""
        try:
            for block in read_blocks(self.doc):
                self.block(block)
        finally:
            self.daemons.stop_all(grace=10)
            self.group.stop_all(grace=10)

    def block(self, block: Block) -> None:
        if block.of("skip") or block.of("same-as"):
            return  # checked by test_command_blocks.py
        if block.of("stop-daemons"):
            self.daemons.stop_all(grace=10)
            self.daemons = ProcessGroup(
                self.logs / f"daemons-{block.line}", new_session=True, die_with_parent=True
            )
        text = self.prepared(block)
        if block.of("write"):
            path = Path(self.expand(self.globally(block.of("write")[0].args)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
            return
        if not block.is_shell:
            return
        started = time.time()
        for before in block.of("before"):
            self.foreground(self.globally(before.args), block)
        detached = []
        for command in commands(text):
            for append in block.of("append"):
                prefix, flags = append.pair()
                if prefix in command:
                    command = f"{command} {self.globally(flags)}"
            if command.startswith("export "):
                self.export(command, block)
            elif daemon := self.matching(block, "daemon", command):
                self.daemon(command, self.globally(daemon.pair()[1]), block)
            elif self.matching(block, "detach", command):
                detached.append(self.start(command))
            elif self.matching(block, "retry", command):
                self.retry(command, block)
            else:
                self.foreground(command, block)
        for name, proc in detached:
            code = proc.wait(timeout=COMMAND_TIMEOUT)
            if code != 0:
                self.fail(block, name, f"exited with status {code}")
        for expect in block.of("expect"):
            self.check_expect(self.globally(expect.args), block, since=started)

    @staticmethod
    def matching(block: Block, kind: str, command: str) -> object:
        for directive in block.of(kind):
            prefix = directive.pair()[0] if " => " in directive.args else directive.args
            if prefix in command:
                return directive
        return None

    def start(self, command: str) -> tuple[str, subprocess.Popen[bytes]]:
        self.count += 1
        label = re.sub(r"[^\w.-]+", "_", command)[:60]
        name = f"{self.count:03d}-{label}"
        return name, self.group.start(name, ["bash", "-c", command], env=self.env, cwd=self.cwd)

    def foreground(self, command: str, block: Block) -> None:
        started = time.monotonic()
        name, proc = self.start(command)
        try:
            code = proc.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(block, name, f"still running after {COMMAND_TIMEOUT:g} s")
        if code != 0:
            self.fail(block, name, f"exited with status {code}")
        print(f"{block.name}: {time.monotonic() - started:6.1f} s  {command[:110]}")

    def retry(self, command: str, block: Block) -> None:
        deadline = time.monotonic() + RETRY_TIMEOUT
        while True:
            name, proc = self.start(command)
            if proc.wait(timeout=COMMAND_TIMEOUT) == 0:
                return
            if time.monotonic() > deadline:
                self.fail(block, name, f"never exited 0 within {RETRY_TIMEOUT:g} s")
            time.sleep(2)

    def daemon(self, command: str, ready: str, block: Block) -> None:
        self.count += 1
        name = f"{self.count:03d}-daemon"
        proc = self.daemons.start(name, ["bash", "-c", command], env=self.env, cwd=self.cwd)
        how, _, what = ready.partition(" ")
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready(how, what, name):
            if proc.poll() is not None:
                self.fail(block, name, f"exited with status {proc.returncode}", self.daemons)
            if time.monotonic() > deadline:
                self.fail(block, name, f"not ready ({ready}) in {READY_TIMEOUT:g} s", self.daemons)
            time.sleep(0.5)

    def ready(self, how: str, what: str, name: str) -> bool:
        if how == "log":
            return what in self.daemons.log(name)
        if how == "listening":
            return listening("127.0.0.1", int(what))
        raise DirectiveError(f"daemon readiness must be 'log TEXT' or 'listening PORT': {how!r}")

    def export(self, command: str, block: Block) -> None:
        """Carry an ``export`` into the environment of every later command."""
        out = subprocess.run(
            ["bash", "-c", f"{command} && env -0"],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            check=False,
        )
        if out.returncode != 0:
            pytest.fail(f"{block.name}: {command!r} failed: {out.stderr.decode()}")
        pairs = (item.partition("=") for item in out.stdout.decode().split("\0") if item)
        self.env = {key: value for key, _, value in pairs}

    def expand(self, text: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: self.env.get(m[1], m[0]), text)

    def check_expect(self, args: str, block: Block, *, since: float) -> None:
        folder, *facts = args.split()
        summary_path = self.cwd / folder / "summary.json"
        assert summary_path.is_file(), f"{block.name}: no {summary_path}"
        assert summary_path.stat().st_mtime >= since - 1, f"{block.name}: {summary_path} is old"
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").open()]
        for fact in facts:
            if fact.startswith("rounds="):
                assert summary["rounds"] == int(fact.removeprefix("rounds=")), summary
            elif fact == "federated":
                assert all("federated_accuracy" in row for row in rows if row["round"] > 0), rows
            else:
                raise DirectiveError(f"{block.name}: unknown expectation {fact!r}")

    def fail(
        self, block: Block, name: str, what: str, group: ProcessGroup | None = None
    ) -> NoReturn:
        tail = (group or self.group).log_tail(name, lines=40)
        pytest.fail(f"{self.doc.name}, block at {block.name}: `{name}` {what}; its output:\n{tail}")


def doc_commands(doc: Path) -> set[str]:
    """Every command of a document's shell blocks, as ``same-as`` compares them."""
    return {program(c) for b in read_blocks(doc) if b.is_shell for c in commands(b.text)}


def run_document(doc: Path, tmp: Path) -> None:
    """Run ``doc``'s blocks in a fresh copy of the checkout under ``tmp``."""
    (tmp / "checkout").mkdir()
    cwd = checkout_copy(tmp / "checkout")
    DocumentRun(doc, cwd=cwd, tmp=tmp).run()
