"""`myason agent --check-config` and start-up checks: the shipped conf/agent.yaml, interfaces, BPF filters."""
import re
import subprocess
import sys
from pathlib import Path


from myason import cli

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "conf" / "agent.yaml"


def write(tmp_path, text, name="agent.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_agent(*args, timeout=60):
    return subprocess.run([sys.executable, str(ROOT / "myason.py"), "agent", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout)


# --- the shipped conf/agent.yaml ------------------------------------------------------------

def test_shipped_file_checks_for_replay_as_is(capsys):
    assert cli.main(["agent", "-ac", str(SHIPPED), "--read", "x.pcap", "--check-config"]) == 0
    out, err = capsys.readouterr()
    assert "cache_limit: 500000" in out
    assert "replay" in err and "without export" in err


def test_shipped_file_plain_check_says_what_it_was_checked_for(capsys):
    assert cli.main(["agent", "-ac", str(SHIPPED), "--check-config"]) == 0
    err = capsys.readouterr().err
    assert "replay" in err
    # ... and what live capture and export are missing.
    assert "interfaces" in err and "key_file" in err and "collectors" in err


def test_shipped_file_says_what_to_fill_in_for_live_capture():
    text = SHIPPED.read_text()
    block = text[:re.search(r"^interfaces:", text, re.M).start()]
    for key in ("interfaces", "key_file", "collectors", "agent_id"):
        assert re.search(r"^#.*\b%s\b" % key, block, re.M), key
    assert "keystore" in text and "myason keygen" in text


def test_shipped_file_filled_in_as_its_comments_say_checks_for_live_export(tmp_path, capsys):
    key = tmp_path / "agent.key"
    assert cli.main(["keygen", "--out", str(key)]) == 0
    text = SHIPPED.read_text()
    # The lines the header tells to edit, edited the way it says.
    filled, n = re.subn(r"^interfaces: \[\]$", "interfaces: [lo]", text, flags=re.M)
    assert n == 1
    filled, n = re.subn(r"^# key_file: /etc/myason/agent.key$", "key_file: %s" % key, filled, flags=re.M)
    assert n == 1
    filled, n = re.subn(r"^collectors: \[\]$", 'collectors: ["127.0.0.1:9999"]', filled, flags=re.M)
    assert n == 1
    filled, n = re.subn(r"^# agent_id: sensor-1$", "agent_id: sensor-1", filled, flags=re.M)
    assert n == 1
    capsys.readouterr()
    assert cli.main(["agent", "-ac", write(tmp_path, filled), "--check-config"]) == 0
    err = capsys.readouterr().err
    assert "live capture on lo" in err and "127.0.0.1:9999" in err and "sensor-1" in err


def test_check_config_still_refuses_half_an_export_setup(tmp_path, capsys):
    conf = write(tmp_path, 'collectors: ["127.0.0.1:9999"]\n')
    assert cli.main(["agent", "-ac", conf, "--read", "x.pcap", "--check-config"]) == 2
    assert "key_file" in capsys.readouterr().err


def test_a_run_without_export_settings_still_needs_no_export(tmp_path, capsys):
    # Only the check reports modes: a run that would export without a key fails as before.
    assert cli.main(["agent", "-ac", str(SHIPPED), "--read", str(tmp_path / "x.pcap")]) == 2
    assert "key_file" in capsys.readouterr().err


# --- interfaces and BPF filters ---------------------------------------------------------------

def test_check_config_refuses_an_interface_that_does_not_exist(tmp_path, capsys):
    conf = write(tmp_path, "interfaces: [lo, nosuch0]\n")
    assert cli.main(["agent", "-ac", conf, "--no-export", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "interfaces[1]" in err and "nosuch0" in err


def test_check_config_refuses_a_filter_that_does_not_compile_on_its_interface(tmp_path, capsys):
    conf = write(tmp_path, 'interfaces: [{name: lo, bpf_filter: "tcp port"}]\n')
    assert cli.main(["agent", "-ac", conf, "--no-export", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "interfaces[0].bpf_filter" in err and "tcp port" in err


def test_replay_check_refuses_a_filter_that_does_not_compile(tmp_path, capsys):
    # Replay does not capture, so the interfaces need not exist here, but a filter that cannot
    # compile is wrong on any host.
    conf = write(tmp_path, 'interfaces:\n  - {name: eth8, bpf_filter: "udp"}\n'
                           '  - {name: eth9, bpf_filter: "tcp port"}\n')
    assert cli.main(["agent", "-ac", conf, "--no-export", "--read", "x.pcap", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "interfaces[1].bpf_filter" in err and "tcp port" in err


def test_check_config_accepts_an_existing_interface_and_a_good_filter(tmp_path, capsys):
    conf = write(tmp_path, 'interfaces: [{name: lo, bpf_filter: "tcp port 80 or udp"}]\n')
    assert cli.main(["agent", "-ac", conf, "--no-export", "--check-config"]) == 0
    assert "live capture on lo" in capsys.readouterr().err


def test_replay_check_does_not_need_the_interfaces_of_the_capture_host(tmp_path, capsys):
    conf = write(tmp_path, "interfaces: [nosuch0]\n")
    assert cli.main(["agent", "-ac", conf, "--no-export", "--read", "x.pcap", "--check-config"]) == 0


def test_start_refuses_a_missing_interface_with_exit_2(tmp_path):
    proc = run_agent("-ac", write(tmp_path, "interfaces: [nosuch0]\n"), "--no-export")
    assert proc.returncode == 2, proc.stderr
    assert "interfaces[0]" in proc.stderr and "nosuch0" in proc.stderr


def test_start_refuses_a_bad_filter_with_exit_2(tmp_path):
    proc = run_agent("-ac", write(tmp_path, 'interfaces: [{name: lo, bpf_filter: "tcp port"}]\n'), "--no-export")
    assert proc.returncode == 2, proc.stderr
    assert "interfaces[0].bpf_filter" in proc.stderr and "Traceback" not in proc.stderr
