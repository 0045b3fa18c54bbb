"""The command line's parsing and exit codes, run in-process through main()."""
import os
import stat

import pytest
from cryptography.fernet import Fernet

from myason import cli, keys


def test_version_lists_dependencies(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("myason", "scapy", "cryptography", "Python"):
        assert word in out


def test_keygen_prints_a_valid_key(capsys):
    assert cli.main(["keygen"]) == 0
    Fernet(capsys.readouterr().out.strip().encode())


def test_keygen_out_writes_0600_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "agent.key"
    assert cli.main(["keygen", "--out", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(keys.load_keys(str(path))) == 1
    before = path.read_bytes()
    assert cli.main(["keygen", "--out", str(path)]) == 2
    assert path.read_bytes() == before
    assert "agent.key" in capsys.readouterr().err


def test_keygen_out_creates_missing_parent_directories_0700(tmp_path, capsys):
    # The README's first agent command, on a host where /etc/myason does not exist yet.
    path = tmp_path / "etc" / "myason" / "agent.key"
    old_umask = os.umask(0o022)
    try:
        assert cli.main(["keygen", "--out", str(path)]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "etc").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "etc" / "myason").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(keys.load_keys(str(path))) == 1
    err = capsys.readouterr().err
    assert "created %s (mode 0700)" % (tmp_path / "etc") in err


def test_keygen_help_says_missing_directories_are_created(capsys):
    with pytest.raises(SystemExit):
        cli.main(["keygen", "--help"])
    assert "0700" in " ".join(capsys.readouterr().out.split())


def test_ifconfig_lists_loopback(capsys):
    assert cli.main(["ifconfig"]) == 0
    out = capsys.readouterr().out
    assert "lo" in out.split() and "127.0.0.1" in out


def test_agent_without_interfaces_or_read_is_a_config_error(capsys):
    assert cli.main(["agent", "--no-export"]) == 2
    assert "interfaces" in capsys.readouterr().err


def test_agent_bad_output_name_is_a_config_error(tmp_path, capsys):
    assert cli.main(["agent", "--read", "x.pcap", "--no-export", "--output", str(tmp_path / "o.txt")]) == 2
    assert "--output" in capsys.readouterr().err


def test_agent_export_needs_collectors(tmp_path, capsys):
    key = tmp_path / "k"
    cli.main(["keygen", "--out", str(key)])
    conf = tmp_path / "a.yaml"
    conf.write_text("key_file: %s\n" % key)
    assert cli.main(["agent", "-ac", str(conf), "--read", "x.pcap"]) == 2
    assert "collectors" in capsys.readouterr().err


def test_agent_unsafe_key_file_is_refused(tmp_path, capsys):
    key = tmp_path / "k"
    key.write_text(Fernet.generate_key().decode() + "\n")
    os.chmod(key, 0o644)
    conf = tmp_path / "a.yaml"
    conf.write_text('key_file: %s\ncollectors: ["127.0.0.1:9999"]\n' % key)
    assert cli.main(["agent", "-ac", str(conf), "--read", "x.pcap"]) == 2
    assert "chmod" in capsys.readouterr().err


def test_check_config_prints_yaml(capsys):
    assert cli.main(["agent", "--read", "x.pcap", "--no-export", "--check-config"]) == 0
    assert "cache_inactive_timeout: 15.0" in capsys.readouterr().out


def test_keygen_agent_prints_the_keystore_line(tmp_path, capsys):
    from myason.collector.keystore import Keystore
    assert cli.main(["keygen", "--agent", "edge-01"]) == 0
    key, line = capsys.readouterr().out.split("\n")[:2]
    assert line == "edge-01 " + key
    store = tmp_path / "agents"
    store.write_text(line + "\n")
    store.chmod(0o600)
    token = Fernet(key.encode()).encrypt(b"x")
    assert Keystore.load(store).keys_for("edge-01").decrypt(token) == b"x"


def test_keygen_agent_with_out_writes_the_key_and_prints_the_line(tmp_path, capsys):
    path = tmp_path / "agent.key"
    assert cli.main(["keygen", "--agent", "lab-7", "--out", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "lab-7 " + keys.load_keys(str(path))[0].decode()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keygen_bad_agent_id_is_a_usage_error(capsys):
    assert cli.main(["keygen", "--agent", "bad id!"]) == 2
    captured = capsys.readouterr()
    assert "--agent" in captured.err and captured.out == ""
