"""Setup notes of the enrichment steps: silent unless the process reports them, then each once."""
import logging

from myason.enrich import build_pipeline, report_setup_notes


def geoip_lines(caplog):
    return [r for r in caplog.records if r.name == "myason.enrich.geoip"]


def test_silent_by_default(notes, caplog):
    caplog.set_level(logging.INFO, logger="myason.enrich")
    report_setup_notes(False)       # as in every process but the collector's
    build_pipeline({}).close()
    assert [r for r in caplog.records if r.name.startswith("myason.enrich")] == []


def test_reported_once_however_often_the_pipeline_is_built(notes, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="myason.enrich")
    report_setup_notes()
    for _ in range(3):
        build_pipeline({}).close()
    lines = geoip_lines(caplog)
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "off" in lines[0].getMessage()
    assert len([r for r in caplog.records if r.name == "myason.enrich.direction"]) == 1
    # A different note (another configuration, e.g. after a reload) is news: said once too.
    missing = {"geoip": {"country_database": str(tmp_path / "nope.mmdb")}}
    build_pipeline(missing).close()
    build_pipeline(missing).close()
    lines = geoip_lines(caplog)
    assert len(lines) == 2 and "nope.mmdb" in lines[1].getMessage()
