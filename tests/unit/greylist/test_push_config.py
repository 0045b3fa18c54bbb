"""The greylist_push section: defaults, conf/greylist-push.yaml, and bad keys named (exit 2 from the cli)."""
import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from myason.cli import main
from myason.errors import ConfigError
from myason.greylist.config import IPSET_SPEC, NFT_SPEC, SPEC, load_push_config, parse_push_config
from tests.support.greylist import write_collector_conf, write_push_conf

CONF = Path(__file__).resolve().parents[3] / "conf" / "greylist-push.yaml"


def test_defaults():
    c = parse_push_config({"file": "/x/greylist.nft"})
    assert c.format == "nftables" and c.command == ("nft", "-f", "{file}") and c.interval == 0
    assert c.since == ("7d", 7 * 86400.0) and c.min_events == 1 and c.max_elements == 65536
    assert c.allowlist == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert c.nftables == {"family": "inet", "table": "myason", "set4": "greylist4", "set6": "greylist6",
                          "chain": "greylist", "hook": "input", "priority": -10, "verdict": "drop"}
    assert parse_push_config({"file": "x", "format": "ipset"}).command == ("ipset", "restore", "-file", "{file}")
    assert parse_push_config({"file": "x", "command": []}).command == ()


def test_the_shipped_file_holds_the_defaults_and_documents_every_key():
    text = CONF.read_text()
    data = yaml.safe_load(text)["greylist_push"]
    assert load_push_config(str(CONF)) == parse_push_config({"file": data["file"]})
    for spec, indent in ((SPEC, "  "), (NFT_SPEC, "    "), (IPSET_SPEC, "    ")):
        missing = [k for k in spec if not re.search(r"^%s%s:" % (indent, re.escape(k)), text, re.M)]
        assert missing == []


@pytest.mark.parametrize("section, key", [
    ({}, "greylist_push.file"),
    ({"file": "x", "fromat": "ipset"}, "greylist_push.fromat"),
    ({"file": "x", "format": "iptables"}, "greylist_push.format"),
    ({"file": "x", "command": "nft -f {file}"}, "greylist_push.command"),
    ({"file": "x", "command": ["", "-f"]}, "greylist_push.command[0]"),
    ({"file": "x", "command": ["nft", 5]}, "greylist_push.command[1]"),
    ({"file": "x", "since": "7 days"}, "greylist_push.since"),
    ({"file": "x", "interval": -1}, "greylist_push.interval"),
    ({"file": "x", "command_timeout": 0}, "greylist_push.command_timeout"),
    ({"file": "x", "min_events": 0}, "greylist_push.min_events"),
    ({"file": "x", "max_elements": 0}, "greylist_push.max_elements"),
    ({"file": "x", "allowlist": ["10.0.0.0/8", "my-lan"]}, "greylist_push.allowlist"),
    ({"file": "x", "file_mode": 0o644}, "greylist_push.file_mode"),
    ({"file": "x", "nftables": {"tabel": "x"}}, "greylist_push.nftables.tabel"),
    ({"file": "x", "nftables": {"table": "x; flush ruleset"}}, "greylist_push.nftables.table"),
    ({"file": "x", "nftables": {"set4": "greylist\n"}}, "greylist_push.nftables.set4"),
    ({"file": "x", "nftables": {"family": "bridge"}}, "greylist_push.nftables.family"),
    ({"file": "x", "nftables": {"hook": "output"}}, "greylist_push.nftables.hook"),
    ({"file": "x", "nftables": {"verdict": "accept"}}, "greylist_push.nftables.verdict"),
    ({"file": "x", "ipset": {"set4": "a" * 28}}, "greylist_push.ipset.set4"),
    ({"file": "x", "ipset": "sets"}, "greylist_push.ipset"),
])
def test_a_bad_key_or_value_is_named(section, key):
    with pytest.raises(ConfigError) as exc:
        parse_push_config(section)
    assert exc.value.key == key


def test_the_file_holds_one_section_and_since_can_be_overridden(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("greylist_push: {file: x}\ngreylist: {}\n")
    with pytest.raises(ConfigError, match="greylist: unknown key"):
        load_push_config(str(path))
    path.write_text("greylist_push: [file]\n")
    with pytest.raises(ConfigError, match="greylist_push"):
        load_push_config(str(path))
    assert load_push_config(write_push_conf(path, file="x", since="2d"), since="90m").since == ("90m", 5400.0)


@pytest.mark.parametrize("args, named", [
    (["--push", "{push}"], "greylist_push.nftables.chian"),
    (["--push", "{push}", "--format", "json"], "--format"),
    (["--once"], "--once"),
])
def test_the_cli_exits_2_naming_the_key(tmp_path, capsys, args, named):
    push = write_push_conf(tmp_path / "p.yaml", file=str(tmp_path / "g.nft"), nftables={"chian": "x"})
    cc = write_collector_conf(tmp_path / "c.yaml", tmp_path / "flows.db")
    code = main(["greylist", "-cc", cc] + [a.replace("{push}", push) for a in args])
    assert code == 2
    assert "myason: config error: %s" % named in capsys.readouterr().err
