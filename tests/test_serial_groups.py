"""The serial groups of ``make test`` (tests/conftest.py) name tests that exist."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import DEPLOYED, IN_PROCESS, SIMULATIONS, serial_group

ROOT = Path(__file__).resolve().parent.parent


def test_every_group_prefix_names_an_existing_test_file_or_document() -> None:
    for prefix in (*DEPLOYED, *SIMULATIONS, *IN_PROCESS):
        path, _, test = prefix.partition("::")
        assert (ROOT / path).exists(), prefix
        if "[" in test:  # a document's commands: README.md or docs/<name>
            doc = test[test.index("[") + 1 : -1]
            assert (ROOT / doc).exists() or (ROOT / "docs" / doc).exists(), prefix


def test_federations_are_grouped_and_unit_tests_are_not() -> None:
    doc = "tests/docs/test_doc_commands.py::test_document_commands_run_as_written"
    assert serial_group(f"{doc}[deployment.md]") == "deployed"
    assert serial_group(f"{doc}[privacy.md]") == "simulation"
    assert serial_group("tests/integration/test_crash_resume.py::test_x") == "simulation"
    assert serial_group("tests/integration/test_deployed_lora.py::test_x") == "deployed"
    in_process = "tests/integration/test_dp_rqm.py::test_x"
    assert serial_group(in_process) == in_process
    unit = "tests/strategies/test_frl.py::test_x"
    assert serial_group(unit) == unit
