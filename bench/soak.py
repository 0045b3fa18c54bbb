"""Sustained ingest (issue 11): a steady rate for a long time into PostgreSQL + InfluxDB, maintenance on.

A burst (bench/collector.py) says how fast the collector can drain a few seconds of traffic into
fresh tables; this says what it holds for 20 minutes or more while the tables grow and the rollup
maintenance and retention run beside it. Agent-like senders (one process per agent, wire v1,
`--per-datagram` flows per datagram, fresh flow times) send at a fixed total rate to a real
`myason collector` (2 processor processes, PostgreSQL and InfluxDB writers, spool policy block,
every other option at its default unless --set) on servers started by scripts/services.sh.
Every `--sample` seconds one line: flows sent, stored (PostgreSQL rows), drops, gaps, spool
bytes, writer lag, rollup lag, RSS and CPU of the collector, PostgreSQL and InfluxDB. At the end:
stored = sent, no duplicates (counts equal), every store's totals equal.

    python3 bench/soak.py --rate 30000 --duration 1200
    python3 bench/soak.py --ladder 40000,60000,80000,100000 --duration 1200 --final 3600
    python3 bench/soak.py --rate 80000 --duration 300 --set processors_number=2 --out soak.jsonl

The senders encrypt live (that is the agents' work, so it costs CPU here too) but cheaply: each
keeps a pool of pre-compressed flow blocks (renewed with fresh times every 20 s) and per datagram
only writes the small header part as a stored deflate block, appends the block and encrypts.
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.collector import _tree, cpu_seconds, make_rows, scrape, udp_rcvbuf_errors  # noqa: E402

POOL = 400          # flow blocks per sender pool
_STORED_LEN = __import__("struct").Struct("<HH").pack
POOL_EVERY = 20.0   # seconds between pool renewals (flow times stay fresh)


# -- senders --------------------------------------------------------------------------------------

def _blocks(rows_pool, per, now):
    """POOL pre-compressed raw-deflate blocks of `per` rows each, ending the plaintext: rows + ']}'.

    The rows are made once (make_rows is slow); each renewal only moves their times to `now`.
    """
    from myason import wire
    out = []
    for k in range(POOL):
        rows = rows_pool[k * per:(k + 1) * per]
        for r in rows:
            r[8], r[9] = round(now - r[24], 6), round(now - r[25], 6)       # first, last
        tail = b",".join(wire._dump_row(r[:23]) for r in rows) + b"]}"
        c = zlib.compressobj(wire.COMPRESS_LEVEL, zlib.DEFLATED, -15)
        out.append((tail, c.compress(tail) + c.flush()))
    return out


def _rows_pool(agent, per, rnd):
    # Rows plus each one's age of first and last (columns 24 and 25 here, cut before sending).
    now = time.time()
    rows = make_rows(agent, POOL * per, rnd, now)
    return [r + [0, now - r[8], now - r[9]] for r in rows]


def sender(agent, key, port, rate, duration, per, start_at, report):
    """Send `rate` flows/s for `duration` s as `agent`; put its totals on `report`."""
    from cryptography.fernet import Fernet
    from myason import wire
    f = Fernet(key.encode())
    head, agent_json = wire.header(agent), wire._dumps(agent)
    rnd = random.Random(agent)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dest = ("127.0.0.1", port)
    rows_pool = _rows_pool(agent, per, rnd)
    pool, pool_at = _blocks(rows_pool, per, time.time()), time.monotonic()
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.monotonic()
    seq = sent_flows = errors = 0
    total = int(rate * duration)
    while sent_flows < total:
        now = time.monotonic()
        if now - pool_at >= POOL_EVERY:
            pool, pool_at = _blocks(rows_pool, per, time.time()), now
        due = min(total, int(rate * (now - t0)))
        burst = 0
        while sent_flows < due and burst < 256:
            tail, deflated = pool[seq % POOL]
            sent = time.time()
            prefix = b'{"v":1,"agent":%b,"seq":%d,"sent":%b,"flows":[' % (agent_json, seq, wire._dumps(sent))
            # A zlib stream: header, the prefix as one stored (uncompressed, not final) deflate
            # block, the pool's compressed final blocks, and the Adler-32 of the whole plaintext.
            body = (b"\x78\x9c\x00" + _STORED_LEN(len(prefix), 0xFFFF ^ len(prefix)) + prefix + deflated
                    + zlib.adler32(tail, zlib.adler32(prefix)).to_bytes(4, "big"))
            try:
                sock.sendto(wire._seal(head, body, f, None), dest)
            except OSError:
                errors += 1         # ENOBUFS: not sent, not counted; the same seq is retried
                time.sleep(0.0002)
                continue
            seq += 1
            sent_flows += per
            burst += 1
        time.sleep(0.001)
    report.put({"agent": agent, "datagrams": seq, "flows": sent_flows, "send_errors": errors,
                "secs": time.monotonic() - t0})


def check_datagram_builder(per=30):
    """The fast builder makes datagrams the collector's decoder accepts, rows intact."""
    from cryptography.fernet import Fernet
    from myason import wire
    key = Fernet.generate_key().decode()
    q = mp.get_context("fork").Queue()
    # One datagram through the real sending code, received on a local socket.
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    p = mp.get_context("fork").Process(target=sender, args=("soak-check", key, rx.getsockname()[1], per, 1.0, per,
                                                           time.time(), q))
    p.start()
    data = rx.recv(65536)
    p.join(10)
    batch = wire.decode_datagram(data, lambda _a: Fernet(key.encode()), ttl=60)
    assert batch.agent == "soak-check" and len(batch.rows) == per, batch


