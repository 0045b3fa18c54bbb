#!/usr/bin/env python3
"""Live capture benchmark: the myason agent and softflowd metering the same replayed traffic.

    python3 bench/live.py                          # 400,000 frames at 150k, 200k, 300k pps and top speed
    python3 bench/live.py --frames 100000 --rates 100000,200000
    python3 bench/live.py --repeat 3 --engine fast --workers 2 --out live.jsonl

Two network namespaces joined by a veth pair (bench/netns.py; removed on exit, Ctrl-C or
failure). In the receiving namespace the myason agent (`myason agent` with a generated config:
that interface, no export, `--output` when asked) and softflowd (live, libpcap, exporting IPFIX
to a throw-away UDP sink in the namespace) capture on the same interface at the same time; in
the sending namespace tcpreplay (the Debian package, installed with apt-get when missing) sends
the first --frames frames of ../shared/pcaps/bench-mix.pcap (cut with editcap, preloaded with
tcpreplay -K) at each rate of the ladder, "top" meaning tcpreplay --topspeed. Each run starts
fresh meters, waits until both hold their capture sockets and are idle, replays, waits until
both are idle again, then reads each meter's counters and stops it:

- frames sent: tcpreplay's "Successful packets";
- frames metered: the agent's summary `frames` (frames handed to its flow engine);
  softflowd's `softflowctl statistics` "Packets received by libpcap" minus its drops;
- drops: the agent's summary counters whose name holds "drop" (kernel_drops, queue drops, any
  ring counter); softflowd's libpcap and interface drops. Frames lost before either meter (the
  kernel's per-CPU backlog, /proc/net/softnet_stat) are counted apart as "backlog";
- CPU seconds: run time of the meter's process and its descendants (/proc/PID/task/*/schedstat,
  /proc/PID/stat) from idle-after-start to idle-after-replay, so start-up (imports, compiling)
  is left out; peak RSS: VmHWM of the meter's process;
- unaccounted: sent - metered - drops.

A rate is a meter's clean rate when in every repeat it dropped nothing and metered every frame
sent; its zero-loss knee is the highest clean rate below which every rate was clean too. The
unaccounted count a meter shows in every run (a ring engine whose fanout group reassembles IP
fragments receives fewer frames at any rate) is allowed, and printed. Also printed: CPU
seconds per million frames metered, per meter, and the ratio agent/softflowd.

The agent runs from this checkout, or the one --agent-root names (`.venv/bin/python myason.py
agent`, so a work tree other than the installed one measures its own code). --engine and --workers go to the agent: --engine
on its command line, and `engine:` / `workers:` into its config when this agent's configuration
has those keys (the TPACKET_V3 ring engine, issue 13); an agent without them runs its only live
engine and the script says so.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.netns import in_ns, veth_namespaces  # noqa: E402

SHARED = ROOT.parent / "shared"
CLK = os.sysconf("SC_CLK_TCK")
METERS = ("myason", "softflowd")

# A UDP sink for softflowd's export inside the receiving namespace: reads and forgets.
SINK = (
    "import signal, socket\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C: the script ends it\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\n"
    "s.bind(('127.0.0.1', 0))\n"
    "print(s.getsockname()[1], flush=True)\n"
    "while True:\n"
    "    s.recv(65536)\n"
)


def _die_with_parent():
    """In a child before exec: SIGTERM when this script dies, even by SIGKILL (no orphan meters).
    `ip netns exec` execs its command, so the setting reaches the meter itself."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG


def say(*args):
    print("live:", *args, file=sys.stderr, flush=True)


# -- tools ------------------------------------------------------------------------------------

def ensure_tools():
    """tcpreplay, editcap and softflowd, installed with apt-get (Debian packages) when missing."""
    need = [pkg for tool, pkg in (("tcpreplay", "tcpreplay"), ("editcap", "wireshark-common"),
                                  ("softflowd", "softflowd"), ("softflowctl", "softflowd"))
            if shutil.which(tool) is None]
    need = sorted(set(need))
    if not need:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("live: missing %s and cannot install (needs root and apt-get)" % " ".join(need))
    say("installing %s" % " ".join(need))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for argv in (["apt-get", *lock, "update", "-qq"],
                 ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *need]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit("live: %s failed:\n%s" % (" ".join(argv), (proc.stdout + proc.stderr)[-3000:]))


