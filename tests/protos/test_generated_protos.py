"""The committed generated code: fresh, importable as fedrank.protos, and working."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from fedrank.protos import privacy_pb2, status_pb2, status_pb2_grpc, update_pb2

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check_protos.sh"


def run_check(protos: Path | None = None) -> subprocess.CompletedProcess[str]:
    arguments = [str(CHECK)] if protos is None else [str(CHECK), str(protos)]
    return subprocess.run(
        arguments,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_generated_code_is_fresh() -> None:
    result = run_check()

    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


@pytest.fixture
def protos_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_check_fails_when_generated_code_was_edited(protos_copy: Path) -> None:
    with (protos_copy / "update_pb2.py").open("a") as generated:
        generated.write("# edited by hand\n")

    result = run_check(protos_copy)

    assert result.returncode == 1
    assert "update_pb2.py differs" in result.stderr
    assert "stale" in result.stderr


def test_check_fails_when_a_schema_changed(protos_copy: Path) -> None:
    source = protos_copy / "fedrank" / "v1" / "privacy.proto"
    source.write_text(
        source.read_text().replace("double delta = 8;", "double delta = 8;\n  int32 x = 9;")
    )

    result = run_check(protos_copy)

    assert result.returncode == 1
    assert "privacy_pb2.py differs" in result.stderr


def test_check_fails_when_generated_code_is_missing_or_orphaned(protos_copy: Path) -> None:
    (protos_copy / "status_pb2_grpc.py").unlink()
    (protos_copy / "old_pb2.py").write_text("")

    result = run_check(protos_copy)

    assert result.returncode == 1
    assert "status_pb2_grpc.py is missing" in result.stderr
    assert "old_pb2.py has no .proto source" in result.stderr


def test_schemas_keep_their_own_names_in_the_descriptor_pool() -> None:
    assert update_pb2.DESCRIPTOR.name == "fedrank/v1/update.proto"
    assert privacy_pb2.DESCRIPTOR.name == "fedrank/v1/privacy.proto"
    assert update_pb2.Update.DESCRIPTOR.full_name == "fedrank.v1.Update"
    # The rewritten import resolves to the same module, not a second copy.
    assert status_pb2_grpc.fedrank_dot_v1_dot_status__pb2 is status_pb2


class _FixedStatus(status_pb2_grpc.StatusServicer):
    def Get(  # noqa: N802  (the name is the RPC's)
        self, request: status_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> status_pb2.StatusReply:
        return status_pb2.StatusReply(
            round=3,
            total_rounds=10,
            last_accuracy=0.91,
            epsilon_spent=1.25,
            rejected_replies=2,
            state="running",
        )


@pytest.mark.integration
def test_status_service_answers_over_loopback() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    status_pb2_grpc.add_StatusServicer_to_server(_FixedStatus(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = status_pb2_grpc.StatusStub(channel).Get(status_pb2.StatusRequest(), timeout=10)
    finally:
        server.stop(grace=None)

    assert (reply.round, reply.total_rounds, reply.rejected_replies) == (3, 10, 2)
    assert (reply.last_accuracy, reply.epsilon_spent, reply.state) == (0.91, 1.25, "running")
