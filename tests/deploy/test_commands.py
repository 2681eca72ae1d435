"""``fedrank certs``: the files it writes, and ``certs check`` on good and bad inputs."""

from __future__ import annotations

import pytest

from fedrank.cli import main


def test_certs_local_writes_a_superlink_and_every_site(tmp_path, capsys):
    status = main(["certs", "local", "--out", str(tmp_path), "--sites", "2", "--san", "x.org"])

    assert status == 0
    assert (tmp_path / "superlink" / "tls.crt").is_file()
    for i in range(2):
        assert (tmp_path / "sites" / f"site-{i}" / "auth.key.pub").is_file()
    check = main(
        ["certs", "check", "--ca", str(tmp_path / "ca.crt"),
         "--cert", str(tmp_path / "superlink" / "tls.crt"),
         "--key", str(tmp_path / "superlink" / "tls.key"),
         "--address", "x.org:8000", "--address", "superlink.fedrank.svc.cluster.local",
         "--node-key", str(tmp_path / "sites" / "site-1" / "auth.key")]
    )  # fmt: skip
    assert check == 0
    assert "usable with Flower 1.41" in capsys.readouterr().out


def test_certs_check_reports_each_problem_and_fails(tmp_path, capsys):
    main(["certs", "superlink", "--out", str(tmp_path)])
    capsys.readouterr()

    status = main(
        ["certs", "check", "--ca", str(tmp_path / "ca.crt"),
         "--cert", str(tmp_path / "superlink" / "tls.crt"),
         "--key", str(tmp_path / "superlink" / "tls.key"),
         "--address", "not-in-the-certificate.org",
         "--node-key", str(tmp_path / "superlink" / "tls.key")]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert status == 1
    assert "not-in-the-certificate.org" in out
    assert "OpenSSH format" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["certs", "check"], "nothing to check"),
        (["certs", "check", "--ca", "ca.crt"], "go together"),
        (["certs", "check", "--node-key", "/no/such/key"], "no such file"),
        (["certs", "local", "--out", "x", "--sites", "0"], "sites"),
    ],
)
def test_certs_usage_errors_say_what_is_wrong(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    status = main(argv)

    assert status == 2
    assert needle in capsys.readouterr().err
