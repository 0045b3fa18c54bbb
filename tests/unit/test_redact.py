"""Issue 12 item 14: passwords and tokens never appear in --check-config, error messages or logs."""
import logging
import os

import pytest
import yaml

from myason import cli, keys
from myason.logs import setup_logging
from myason.redact import MASK, redact_config, redact_text

SECRETS = ("s3cr3t-pg", "p@ss w'rd", "hunter2-influx", "tok-influx-42", "api-dsn-pw")


@pytest.mark.parametrize("text, want", [
    ("postgresql://myason:s3cret@127.0.0.1:5432/myason", "postgresql://myason:***@127.0.0.1:5432/myason"),
    ("postgres://u:p@ss@w0rd@db.example/x?sslmode=require", "postgres://u:***@db.example/x?sslmode=require"),
    ('after "postgresql//u:pw@h/db" in', 'after "postgresql//u:***@h/db" in'),
    ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
    ("host=h password = 'a b\\' c' dbname=d", "host=h password = '***' dbname=d"),
    ("postgresql://u@h/db?password=s3cret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("http://h:8086/write?db=m&u=admin&p=s3cret&precision=ns", "http://h:8086/write?db=m&u=admin&p=***&precision=ns"),
    ("{'password': 'hunter2', \"token\": \"t\"}", "{'password': '***', \"token\": \"***\"}"),
    ("Authorization: Basic dTpw", "Authorization: Basic ***"),
    # Nothing secret: unchanged.
    ("token bucket per source, token_ttl=5, bad_token=3", "token bucket per source, token_ttl=5, bad_token=3"),
    ("postgresql://myason@127.0.0.1/myason", "postgresql://myason@127.0.0.1/myason"),
    ("http://[::1]:8086/ping", "http://[::1]:8086/ping"),
])
def test_redact_text(text, want):
    assert redact_text(text) == want


def test_redact_config_masks_secret_keys_and_dsns_and_keeps_the_rest():
    cfg = {"writers": [{"type": "postgresql", "dsn": "postgresql://u:pw@h/db"},
                       {"type": "influxdb", "username": "w", "password": "pw", "token": "t", "token_file": "/etc/t"}],
           "token_ttl": 5.0, "keystore": "/etc/myason/keystore", "empty": {"password": None}}
    assert redact_config(cfg) == {
        "writers": [{"type": "postgresql", "dsn": "postgresql://u:***@h/db"},
                    {"type": "influxdb", "username": "w", "password": MASK, "token": MASK, "token_file": "/etc/t"}],
        "token_ttl": 5.0, "keystore": "/etc/myason/keystore", "empty": {"password": None}}
    assert cfg["writers"][0]["dsn"] == "postgresql://u:pw@h/db"       # a copy


@pytest.fixture
def collector_conf(tmp_path):
    keystore = tmp_path / "keystore"
    keystore.write_text("a1 %s\n" % keys.generate_key().decode())
    os.chmod(keystore, 0o600)
    conf = tmp_path / "collector.yaml"
    conf.write_text(yaml.safe_dump({
        "keystore": str(keystore), "spool_dir": str(tmp_path / "spool"),
        "enrich": {"services_file": None},
        "writers": [
            {"type": "postgresql", "dsn": "postgresql://myason:s3cr3t-pg@db.example:5432/myason"},
            {"type": "postgresql", "name": "kv", "dsn": "host=db.example user=myason password='p@ss w\\'rd'"},
            {"type": "influxdb", "url": "http://influx.example:8086", "username": "w", "password": "hunter2-influx"},
            {"type": "influxdb", "name": "v2", "api": "v2", "url": "http://i2.example:8086", "token": "tok-influx-42"},
        ]}))
    return conf


def test_collector_check_config_prints_no_password(collector_conf, capsys):
    assert cli.main(["collector", "-cc", str(collector_conf), "--check-config"]) == 0
    out, err = capsys.readouterr()
    for secret in SECRETS[:4]:
        assert secret not in out + err
    printed = yaml.safe_load(out)["writers"]
    assert printed[0]["dsn"] == "postgresql://myason:***@db.example:5432/myason"
    assert printed[1]["dsn"] == "host=db.example user=myason password='***'"
    assert printed[2]["password"] == printed[3]["token"] == MASK
    assert printed[2]["url"] == "http://influx.example:8086"


def test_api_check_config_prints_no_password(collector_conf, tmp_path, capsys):
    api = tmp_path / "api.yaml"
    api.write_text(yaml.safe_dump({"database": {"type": "postgresql",
                                                "dsn": "postgresql://reader:api-dsn-pw@db.example/myason"}}))
    code = cli.main(["api", "-ac", str(api), "-cc", str(collector_conf), "--check-config"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "api-dsn-pw" not in out + err and "reader:***@db.example" in out


def test_driver_errors_quoting_a_dsn_print_no_password(tmp_path, capsys):
    """libpq quotes a mistyped DSN (here `postgresql//`, no colon) in its error message."""
    pytest.importorskip("psycopg")
    conf = tmp_path / "collector.yaml"
    conf.write_text(yaml.safe_dump({"writers": [
        {"type": "postgresql", "dsn": "postgresql//myason:s3cr3t-pg@db.example/myason"}]}))
    assert cli.main(["maintain", "-cc", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "postgresql//myason:***@db.example/myason" in err and "s3cr3t-pg" not in err


def test_log_lines_and_tracebacks_are_redacted(capsys):
    handle = setup_logging()
    try:
        log = logging.getLogger("myason.test")
        log.warning("cannot open: missing \"=\" after \"%s\"", "postgresql://u:s3cr3t-pg@h/db")
        try:
            raise RuntimeError("password=hunter2-influx")
        except RuntimeError:
            log.exception("writer failed")
    finally:
        handle.stop()
    err = capsys.readouterr().err
    assert "postgresql://u:***@h/db" in err and "password=***" in err
    assert "s3cr3t-pg" not in err and "hunter2-influx" not in err
