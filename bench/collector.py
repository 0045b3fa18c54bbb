"""Collector benchmark: highest flows/s stored with zero loss, beside nfcapd measured the same way.

A real `myason collector` process receives valid encrypted datagrams (wire.Batcher, several
agents, realistic rows) from a paced sender in its own process, at rising rates, and writes
to a real PostgreSQL (ladder 1) or PostgreSQL + InfluxDB 1.x (ladder 2) started by
scripts/services.sh. A step passes when every run stored every flow sent (PostgreSQL rows;
InfluxDB: the flows counted in its points) within the drain deadline after the sender stopped.
The peer, nfcapd, gets NetFlow v9 (30 records per datagram) the same way (method of
../shared/anchors/collector/nf_bench.py). Method and figures: docs/performance.md, "Collector".

    python3 bench/collector.py [--quick] [--max-rate N] [--duration S] [--runs N]

Datagrams are encrypted before the timed part (encryption is the agents' cost, not the
collector's; doing it live would take the CPU the collector is measured on), so the collector
runs with a long token_ttl; everything else is its normal configuration (fsync on).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AGENTS = 8
NF_PER = 30
_LEN = struct.Struct("<IHI")        # datagram length, agent index, flows in it
_METRIC = re.compile(r"^(\w+?)(?:_total)?(?:\{([^}]*)\})? ([-+0-9.eE]+|NaN)$")


# -- load: realistic rows, encrypted once, stored in a file ---------------------------------------

def make_rows(agent, n, rnd, now):
    """n flow rows (wire order, myason.schema.FIELDS) of one agent, ending around `now`."""
    rows = []
    reasons = ("idle", "active", "fin", "rst")
    for _ in range(n):
        v6 = rnd.random() < 0.1
        if v6:
            src = "2001:db8:%x::%x" % (rnd.randrange(65536), rnd.randrange(1, 65536))
            dst = "2001:db8:ffff::%x" % rnd.randrange(1, 4096)
        else:
            src = "10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(1, 255))
            dst = "192.168.%d.%d" % (rnd.randrange(16), rnd.randrange(1, 255))
        proto = rnd.choice((6, 6, 6, 17, 17, 1))
        packets = rnd.randrange(1, 2000)
        last = round(now - rnd.random() * 2, 6)
        first = round(last - rnd.random() * 60, 6)
        rows.append([src, dst, rnd.randrange(1024, 65536) if proto != 1 else 0,
                     rnd.choice((443, 80, 53, 22, 8080, 5432)) if proto != 1 else 0, proto, 0,
                     packets, packets * rnd.randrange(40, 1500), first, last,
                     rnd.randrange(64) if proto == 6 else 0, agent, "eth%d" % rnd.randrange(2),
                     rnd.randrange(1, 4), rnd.randrange(1, 4), 6 if v6 else 4, 0, "", 0, 0, 0, 0,
                     rnd.choice(reasons)])
    return rows


def generate(path, keys, flows, max_datagram, seed=1):
    """Write encrypted datagrams carrying `flows` rows (agents interleaved) to path; returns count."""
    from cryptography.fernet import Fernet, MultiFernet
    from myason import wire
    rnd = random.Random(seed)
    agents = sorted(keys)
    batchers = [wire.Batcher(a, Fernet(keys[a].encode()), max_datagram) for a in agents]
    mf = {a: MultiFernet([Fernet(keys[a].encode())]) for a in agents}
    now = time.time()
    count = 0
    with open(path, "wb") as fh:
        def emit(i, dgrams, nrows):
            nonlocal count
            if len(dgrams) != 1:
                # Rare (several datagrams from one add): count rows exactly by decoding.
                sizes = [len(wire.decode_datagram(d, lambda _a: mf[agents[i]]).rows) for d in dgrams]
            else:
                sizes = [nrows]
            for d, s in zip(dgrams, sizes):
                fh.write(_LEN.pack(len(d), i, s) + d)
                count += 1
        chunk = 64
        done = 0
        while done < flows:
            for i, b in enumerate(batchers):
                for row in make_rows(agents[i], chunk, rnd, now):
                    before = b.pending
                    out = b.add(row)
                    if out:
                        emit(i, out, before + 1 - b.pending)
            done += chunk * len(batchers)
        for i, b in enumerate(batchers):
            before = b.pending
            out = b.flush()
            if out:
                emit(i, out, before)
    return count


def load_datagrams(path):
    """[(agent index, flows, datagram)] from a generate() file."""
    out = []
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    while pos < len(data):
        n, agent, flows = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        out.append((agent, flows, data[pos:pos + n]))
        pos += n
    return out


# -- the paced sender (a separate process: it must not share the collector's GIL or CPU budget) ---

def sender_main(args):
    """--send: load datagrams, print READY, wait for a line on stdin, send paced, print JSON."""
    if args.netflow:
        items = _netflow_items()
    else:
        items = load_datagrams(args.send)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(AGENTS)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dest = ("127.0.0.1", args.port)
    if args.netflow:
        socks[0].sendto(items.pop(0)[2], dest)      # the template, once
    print("READY", flush=True)
    sys.stdin.readline()
    rate, duration = args.rate, args.duration
    total_flows = rate * duration
    t0 = time.perf_counter()
    sent_flows = sent = errors = 0
    idx = 0
    seq = 1
    n = len(items)
    while sent_flows < total_flows:
        # Catch up to the schedule, then sleep about 1 ms: bursts of at most ~1 ms of traffic.
        due = min(total_flows, rate * (time.perf_counter() - t0))
        while sent_flows < due:
            if not args.netflow and idx >= n:
                break
            agent, flows, d = items[idx % n]
            if args.netflow:
                d = d[:12] + struct.pack("!I", seq) + d[16:]
                seq += 1
            try:
                socks[agent].sendto(d, dest)
            except OSError:
                errors += 1      # ENOBUFS: the datagram was not sent, so it is not counted
                time.sleep(0.0002)
                continue
            idx += 1
            sent += 1
            sent_flows += flows
        if not args.netflow and idx >= n:
            break
        time.sleep(0.001)
    secs = time.perf_counter() - t0
    print(json.dumps({"datagrams": sent, "flows": sent_flows, "secs": secs, "send_errors": errors,
                      "exhausted": (not args.netflow and idx >= n)}), flush=True)


def _netflow_items():
    # NetFlow v9 as ../shared/anchors/collector/nf9gen.py builds it: one template, 30-record data.
    fields = [(8, 4), (12, 4), (21, 4), (22, 4), (1, 4), (2, 4), (10, 4), (14, 4), (7, 2), (11, 2),
              (4, 1), (6, 1), (60, 1), (5, 1)]
    uptime, secs = 10_000_000, int(time.time())
    tmpl = struct.pack("!HH", 256, len(fields)) + b"".join(struct.pack("!HH", t, ln) for t, ln in fields)
    tfs = struct.pack("!HH", 0, 4 + len(tmpl)) + tmpl
    template = struct.pack("!HHIIII", 9, 1, uptime, secs, 0, 0) + tfs
    rnd = random.Random(1)
    recs = b"".join(struct.pack("!4s4sIIIIIIHHBBBB", socket.inet_aton("10.0.%d.%d" % (i // 250, i % 250 + 1)),
                                socket.inet_aton("192.168.1.%d" % rnd.randrange(1, 255)), uptime - 1000,
                                uptime - 60000, rnd.randrange(100, 10 ** 6), rnd.randrange(1, 1000), 1, 2,
                                rnd.randrange(1024, 65535), 443, 6, 0x1b, 4, 0) for i in range(NF_PER))
    pad = (-(4 + len(recs))) % 4
    data = struct.pack("!HHIIII", 9, NF_PER, uptime, secs, 1, 0) + struct.pack(
        "!HH", 256, 4 + len(recs) + pad) + recs + b"\0" * pad
    # The template first (sent once, before the timed part), then the data datagram repeated.
    return [(0, 0, template), (0, NF_PER, data)]


def start_sender(port, rate, duration, path=None, netflow=False):
    """A sender subprocess, loaded and waiting for go()."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--send", path or "-", "--port", str(port),
            "--rate", str(rate), "--duration", str(duration)] + (["--netflow"] if netflow else [])
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "READY":
        raise RuntimeError("sender did not start")
    return p