AGENT_ROOT = ROOT      # the checkout whose agent runs (--agent-root)


def agent_python():
    venv = AGENT_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def agent_config_keys():
    """The agent's configuration keys (AgentConfig fields) of this checkout."""
    code = ("import dataclasses\n"
            "try:\n    from myason.agent.config import AgentConfig\n"
            "except ImportError:\n    from myason.config import AgentConfig\n"
            "print(' '.join(f.name for f in dataclasses.fields(AgentConfig)))")
    out = subprocess.run([agent_python(), "-c", code], cwd=str(AGENT_ROOT), capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def cut_capture(src, frames, tmp):
    """The first `frames` frames of src in a new file (editcap); the file's frame count."""
    out = Path(tmp) / "slice.pcap"
    subprocess.run(["editcap", "-F", "pcap", "-r", str(src), str(out), "1-%d" % frames],
                   check=True, capture_output=True)
    return out


# -- processes --------------------------------------------------------------------------------

def _stat(pid):
    with open("/proc/%d/stat" % pid) as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _descendants(pid):
    """pid and every live process below it (a meter may run workers as processes)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def proc_cpu(pid):
    """CPU seconds of a process and its descendants: (utime + stime from /proc/PID/stat, in
    clock ticks, exited threads included; the sum of their threads' run time from
    /proc/PID/task/*/schedstat, in ns, live threads only); None when the process is gone."""
    try:
        _stat(pid)
    except OSError:
        return None
    ticks = ns = 0
    for p in _descendants(pid):
        try:
            fields = _stat(p)
            ticks += (int(fields[11]) + int(fields[12])) / CLK
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/schedstat" % (p, task)) as fh:
                    ns += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass            # ended meanwhile
    return ticks, ns / 1e9


def cpu_between(a, b):
    """CPU seconds between two proc_cpu() samples: the nanosecond sum, unless the tick count
    grew clearly more (a thread that used CPU ended in between)."""
    ticks, fine = b[0] - a[0], b[1] - a[1]
    return ticks if ticks - fine > 0.05 or fine <= 0 < ticks else fine


def proc_hwm(pid):
    """Peak resident set size (VmHWM) in MiB; None when gone."""
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def packet_sockets(pid):
    """AF_PACKET sockets the process holds (inodes of its fds listed in its namespace's
    /proc/PID/net/packet)."""
    try:
        with open("/proc/%d/net/packet" % pid) as fh:
            inodes = {line.split()[-1] for line in fh.read().splitlines()[1:] if line.strip()}
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return 0
    n = 0
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            n += 1
    return n


def softnet_dropped():
    """Frames the kernel dropped from its per-CPU input backlogs (all CPUs)."""
    total = 0
    with open("/proc/net/softnet_stat") as fh:
        for line in fh:
            total += int(line.split()[1], 16)
    return total


class Meter:
    """A meter process started inside the receiving namespace; its stderr kept."""

    def __init__(self, name, argv, tmp):
        self.name = name
        self.err_path = Path(tmp) / ("%s.err" % name)
        self._err = open(self.err_path, "w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.cpu0 = None

    def alive(self):
        return self.proc.poll() is None

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after timeout; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.proc.returncode


def wait_ready(meters, timeout):
    """Until every meter holds its capture sockets and has been idle for a moment."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        for m in meters:
            if not m.alive():
                raise RuntimeError("%s exited at start (%s):\n%s" % (m.name, m.proc.returncode, m.stderr()[-3000:]))
        now = {m.name: (packet_sockets(m.pid), proc_cpu(m.pid)) for m in meters}
        if last and all(now[m.name][0] > 0 and now[m.name][0] == last[m.name][0]
                        and cpu_between(last[m.name][1], now[m.name][1]) < 0.03 for m in meters):
            return
        last = now
        time.sleep(0.5)
    raise RuntimeError("meters not ready after %.0f s: %s" % (
        timeout, {m.name: packet_sockets(m.pid) for m in meters}))


def wait_idle(meters, timeout=120.0, quiet=0.03):
    """Until no meter used more than `quiet` CPU seconds in the last half second."""
    deadline = time.monotonic() + timeout
    last = {m.name: proc_cpu(m.pid) for m in meters}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = {m.name: proc_cpu(m.pid) for m in meters}
        if all(now[k] is not None and cpu_between(last[k], now[k]) < quiet for k in now):
            return
        last = now
    say("meters still busy after %.0f s" % timeout)


# -- meters -----------------------------------------------------------------------------------

def start_agent(link, args, keys, tmp):
    lines = ["interfaces: [%s]" % link.rcv_if, "agent_id: bench-live", "stats_interval: 0"]
    if args.engine and "engine" in keys:
        lines.append("engine: %s" % args.engine)
    if args.workers and "workers" in keys:
        lines.append("workers: %d" % args.workers)
    for item in args.agent_set:
        lines.append("%s: %s" % tuple(item.split("=", 1)))
    conf = Path(tmp) / "agent.yaml"
    conf.write_text("\n".join(lines) + "\n")
    argv = [agent_python(), str(AGENT_ROOT / "myason.py"), "agent", "-ac", str(conf), "--no-export"]
    if args.engine:
        argv += ["--engine", args.engine]
    if args.agent_output:
        argv += ["--output", args.agent_output]
    return Meter("myason", in_ns(link.rcv_ns, argv), tmp)


def start_softflowd(link, args, tmp, sink_port):
    ctl = Path(tmp) / "softflowd.ctl"
    argv = ["softflowd", "-i", link.rcv_if, "-d", "-n", "127.0.0.1:%d" % sink_port, "-v", "10", "-6",
            "-A", "milli", "-m", "1000000", "-c", str(ctl), "-p", str(Path(tmp) / "softflowd.pid"),
            "-B", str(args.softflowd_buffer)]
    m = Meter("softflowd", in_ns(link.rcv_ns, argv), tmp)
    m.ctl = ctl
    return m


def _summary(text):
    """The agent's exit summary (format_summary) as {key: int or {k: int}}."""
    if "myason agent summary:" not in text:
        return {}
    out = {}
    for line in text[text.index("myason agent summary:"):].splitlines()[1:]:
        m = re.match(r"\s+(\S+)\s+(.*)$", line)
        if not m:
            break
        key, value = m.groups()
        if re.fullmatch(r"-?\d+", value):
            out[key] = int(value)
        elif re.fullmatch(r"-?\d+\.\d*", value):
            out[key] = float(value)
        elif "=" in value:
            out[key] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", value)}
        else:
            out[key] = value
    return out


def agent_result(meter, link):
    code = meter.stop(timeout=60)
    s = _summary(meter.stderr())
    if not s:
        raise RuntimeError("the agent printed no summary (exit %s):\n%s" % (code, meter.stderr()[-3000:]))
    drops = {k: v for k, v in s.items() if "drop" in k and isinstance(v, int)}
    return {"metered": s.get("frames", 0), "drops": sum(drops.values()), "drop_counters": drops,
            "kernel_packets": s.get("kernel_packets"), "flows": s.get("flows_exported"), "exit": code,
            "summary": s}


def softflowd_result(meter, link):
    proc = subprocess.run(in_ns(link.rcv_ns, ["softflowctl", "-c", str(meter.ctl), "statistics"]),
                          capture_output=True, text=True, timeout=30)
    text = proc.stdout

    def num(label):
        m = re.search(r"%s:\s*(\d+)" % re.escape(label), text)
        return int(m.group(1)) if m else 0
    received = num("Packets received by libpcap")
    dropped, ifdropped = num("Packets dropped by libpcap"), num("Packets dropped by interface")
    subprocess.run(in_ns(link.rcv_ns, ["softflowctl", "-c", str(meter.ctl), "shutdown"]),
                   capture_output=True, timeout=30)
    code = meter.stop()
    if not received and not text:
        raise RuntimeError("softflowctl statistics failed: %s%s" % (proc.stderr, meter.stderr()[-2000:]))
    return {"metered": received - dropped, "drops": dropped + ifdropped,
            "drop_counters": {"pcap_dropped": dropped, "if_dropped": ifdropped},
            "kernel_packets": received, "flows": num("Flows exported"), "exit": code}


# -- one run ----------------------------------------------------------------------------------

def replay(link, pcap, rate):
    """tcpreplay into the sending end; (sent, failed, actual pps, seconds, tcpreplay's CPU)."""
    argv = ["tcpreplay", "-q", "-K", "-i", link.snd_if]
    argv += ["--topspeed"] if rate == "top" else ["--pps=%d" % rate]
    before = os.times()
    proc = subprocess.run(in_ns(link.snd_ns, argv + [str(pcap)]), capture_output=True, text=True, timeout=3600,
                          preexec_fn=_die_with_parent)
    after = os.times()
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError("tcpreplay failed (%d):\n%s" % (proc.returncode, text[-3000:]))

    def num(pattern, cast=int):
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else None
    return {"sent": num(r"Successful packets:\s+(\d+)"), "failed": num(r"Failed packets:\s+(\d+)"),
            "pps": num(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", float),
            "seconds": num(r"sent in ([\d.]+) seconds", float),
            "sender_cpu": round((after.children_user - before.children_user)
                                + (after.children_system - before.children_system), 3)}


def one_run(link, args, keys, pcap, rate, sink_port):
    with tempfile.TemporaryDirectory(prefix="myason-live-") as tmp:
        meters = []
        try:
            if "myason" in args.meters:
                meters.append(start_agent(link, args, keys, tmp))
            if "softflowd" in args.meters:
                meters.append(start_softflowd(link, args, tmp, sink_port))
            wait_ready(meters, args.start_timeout)
            for m in meters:
                m.cpu0 = proc_cpu(m.pid)
            backlog0 = softnet_dropped()
            sent = replay(link, pcap, rate)
            wait_idle(meters)
            backlog = softnet_dropped() - backlog0
            out = {}
            for m in meters:
                cpu, hwm = cpu_between(m.cpu0, proc_cpu(m.pid)), proc_hwm(m.pid)
                res = agent_result(m, link) if m.name == "myason" else softflowd_result(m, link)
                res.update(cpu=round(cpu, 4), rss_mib=round(hwm, 1) if hwm else None)
                out[m.name] = res
            return sent, backlog, out
        finally:
            for m in meters:
                m.stop(timeout=10)


# -- report -----------------------------------------------------------------------------------

def rate_label(rate, pps=None):
    if rate == "top":
        return "top speed (%s pps sent)" % ("{:,.0f}".format(pps) if pps else "?")
    return "{:,} pps".format(rate)


def unaccounted(res, sent):
    """Frames sent that the meter neither metered nor counted as dropped."""
    return sent - res["metered"] - res["drops"]


def clean(res, sent, allowance=0):
    """No drop, and every frame sent metered (but `allowance`: see report()), none twice."""
    return res["drops"] == 0 and 0 <= sent - res["metered"] <= allowance


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def main():
    global AGENT_ROOT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcap", default=str(SHARED / "pcaps" / "bench-mix.pcap"))
    ap.add_argument("--frames", type=int, default=400000, help="frames of the capture replayed per run")
    ap.add_argument("--rates", default="150000,200000,300000,top",
                    help="packets/s ladder, comma-separated; 'top' = tcpreplay --topspeed")
    ap.add_argument("--repeat", type=int, default=1, help="runs per rate (medians reported)")
    ap.add_argument("--engine", choices=("python", "fast"), help="the agent's live engine (default: its own)")
    ap.add_argument("--workers", type=int, help="the agent's workers per interface (when it has the key)")
    ap.add_argument("--agent-set", action="append", default=[], metavar="KEY=VALUE",
                    help="another line for the agent's config (e.g. ring_blocks=64)")
    ap.add_argument("--agent-output", metavar="FILE", help="the agent also writes its records to FILE (.csv/.jsonl)")
    ap.add_argument("--meters", default="myason,softflowd", help="which meters run (comma-separated)")
    ap.add_argument("--softflowd-buffer", type=int, default=16 << 20,
                    help="softflowd -B: libpcap buffer bytes (default 16 MiB, the agent's capture buffer)")
    ap.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the meters to start")
    ap.add_argument("--out", metavar="FILE", help="also append every run and the summary as JSON lines")
    ap.add_argument("--agent-root", metavar="DIR",
                    help="run the agent of another checkout (e.g. a work tree with a new engine); default: this one")
    args = ap.parse_args()
    if args.agent_root:
        AGENT_ROOT = Path(args.agent_root).resolve()
        if not (AGENT_ROOT / "myason.py").exists():
            ap.error("--agent-root: no myason.py in %s" % AGENT_ROOT)
    args.meters = [m for m in args.meters.split(",") if m]
    if set(args.meters) - set(METERS):
        ap.error("--meters: myason and/or softflowd")
    rates = []
    for r in args.rates.split(","):
        r = r.strip().lower()
        if r:
            rates.append("top" if r in ("top", "topspeed", "max") else int(float(r)))
    pcap_src = Path(args.pcap)
    if not pcap_src.exists():
        raise SystemExit("no capture at %s (is ../shared beside the repo?)" % pcap_src)
    ensure_tools()
    load = os.getloadavg()[0]
    if load > 0.5:
        say("load average %.2f: other processes are running, figures will be noisy" % load)
    keys = agent_config_keys()
    if args.workers and "workers" not in keys:
        say("this agent has no `workers` key: --workers %d is not applied (one capture thread)" % args.workers)
    if args.engine and "engine" not in keys:
        say("this agent's config has no `engine` key: --engine %s goes on the command line only "
            "(live capture on its one engine)" % args.engine)
    # SIGTERM ends the run as Ctrl-C does: meters stopped, namespaces removed.
    signal.signal(signal.SIGTERM, _interrupt)
    out_fh = open(args.out, "a") if args.out else None
    runs = []
    sink = None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        with tempfile.TemporaryDirectory(prefix="myason-live-") as tmp:
            pcap = cut_capture(pcap_src, args.frames, tmp)
            with veth_namespaces() as link:
                sink = subprocess.Popen(in_ns(link.rcv_ns, [sys.executable, "-c", SINK]),
                                        stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
                sink_port = int(sink.stdout.readline())
                say("namespaces %s -> %s, %d frames per run, rates %s, meters %s" % (
                    link.snd_ns, link.rcv_ns, args.frames, ",".join(map(str, rates)), ",".join(args.meters)))
                for rate in rates:
                    for rep in range(args.repeat):
                        sent, backlog, res = one_run(link, args, keys, pcap, rate, sink_port)
                        run = {"rate": rate, "repeat": rep, "sent": sent, "backlog_dropped": backlog, "meters": res}
                        runs.append(run)
                        say("%s #%d: sent %s at %s pps; %s" % (
                            rate_label(rate, sent["pps"]), rep + 1, sent["sent"], sent["pps"],
                            "; ".join("%s metered %d drops %d cpu %.2f s" % (k, v["metered"], v["drops"], v["cpu"])
                                      for k, v in res.items())))
                        if out_fh:
                            out_fh.write(json.dumps(dict(run, kind="run", started=started)) + "\n")
                            out_fh.flush()
    except KeyboardInterrupt:
        say("interrupted: meters stopped, namespaces removed")
        if not runs:
            return 130
    finally:
        if sink is not None and sink.poll() is None:
            sink.kill()
            sink.wait()
    summary = report(runs, rates, args)
    if out_fh:
        out_fh.write(json.dumps(dict(summary, kind="summary", started=started, frames=args.frames,
                                     engine=args.engine, workers=args.workers)) + "\n")
        out_fh.close()
    return 0


def report(runs, rates, args):
    """Print the table and the knees; the summary as a dict."""
    med = statistics.median
    print("frames per run: %d (first frames of %s); %d run(s) per rate, medians shown" % (
        args.frames, Path(args.pcap).name, args.repeat))
    print("agent: %s, engine %s, workers %s; load average at the end %.2f (%d CPUs)" % (
        AGENT_ROOT, args.engine or "(its default)", args.workers or "(its default)", os.getloadavg()[0],
        os.cpu_count()))
    head = "%-14s %10s %-10s %9s %9s %9s %7s %8s %7s %8s %10s" % (
        "offered pps", "sent pps", "meter", "sent", "metered", "drops", "unacc", "backlog", "cpu s", "rss MiB",
        "cpu s/Mfr")
    over = [(r["rate"], r["repeat"] + 1, m, v["metered"], r["sent"]["sent"]) for r in runs
            for m, v in r["meters"].items() if v["metered"] > r["sent"]["sent"]]
    for rate, rep, m, metered, sent in over:
        print("WARNING: %s #%d: %s metered %d frames of %d sent: frames counted more than once"
              % (rate_label(rate, None), rep, m, metered, sent))
    print(head)
    print("-" * len(head))
    knees = {m: None for m in args.meters}
    broken = {m: False for m in args.meters}
    per_m = {m: [0.0, 0] for m in args.meters}
    table = []
    # Frames a meter neither meters nor counts as dropped at every rate, even the slowest, are
    # not a loss of speed: a ring engine in a PACKET_FANOUT group with FLAG_DEFRAG gets IP
    # fragments reassembled by the kernel (fewer, larger frames). The smallest such count over
    # all runs is allowed; anything above it (frames lost silently as the rate grows) is not.
    allowance = {m: max(0, min([unaccounted(r["meters"][m], r["sent"]["sent"]) for r in runs] or [0]))
                 for m in args.meters}
    for rate in rates:
        group = [r for r in runs if r["rate"] == rate]
        if not group:
            continue
        pps = med(r["sent"]["pps"] or 0 for r in group)
        for m in args.meters:
            rs = [r["meters"][m] for r in group]
            sent = med(r["sent"]["sent"] for r in group)
            row = {"rate": rate, "offered_pps": pps, "meter": m, "sent": sent,
                   "metered": med(x["metered"] for x in rs), "drops": med(x["drops"] for x in rs),
                   "backlog": med(r["backlog_dropped"] for r in group), "cpu": med(x["cpu"] for x in rs),
                   "rss_mib": max((x["rss_mib"] or 0) for x in rs),
                   "unaccounted": med(unaccounted(x, r["sent"]["sent"]) for x, r in zip(rs, group)),
                   "clean": all(clean(x, r["sent"]["sent"], allowance[m]) for x, r in zip(rs, group))}
            row["cpu_per_mframe"] = row["cpu"] / row["metered"] * 1e6 if row["metered"] else None
            per_m[m][0] += sum(x["cpu"] for x in rs)
            per_m[m][1] += sum(x["metered"] for x in rs)
            table.append(row)
            if row["clean"] and not broken[m]:
                knees[m] = (rate, pps)
            elif not row["clean"]:
                broken[m] = True
            print("%-14s %10s %-10s %9d %9d %9d %7d %8d %7.3f %8.1f %10s" % (
                "top" if rate == "top" else "{:,}".format(rate), "{:,.0f}".format(pps), m, sent,
                row["metered"], row["drops"], row["unaccounted"], row["backlog"], row["cpu"],
                row["rss_mib"], "%.2f" % row["cpu_per_mframe"] if row["cpu_per_mframe"] else "-"))
    print()
    for m in args.meters:
        if allowance[m]:
            print("%-10s %d frames unaccounted in every run (e.g. fragments the kernel reassembled for a "
                  "fanout group): allowed in the knee" % (m, allowance[m]))
    for m in args.meters:
        k = knees[m]
        if k is None:
            print("%-10s zero-loss knee: below the lowest rate offered" % m)
        elif not broken[m]:
            print("%-10s zero-loss knee: >= %s (clean at every rate offered%s)" % (
                m, rate_label(k[0], k[1]), ": the sender is the limit" if k[0] == "top" else ""))
        else:
            print("%-10s zero-loss knee: %s (the highest clean rate)" % (m, rate_label(k[0], k[1])))
    cpm = {m: (c / f * 1e6 if f else None) for m, (c, f) in per_m.items()}
    for m in args.meters:
        if cpm[m] is not None:
            print("%-10s CPU seconds per million frames metered (all runs): %.3f" % (m, cpm[m]))
    ratio = None
    if cpm.get("myason") and cpm.get("softflowd"):
        ratio = cpm["myason"] / cpm["softflowd"]
        print("ratio myason/softflowd CPU per frame: %.2f" % ratio)
    return {"table": table, "knees": {m: (list(k) if k else None) for m, k in knees.items()},
            "unaccounted_allowed": allowance,
            "cpu_per_mframe": cpm, "ratio": ratio}


if __name__ == "__main__":
    sys.exit(main())
