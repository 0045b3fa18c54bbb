"""The agent's Prometheus endpoint, scraped while a live agent meters known traffic (root only)."""
import pytest

from tests.support import netns
from tests.support.agents import (AGENT_IF, OTHER_MAC, PEER_IF, Agent, DatagramSink, free_port, namespace_pair,
                                  wait_metric, write_conf)
from tests.support.summary import parse_summary

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool")]


def test_metrics_endpoint_reports_the_pipeline(tmp_path):
    pytest.importorskip("scapy")
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether
    from myason import keys
    key_file = tmp_path / "agent.key"
    keys.write_key_file(key_file, keys.generate_key())
    with namespace_pair() as nsp:
        ns = nsp["agent_ns"]
        with netns.in_netns(ns):
            collector = DatagramSink()
        port = free_port(ns)
        conf = write_conf(tmp_path / "agent.yaml", agent_id="metrics-it", interfaces=[AGENT_IF],
                          key_file=str(key_file), collectors=["127.0.0.1:%d" % collector.port],
                          cache_inactive_timeout=60, export_interval=0.1, tick=0.1, stats_interval=0,
                          metrics="127.0.0.1:%d" % port)
        eth = Ether(src=nsp["peer_mac"], dst=OTHER_MAC)
        udp = [bytes(eth / IP(src="10.198.8.1", dst="10.198.8.2") / UDP(sport=7000 + i, dport=53) / b"m")
               for i in range(3) for _ in range(i + 2)]
        rst = [bytes(eth / IP(src="10.198.8.3", dst="10.198.8.4") / TCP(sport=1, dport=2, flags=f))
               for f in ("S", "A", "R")]
        arp = [bytes(Ether(src=nsp["peer_mac"], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.198.8.9", pdst="10.198.8.8"))
               for _ in range(2)]
        agent = Agent(ns, conf)
        try:
            agent.wait_capturing(nsp["ifindex"])
            netns.sendp_in_ns(nsp["peer_ns"], PEER_IF, udp + rst + arp)
            agent.wait_drained(nsp["ifindex"])
            m = wait_metric(agent, ns, port, "myason_agent_datagrams_sent_total", lambda v: v >= 1)
            m = wait_metric(agent, ns, port, "myason_agent_packets_total", lambda v: v >= len(udp) + len(rst))
            code, _, err = agent.stop()
        finally:
            agent.kill()
            collector.close()
    assert code == 0, err
    ip_frames = len(udp) + len(rst)
    assert m["myason_agent_packets_total"] == ip_frames
    assert m["myason_agent_frames_total"] == m["myason_agent_capture_frames_total"] >= ip_frames + len(arp)
    assert m['myason_agent_decode_rejects_total{key="non_ip"}'] >= len(arp)
    assert m["myason_agent_flows_cached"] == 3            # the UDP flows, idle for less than 60 s
    assert m['myason_agent_flows_expired_total{key="rst"}'] == 1
    assert m["myason_agent_flows_exported_total"] == 1
    assert m["myason_agent_flow_bytes_exported_total"] == 3 * 40
    assert m["myason_agent_kernel_drops_total"] == 0 and m["myason_agent_queue_dropped_packets_total"] == 0
    assert m["myason_agent_kernel_packets_total"] >= ip_frames
    assert m["myason_agent_datagrams_sent_total"] >= 1 and m["myason_agent_send_errors_total"] == 0
    assert m["myason_agent_bytes_sent_total"] > 0
    assert m["myason_agent_interfaces"] == 1 and m["myason_agent_reloads_total"] == 0
    assert "myason_agent_flow_queue_depth" in m and "myason_agent_packet_queue_depth" in m
    # The summary at exit agrees with the last scrape, plus the shutdown flush.
    s = parse_summary(err)
    assert s["packets_metered"] == ip_frames and s["flows_exported"] == 4
    assert s["datagrams_sent"] == len(collector.datagrams)