def go(p):
    """Start sending; returns the sender's JSON report once it is done."""
    p.stdin.write("go\n")
    p.stdin.flush()
    out = json.loads(p.stdout.readline())
    p.wait()
    return out


# -- measuring a process tree ---------------------------------------------------------------------

def _tree(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()
                kids.setdefault(int(st[1]), []).append(int(d))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid, tree=True):
    """User+system CPU seconds of pid and (tree) its live descendants."""
    total = 0.0
    for p in (_tree(pid) if tree else [pid]):
        try:
            st = open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()
            total += (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def peak_rss_mib(pid):
    """Sum of VmHWM (peak resident set) over pid and its descendants, in MiB."""
    total = 0
    for p in _tree(pid):
        try:
            for line in open("/proc/%d/status" % p):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def udp_rcvbuf_errors():
    """RcvbufErrors from /proc/net/snmp (all UDP sockets of the machine)."""
    lines = [ln for ln in open("/proc/net/snmp").read().splitlines() if ln.startswith("Udp:")]
    return dict(zip(lines[0].split()[1:], map(int, lines[1].split()[1:])))["RcvbufErrors"]


def scrape(endpoint):
    """Prometheus text from the collector -> {name: value} (labelled series summed per name)."""
    out = {}
    try:
        text = urllib.request.urlopen("http://%s/metrics" % endpoint, timeout=5).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and not m.group(1).endswith("_created"):
            name = m.group(1)[len("myason_"):] if m.group(1).startswith("myason_") else m.group(1)
            key = name if not m.group(2) else "%s{%s}" % (name, m.group(2))
            out[key] = out.get(key, 0) + float(m.group(3))
            if m.group(2):
                out[name] = out.get(name, 0) + float(m.group(3))
    return out


# -- one myason trial -----------------------------------------------------------------------------

class Bench:
    """Servers, keys and the generated load shared by every trial."""

    def __init__(self, args, work):
        self.args, self.work = args, Path(work)
        from cryptography.fernet import Fernet
        self.keys = {"bench-%d" % i: Fernet.generate_key().decode() for i in range(AGENTS)}
        self.servers = None
        self.files = {}

    def start_servers(self, influx):
        from tests.support.services import start_services
        self.servers = start_services(["pg", "influx"] if influx else ["pg"], watch_pid=os.getpid())
        return self.servers

    def load_file(self, size, flows):
        """Generate (once per size) enough datagrams for the highest rate of the ladders."""
        if size not in self.files:
            path = self.work / ("load-%d.bin" % size)
            t0 = time.time()
            n = generate(path, self.keys, flows, size)
            items = load_datagrams(path)
            per = sum(f for _, f, _ in items) / len(items)
            print("# generated %d datagrams of <= %d B (%.1f flows each, %d flows) in %.1f s"
                  % (n, size, per, sum(f for _, f, _ in items), time.time() - t0), flush=True)
            self.files[size] = path
        return self.files[size]

    def pg_sql(self, sql):
        import psycopg
        with psycopg.connect(self.servers.pg_dsn, autocommit=True) as c:
            cur = c.execute(sql)
            return cur.fetchone() if cur.description else None

    def reset(self, influx):
        try:
            self.pg_sql("TRUNCATE flows, batches")
        except Exception:  # noqa: BLE001 - first run: the collector creates the schema
            pass
        if influx:
            from tests.support.services import _http
            q = urllib.parse.urlencode({"q": "DROP DATABASE myason; CREATE DATABASE myason"})
            _http("POST", "%s/query?%s" % (self.servers.influx_url, q))

    def influx_flows(self):
        from tests.support.services import influx_query, influx_rows
        try:
            rows = influx_rows(influx_query(self.servers.influx_url, "SELECT sum(flows) FROM flows", epoch=None))
        except Exception:  # noqa: BLE001 - no measurement yet
            return 0
        return int(rows[0]["sum"]) if rows else 0

    def trial(self, rate, size, influx, extra):
        from tests.support.collector import Collector
        a = self.args
        self.reset(influx)
        writers = [{"type": "postgresql", "dsn": self.servers.pg_dsn}]
        if influx:
            writers.append({"type": "influxdb", "url": self.servers.influx_url, "api": "v1"})
        d = Path(tempfile.mkdtemp(prefix="trial.", dir=self.work))
        mport = _free_tcp_port()
        metrics = "127.0.0.1:%d" % mport
        conf = dict(token_ttl=3600.0, fsync=True, batch_interval=0.5, metrics=metrics, max_datagram=16384)
        conf.update(extra)
        col = Collector(d, writers, agents=sorted(self.keys), **conf)
        # Same keys for every trial: the load file was encrypted with them.
        col.keys = dict(self.keys)
        (d / "keystore").write_text("".join("%s %s\n" % kv for kv in sorted(self.keys.items())))
        col.start(timeout=60)
        pid = col.proc.pid
        try:
            snd = start_sender(col.port, rate, a.duration, str(self.load_file(size, a.gen_flows)))
            time.sleep(0.3)
            cpu0, rcv0 = cpu_seconds(pid), udp_rcvbuf_errors()
            main0 = cpu_seconds(pid, tree=False)
            pg0 = self.pg_cpu()
            spy = self.start_profile(pid, rate, size)
            t0 = time.time()
            rep = go(snd)
            t_end = time.time()
            sent = rep["flows"]
            stored, t_done = self._wait_stored(sent, t_end, influx, metrics)
            cpu = cpu_seconds(pid) - cpu0
            main_cpu = cpu_seconds(pid, tree=False) - main0
            pg_cpu = self.pg_cpu() - pg0
            self.stop_profile(spy)
            rss = peak_rss_mib(pid)
            m = scrape(metrics)
            pg_rows = self.pg_sql("SELECT count(*) FROM flows")[0]
            ifl = self.influx_flows() if influx else None
        finally:
            col.stop(timeout=120)
            shutil.rmtree(d, ignore_errors=True)
        drain = None if t_done is None else max(0.0, t_done - t_end)
        ok = (pg_rows == sent and (not influx or ifl == sent) and drain is not None
              and drain <= a.drain_deadline and not rep["exhausted"])
        return dict(rate=rate, offered=round(sent / rep["secs"]), sent=sent, stored_pg=pg_rows, stored_influx=ifl,
                    stored_rate=round(min(stored, sent) / max(rep["secs"], (t_done or t_end) - t0)),
                    loss=sent - min(pg_rows, ifl if influx else pg_rows), drain_s=drain,
                    kernel_drops=int(m.get("kernel_drops", -1)), queue_drops=int(m.get("queue_dropped", -1)),
                    rejects=int(m.get("rejects", 0)), spool_rejected=int(m.get("spool_dropped", 0)),
                    rcvbuf_errors=udp_rcvbuf_errors() - rcv0, cpu_s=round(cpu, 2), rss_mib=round(rss, 1),
                    pg_cpu_s=round(pg_cpu, 2), main_cpu_s=round(main_cpu, 2), send_errors=rep["send_errors"], ok=ok)

    def pg_cpu(self):
        """CPU seconds used so far by the PostgreSQL server's process tree (postmaster and backends)."""
        pid = getattr(self.servers, "pg_pid", None)
        if pid is None:
            pidfile = Path(self.servers.pg_data) / "postmaster.pid" if getattr(self.servers, "pg_data", None) else None
            if pidfile is None or not pidfile.exists():
                return 0.0
            pid = int(pidfile.read_text().split()[0])
        return cpu_seconds(pid)

    def start_profile(self, pid, rate, size):
        """py-spy over the collector's process tree while the sender runs (--profile)."""
        if not self.args.profile or not shutil.which("py-spy"):
            return None
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        path = out / ("collector-%d-%d.txt" % (size, rate))
        p = subprocess.Popen(["py-spy", "record", "--subprocesses", "--nonblocking", "-r", "200", "-f", "raw",
                              "-o", str(path), "-p", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return p, path

    def stop_profile(self, spy):
        if spy is None:
            return
        p, path = spy
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
        if path.exists():
            summary = path.with_suffix(".summary")
            summary.write_text(profile_summary(path.read_text()))
            print("# profile: %s (summary %s)" % (path, summary), flush=True)

    def _wait_stored(self, sent, t_end, influx, metrics):
        # Polls what the writers committed: PostgreSQL's batch ledger (cheap), and the influx
        # writer's committed rows from the metrics. Gives up 3 s after progress stops.
        last, last_t, t_done = -1, time.time(), None
        deadline = t_end + self.args.max_wait
        while time.time() < deadline:
            got = self.pg_sql("SELECT coalesce(sum(rows), 0) FROM batches")[0]
            if influx:
                m = scrape(metrics)
                # One series per influxdb writer thread (influxdb, or influxdb-0, influxdb-1...).
                got = min(got, int(sum(v for k, v in m.items() if k.startswith('writers_rows{key="influxdb'))))
            now = time.time()
            if got != last:
                last, last_t = got, now
            if got >= sent:
                t_done = now
                break
            if now - last_t > 3.0 and now > t_end + 3.0:
                break
            time.sleep(0.1)
        return last, t_done


def profile_summary(raw, top=40):
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) stacks."""
    self_n, incl_n, total = {}, {}, 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
    out = ["# %d samples" % total, "## self"]
    out += ["%6.2f%%  %s" % (100.0 * v / total, k) for k, v in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]]
    out.append("## inclusive")
    out += ["%6.2f%%  %s" % (100.0 * v / total, k) for k, v in sorted(incl_n.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(out) + "\n"


def _free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ladder(name, rates, runs, trial):
    """Rising steps of `runs` trials each, until a step fails; returns (best rate, steps)."""
    best, steps = None, []
    print("\n## %s" % name, flush=True)
    print("%9s %9s %9s %7s %7s %6s %6s %6s %6s %7s %7s %7s %7s %s" % (
        "offered", "stored/s", "sent", "loss", "drain_s", "kdrop", "qdrop", "reject", "rcverr", "cpu_s",
        "cpu_main", "pg_cpu", "rss_MiB", "ok"), flush=True)
    for rate in rates:
        reps = []
        for _ in range(runs):
            r = trial(rate)
            reps.append(r)
            print("%9s %9s %9s %7s %7s %6s %6s %6s %6s %7s %7s %7s %7s %s" % (
                r["offered"], r["stored_rate"], r["sent"], r["loss"],
                "-" if r.get("drain_s") is None else "%.2f" % r["drain_s"], r.get("kernel_drops", "-"),
                r.get("queue_drops", "-"), r.get("rejects", "-"), r["rcvbuf_errors"], r["cpu_s"],
                r.get("main_cpu_s", "-"), r.get("pg_cpu_s", "-"), r.get("rss_mib", "-"), "ok" if r["ok"] else "FAIL"), flush=True)
            if not r["ok"]:
                break
        ok = all(r["ok"] for r in reps)
        steps.append(dict(rate=rate, ok=ok, runs=reps))
        if not ok:
            break
        best = rate
    print("=> %s: highest zero-loss rate %s flows/s" % (name, "none" if best is None else "{:,}".format(best)),
          flush=True)
    return best, steps


# -- the peer: nfcapd -----------------------------------------------------------------------------

def nfcapd_trial(rate, args, work):
    """nfcapd -B 16 MiB receiving NetFlow v9 at `rate` flows/s; flows counted by nfdump afterwards."""
    port = _free_udp_port()
    d = tempfile.mkdtemp(prefix="nfcapd.", dir=work)
    p = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", d, "-t", "3600", "-B", str(16 << 20)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        snd = start_sender(port, rate, args.duration, netflow=True)
        time.sleep(0.8)
        cpu0, rcv0 = cpu_seconds(p.pid), udp_rcvbuf_errors()
        rep = go(snd)
        time.sleep(1.0)     # as the anchors: done within 1 s after the sender
        cpu = cpu_seconds(p.pid) - cpu0
        rss = peak_rss_mib(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    info = subprocess.run(["nfdump", "-R", d, "-I"], capture_output=True, text=True).stdout
    m = re.search(r"^Flows:\s+(\d+)", info, re.M)
    got = int(m.group(1)) if m else 0
    shutil.rmtree(d, ignore_errors=True)
    sent = rep["flows"]
    return dict(rate=rate, offered=round(sent / rep["secs"]), sent=sent, stored_rate=round(got / rep["secs"]),
                loss=sent - got, rcvbuf_errors=udp_rcvbuf_errors() - rcv0, cpu_s=round(cpu, 2),
                rss_mib=round(rss, 1), ok=got == sent and rep["send_errors"] == 0)


def _free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- main -----------------------------------------------------------------------------------------

def parse_args(argv=None):
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short ladder, one run per step (smoke run)")
    ap.add_argument("--max-rate", type=int, default=300_000, help="highest myason step in flows/s")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of sending per run")
    ap.add_argument("--runs", type=int, default=None, help="runs per step (default 3, --quick 1)")
    ap.add_argument("--sizes", default="1400,8192", help="max_datagram values to send (comma-separated)")
    ap.add_argument("--ladders", default="pg,pg+influx,nfcapd", help="which ladders to run")
    ap.add_argument("--rates", default=None, help="explicit myason steps, comma-separated flows/s")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="collector config override, e.g. --set processors_number=2")
    ap.add_argument("--drain-deadline", type=float, default=1.5, help="seconds after the sender to store all")
    ap.add_argument("--max-wait", type=float, default=30.0, help="seconds to wait for stragglers")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy every trial's collector tree (raw stacks + a per-function summary in DIR)")
    # Internal: the sender subprocess.
    ap.add_argument("--send", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--netflow", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    """Run the ladders and print the table and the verdicts."""
    args = parse_args(argv)
    if args.send:
        return sender_main(args)
    import yaml
    runs = args.runs or (1 if args.quick else 3)
    if args.rates:
        rates = [int(r) for r in args.rates.split(",")]
    elif args.quick:
        rates = [30_000, 100_000]
    else:
        rates = [40_000, 60_000, 80_000, 100_000, 120_000, 150_000, 200_000, 250_000, 300_000]
    rates = [r for r in rates if r <= args.max_rate]
    args.gen_flows = int(max(rates) * args.duration * 1.02) + 2000
    extra = {}
    for item in args.set:
        k, _, v = item.partition("=")
        extra[k] = yaml.safe_load(v)
    which = args.ladders.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="myason-bench.")
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "argv": sys.argv[1:],
               "cpus": os.cpu_count(), "load": open("/proc/loadavg").read().split()[:3], "ladders": []}
    print("# myason collector benchmark %s, %d CPUs, load %s, extra config %s"
          % (results["when"], os.cpu_count(), " ".join(results["load"]), extra or "-"), flush=True)
    bench = Bench(args, work)
    try:
        if any(w.startswith("pg") for w in which):
            bench.start_servers("pg+influx" in which)
        for w in which:
            if w not in ("pg", "pg+influx"):
                continue
            for size in sizes:
                name = "myason -> %s, max_datagram %d" % ("PostgreSQL" if w == "pg" else "PostgreSQL + InfluxDB", size)
                best, steps = ladder(name, rates, runs,
                                     lambda r, size=size, w=w: bench.trial(r, size, w == "pg+influx", extra))
                results["ladders"].append(dict(name=name, best=best, steps=steps))
        if "nfcapd" in which:
            if shutil.which("nfcapd"):
                nf_rates = [300_000, 1_000_000] if args.quick else [300_000, 1_000_000, 2_000_000, 3_000_000]
                best, steps = ladder("nfcapd -B 16 MiB, NetFlow v9, 30 flows/datagram", nf_rates, runs,
                                     lambda r: nfcapd_trial(r, args, work))
                results["ladders"].append(dict(name="nfcapd", best=best, steps=steps))
            else:
                print("\n## nfcapd: not installed (apt-get install nfdump); peer not measured", flush=True)
    finally:
        if bench.servers is not None:
            from tests.support.services import stop_services
            stop_services(bench.servers)
        shutil.rmtree(work, ignore_errors=True)
    print("\n# summary (highest rate where every run stored every flow within %.1f s)" % args.drain_deadline)
    for lad in results["ladders"]:
        print("  %-60s %s" % (lad["name"], "none" if lad["best"] is None else "{:,} flows/s".format(lad["best"])))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