# -- measuring ------------------------------------------------------------------------------------

def rss_mib(pids):
    """Sum of VmRSS of pids, in MiB."""
    total = 0
    for p in pids:
        try:
            for line in open("/proc/%d/status" % p):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def pids_named(name):
    """Pids whose command name is `name`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if open("/proc/%s/comm" % d).read().strip() == name:
                    out.append(int(d))
            except OSError:
                pass
    return out


def agent_ids(n, processors):
    """n agent ids that the collector's routing (crc32 of the id) spreads evenly over processors.

    With two agents named at random, both land on one processor half of the time, and the run
    measures one core; real deployments have many agents, which spread.
    """
    import zlib
    out, i = [], 0
    while len(out) < n:
        a = "soak-%d" % i
        if zlib.crc32(a.encode()) % processors == len(out) % processors:
            out.append(a)
        i += 1
    return out


class Soak:
    """One collector, its servers and the measurements of one steady run."""

    def __init__(self, args, work):
        self.args, self.work = args, Path(work)
        from cryptography.fernet import Fernet
        procs = int(next((v.split("=", 1)[1] for v in args.set if v.startswith("processors_number=")), 2))
        self.keys = {a: Fernet.generate_key().decode() for a in agent_ids(args.agents, procs)}
        from tests.support.services import start_services
        self.servers = start_services(["pg", "influx"], watch_pid=os.getpid())
        self.metrics = "127.0.0.1:%d" % _free_tcp()
        self.port = None
        self.proc = None
        self.sender_pids = []

    def reset(self):
        import psycopg
        with psycopg.connect(self.servers.pg_dsn, autocommit=True) as c:
            for t in ("flows", "batches", "events", "rollup_1m", "rollup_15m", "rollup_1h", "rollup_1d",
                      "rollup_top_1m", "rollup_top_15m", "rollup_top_1h", "rollup_top_1d", "rollup_dirty",
                      "rollup_pending"):
                try:
                    c.execute("TRUNCATE %s" % t)
                except psycopg.Error:
                    pass
        from tests.support.services import influx_query
        influx_query(self.servers.influx_url, "DROP DATABASE myason", db="")
        influx_query(self.servers.influx_url, "CREATE DATABASE myason", db="")

    def start_collector(self):
        import yaml
        self.port = _free_udp()
        spool = self.work / "spool"
        if spool.exists():
            shutil.rmtree(spool)
        (self.work / "keystore").write_text("".join("%s %s\n" % kv for kv in self.keys.items()))
        os.chmod(self.work / "keystore", 0o600)
        conf = {"bind_address": "127.0.0.1", "bind_port": self.port, "keystore": str(self.work / "keystore"),
                "spool_dir": str(spool), "metrics": self.metrics, "stats_interval": 0,
                "processors_number": 2, "writers_number": 2, "spool_policy": "block",
                "writers": [{"type": "postgresql", "dsn": self.servers.pg_dsn},
                            {"type": "influxdb", "url": self.servers.influx_url, "api": "v1", "database": "myason"}]}
        for item in self.args.set:
            k, _, v = item.partition("=")
            conf[k] = yaml.safe_load(v)
        (self.work / "collector.yaml").write_text(yaml.safe_dump(conf))
        self.log = open(self.work / "collector.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "myason.py"), "collector", "-cc",
                                      str(self.work / "collector.yaml"), "--summary-json",
                                      str(self.work / "summary.json")], stderr=self.log, cwd=str(ROOT))
        deadline = time.time() + 60
        while "collector listening" not in (self.work / "collector.log").read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("collector did not start:\n" + (self.work / "collector.log").read_text())
            time.sleep(0.1)

    def status(self):
        import urllib.request
        try:
            with urllib.request.urlopen("http://%s/status" % self.metrics, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return {}

    def pg_totals(self):
        import psycopg
        with psycopg.connect(self.servers.pg_dsn) as c:
            n, b, p = c.execute("SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(packets), 0)"
                                " FROM flows").fetchone()
        return int(n), int(b), int(p)

    def influx_totals(self):
        from tests.support.services import influx_query, influx_rows
        rows = influx_rows(influx_query(self.servers.influx_url,
                                        "SELECT sum(flows), sum(bytes), sum(packets) FROM flows", db="myason"))
        if not rows:
            return 0, 0, 0
        return int(rows[0]["sum"]), int(rows[0]["sum_1"]), int(rows[0]["sum_2"])

    def server_pids(self):
        return {"postgres": pids_named("postgres"), "influxd": pids_named("influxd")}

    def run(self, rate, duration, out):
        """One steady run; returns its result dict."""
        self.reset()
        self.start_collector()
        ctx = mp.get_context("fork")
        report = ctx.Queue()
        start_at = time.time() + 2
        per_agent = rate / len(self.keys)
        senders = [ctx.Process(target=sender, args=(a, k, self.port, per_agent, duration, self.args.per_datagram,
                                                    start_at, report), daemon=True)
                   for a, k in self.keys.items()]
        for s in senders:
            s.start()
        self.sender_pids = [s.pid for s in senders]
        kernel0 = udp_rcvbuf_errors()
        t0 = start_at
        samples, prev_cpu, prev_t = [], None, None
        print("#    t  sent/s  stored/s    spool_MB lag_s roll_lag_s kdrop qdrop gaps   coll_MB  pg_MB influx_MB"
              "  cpu%coll cpu%pg cpu%ifx cpu%snd pg_us/row", flush=True)
        while any(s.is_alive() for s in senders) or not samples:
            time.sleep(max(0.0, t0 + (len(samples) + 1) * self.args.sample - time.time()))
            samples.append(self.sample(t0, rate, samples, prev_cpu, prev_t, out))
            prev_cpu, prev_t = samples[-1]["_cpu"], time.time()
        sent = [report.get(timeout=30) for _ in senders]
        for s in senders:
            s.join(10)
        flows_sent = sum(s["flows"] for s in sent)
        # Drain: everything received is stored (or the deadline says it never will be).
        deadline = time.time() + self.args.drain
        while time.time() < deadline and not self.status().get("drained"):
            time.sleep(1)
        drain_s = time.time() - (t0 + duration)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)
        self.log.close()
        summary = json.loads((self.work / "summary.json").read_text())
        pg, influx = self.pg_totals(), self.influx_totals()
        gaps = sum(a.get("gaps", 0) for a in summary.get("agents", {}).values())
        result = {"rate": rate, "duration": duration, "flows_sent": flows_sent,
                  "datagrams_sent": sum(s["datagrams"] for s in sent),
                  "send_errors": sum(s["send_errors"] for s in sent), "pg_rows": pg[0], "influx_flows": influx[0],
                  "pg_bytes_packets": pg[1:], "influx_bytes_packets": influx[1:], "gaps": gaps,
                  "kernel_drops": summary.get("kernel_drops"), "queue_dropped": summary.get("queue_dropped"),
                  # Every other way a received datagram can end unstored, so a loss is explained.
                  "rejects": summary.get("rejects", {}), "rate_limited": summary.get("rate_limited"),
                  "spool_dropped": summary.get("spool_dropped"), "oversized": summary.get("oversized"),
                  "datagrams_received": summary.get("datagrams"),
                  "machine_rcvbuf_errors": udp_rcvbuf_errors() - kernel0, "drain_s": round(drain_s, 1),
                  "rss_collector_mib": [s["coll_mb"] for s in samples], "rss_pg_mib": [s["pg_mb"] for s in samples]}
        result["zero_loss"] = (pg[0] == influx[0] == flows_sent and pg[1:] == influx[1:] and gaps == 0)
        last = [s["coll_mb"] for s in samples if s["t"] >= duration / 3]
        if len(last) >= 2:
            result["rss_growth_last_two_thirds"] = round(last[-1] / last[0] - 1, 4)
        print("# result %s" % json.dumps({k: v for k, v in result.items() if not k.startswith("rss_")}), flush=True)
        if not result["zero_loss"] and out:
            # The collector's log goes with the temporary directory: keep it beside the results.
            shutil.copy(self.work / "collector.log", "%s.collector-%d.log" % (out.name, rate))
        if out:
            out.write(json.dumps(dict(result, kind="result")) + "\n")
            out.flush()
        return result

    def sample(self, t0, rate, samples, prev_cpu, prev_t, out):
        m = scrape(self.metrics)
        tree = _tree(self.proc.pid)
        servers = self.server_pids()
        cpu = {"coll": cpu_seconds(self.proc.pid), "pg": sum(cpu_seconds(p, tree=False) for p in servers["postgres"]),
               "influx": sum(cpu_seconds(p, tree=False) for p in servers["influxd"]),
               "send": sum(cpu_seconds(p, tree=False) for p in self.sender_pids)}
        now = time.time()
        s = {"t": round(now - t0, 1), "sent": int(rate * min(now - t0, self.args.duration_now)),
             "stored": int(m.get("writers_rows{key=\"postgresql-0\"}", 0) + m.get("writers_rows{key=\"postgresql-1\"}", 0)),
             "spool_mb": round(m.get("spool_bytes", 0) / 1e6, 1),
             "lag_s": round(max([v for k, v in m.items() if k.startswith("writers_latency_seconds{")] or [0]), 2),
             "rollup_lag_s": round(max([v for k, v in m.items() if k.startswith("maintenance_rollup_lag_seconds{")]
                                       or [m.get("maintenance_rollup_lag_seconds", 0)]), 1),
             "kernel_drops": int(m.get("kernel_drops", 0)), "queue_dropped": int(m.get("queue_dropped", 0)),
             "gaps": int(m.get("agents_gaps", 0)), "coll_mb": round(rss_mib(tree), 1),
             "pg_mb": round(rss_mib(servers["postgres"]), 1), "influx_mb": round(rss_mib(servers["influxd"]), 1),
             "_cpu": cpu}
        write_s = sum(v for k, v in m.items() if k.startswith("writers_write_seconds{key=\"postgresql"))
        s["_write_s"] = write_s
        if prev_cpu is not None:
            dt = now - prev_t
            for k in cpu:
                s["cpu_" + k] = round(100 * (cpu[k] - prev_cpu[k]) / dt, 1)
            rows = s["stored"] - samples[-1]["stored"]
            # The PostgreSQL writers' wall time per row stored: does COPY get dearer as tables grow?
            s["pg_us_per_row"] = round(1e6 * (write_s - samples[-1]["_write_s"]) / rows, 2) if rows > 0 else None
        prev_stored = samples[-1]["stored"] if samples else 0
        prev_time = samples[-1]["t"] if samples else 0
        rate_stored = (s["stored"] - prev_stored) / max(0.1, s["t"] - prev_time)
        print("%6.0f %7d %9.0f %10.1f %5.2f %10.1f %5d %5d %4d %9.1f %6.1f %9.1f %9s %6s %6s %6s %7s" % (
            s["t"], rate, rate_stored, s["spool_mb"], s["lag_s"], s["rollup_lag_s"], s["kernel_drops"],
            s["queue_dropped"], s["gaps"], s["coll_mb"], s["pg_mb"], s["influx_mb"], s.get("cpu_coll", "-"),
            s.get("cpu_pg", "-"), s.get("cpu_influx", "-"), s.get("cpu_send", "-"), s.get("pg_us_per_row", "-")),
            flush=True)
        if out:
            out.write(json.dumps({k: v for k, v in s.items() if not k.startswith("_")}) + "\n")
            out.flush()
        return s

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        from tests.support.services import stop_services
        stop_services(self.servers)


def _free_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_tcp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=30000, help="flows/s of one run (default 30000)")
    ap.add_argument("--duration", type=float, default=1200.0, help="seconds of each run or ladder step (default 1200)")
    ap.add_argument("--ladder", help="comma-separated rates: each a run of --duration; stops at the first loss")
    ap.add_argument("--final", type=float, default=0, help="then one run this long at the best ladder rate")
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--per-datagram", type=int, default=30)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds allowed to store the rest at the end")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="a collector option")
    ap.add_argument("--out", help="also write every sample and result as JSON lines to this file")
    args = ap.parse_args()
    check_datagram_builder(args.per_datagram)
    out = open(args.out, "a") if args.out else None
    with tempfile.TemporaryDirectory(prefix="myason-soak-") as work:
        soak = Soak(args, work)
        try:
            rates = [int(r) for r in args.ladder.split(",")] if args.ladder else [args.rate]
            best = None
            for rate in rates:
                args.duration_now = args.duration
                print("# steady %d flows/s for %.0f s" % (rate, args.duration), flush=True)
                r = soak.run(rate, args.duration, out)
                if not r["zero_loss"]:
                    break
                best = rate
            if args.final and best:
                args.duration_now = args.final
                print("# final: %d flows/s for %.0f s" % (best, args.final), flush=True)
                soak.run(best, args.final, out)
            if args.ladder:
                print("# highest sustained zero-loss rate: %s" % best, flush=True)
        finally:
            soak.close()


if __name__ == "__main__":
    main()
