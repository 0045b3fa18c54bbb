"""Live capture: raw frames from one interface through an AF_PACKET socket with a kernel BPF filter."""
import ctypes
import errno
import fcntl
import ipaddress
import logging
import select
import socket
import struct
import time

from myason.errors import CaptureError

log = logging.getLogger("myason.agent.capture")

# Linux constants the socket module does not export (include/uapi/linux/if_packet.h, asm/socket.h).
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # == SCM_TIMESTAMPNS; the 64-bit "old" layout: two native longs
ETH_P_ALL = 0x0003
SIOCGIFHWADDR = 0x8927
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

ARPHRD_ETHER = 1
ARPHRD_PPP = 512
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 65534

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

SLL_HDR_LEN = 16
RCVBUF_BYTES = 16 << 20

# Classic BPF encoding (linux/filter.h), used to adjust libpcap's programs before attaching them.
_BPF_LD, _BPF_LDX, _BPF_RET = 0x00, 0x01, 0x06
_BPF_ABS, _BPF_IND, _BPF_MSH = 0x20, 0x40, 0xA0
_BPF_K = 0x00
_BPF_JEQ_K = 0x05 | 0x10 | 0x00        # BPF_JMP | BPF_JEQ | BPF_K
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20     # BPF_LD | BPF_W | BPF_ABS
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL = 0
_SKF_AD_PKTTYPE = 4
_PACKET_OUTGOING = 4

_INSN = struct.Struct("HBBI")
_TIMESPEC = struct.Struct("@qq")
_AUXDATA = struct.Struct("@IIIHHHH")
_SLL = struct.Struct("!HHH8sH")
_VLAN = struct.Struct("!HH")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)


def linktype_for_arphrd(arphrd):
    """pcap LINKTYPE of the frames an AF_PACKET socket gives for a device of this ARPHRD type."""
    if arphrd in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return LINKTYPE_ETHERNET  # loopback frames carry a zeroed Ethernet header
    if arphrd in (ARPHRD_NONE, ARPHRD_PPP):
        return LINKTYPE_RAW  # no link header at all: the frame starts with the IP header
    return LINKTYPE_LINUX_SLL  # read cooked (SOCK_DGRAM) and given a synthesized SLL header


def build_filter(bpf_filter="", exclude=()):
    """bpf_filter ANDed with `not (udp and dst host H and dst port P)` per exclude (IP literals)."""
    parts = ["(%s)" % bpf_filter.strip()] if bpf_filter and bpf_filter.strip() else []
    for host, port in exclude:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
        port = int(port)
        if not 0 < port < 65536:
            raise ValueError("port %r out of range" % port)
        parts.append("not (udp and dst host %s and dst port %d)" % (addr, port))
    return " and ".join(parts)


def cook_program(insns):
    """Rewrite a program compiled for LINKTYPE_LINUX_SLL to run on cooked packets; None if impossible.

    The kernel runs the filter of a SOCK_DGRAM socket on the packet from its network header,
    where no SLL header exists: like libpcap, shift offsets past the header down by its length
    and map the header's packet-type and protocol fields to the kernel's ancillary loads.
    """
    out = []
    for code, jt, jf, k in insns:
        if code & 0x07 in (_BPF_LD, _BPF_LDX) and code & 0xE0 in (_BPF_ABS, _BPF_IND, _BPF_MSH):
            if k >= SLL_HDR_LEN:
                k -= SLL_HDR_LEN
            elif k == 0:
                k = (_SKF_AD_OFF + _SKF_AD_PKTTYPE) & 0xFFFFFFFF
            elif k == 14:
                k = (_SKF_AD_OFF + _SKF_AD_PROTOCOL) & 0xFFFFFFFF
            else:
                return None
        out.append((code, jt, jf, k))
    return out


def drop_outgoing(insns):
    """Prefix a program with `if pkttype == OUTGOING: drop` (relative jumps keep the rest valid)."""
    return [(_BPF_LD_W_ABS, 0, 0, (_SKF_AD_OFF + _SKF_AD_PKTTYPE) & 0xFFFFFFFF),
            (_BPF_JEQ_K, 0, 1, _PACKET_OUTGOING),
            (_BPF_RET | _BPF_K, 0, 0, 0)] + list(insns)


def compile_bpf(expression, linktype, snaplen, name=None):
    """Compile a pcap filter expression to (code, jt, jf, k) tuples with scapy's libpcap binding.

    CaptureError names the filter as `name` (default: the expression) when it does not compile.
    """
    name = expression if name is None else name
    if not expression:
        return [(_BPF_RET | _BPF_K, 0, 0, snaplen)]
    try:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise CaptureError("BPF filters need scapy: %s" % exc) from exc
    try:
        prog = compile_filter(expression, linktype=linktype)
    except ImportError as exc:
        raise CaptureError("BPF filter %r: compiling filters needs libpcap (Debian package "
                           "libpcap0.8): %s" % (name, exc)) from exc
    except (Scapy_Exception, OSError) as exc:
        raise CaptureError("bad BPF filter %r: %s" % (name, exc)) from exc
    try:
        insns = [(i.code, i.jt, i.jf, i.k & 0xFFFFFFFF) for i in prog.bf_insns[:prog.bf_len]]
    finally:
        free_filter(prog)
    # libpcap returns its own snaplen (scapy passes 65535) on accept: raise it to ours so big
    # GSO/GRO frames on lo or veth are not cut in the kernel.
    return [(c, jt, jf, snaplen if c == _BPF_RET | _BPF_K and k else k) for c, jt, jf, k in insns]


def interface_linktype(ifname):
    """(ifindex, ARPHRD type, pcap LINKTYPE) of a local interface; CaptureError when it has none."""
    try:
        ifindex = socket.if_nametoindex(ifname)
    except (OSError, ValueError, TypeError):
        raise CaptureError("no such network interface: %r" % (ifname,)) from None
    try:
        arphrd = _arphrd(ifname, ifindex)
    except OSError as exc:
        raise CaptureError("cannot read the link type of %r: %s" % (ifname, exc)) from exc
    return ifindex, arphrd, linktype_for_arphrd(arphrd)


def filter_program(expression, ifname, arphrd, snaplen, name=None):
    """The program attached for `expression` on a device of type arphrd; CaptureError if impossible.

    `name` is how a filter that does not compile is quoted (default: the expression).
    """
    linktype = linktype_for_arphrd(arphrd)
    insns = compile_bpf(expression, linktype, snaplen, name=name)
    if linktype == LINKTYPE_LINUX_SLL:
        fixed = cook_program(insns)
        if fixed is None:
            raise CaptureError("BPF filter %r reads link-layer fields that %r (ARPHRD %d) does "
                               "not have" % (expression, ifname, arphrd))
        insns = fixed
    if arphrd == ARPHRD_LOOPBACK:
        # lo hands every frame to packet sockets twice (OUTGOING, then HOST): keep one.
        insns = drop_outgoing(insns)
    return insns


def check_interfaces(cfg, live=True):
    """ConfigError naming interfaces[i] or interfaces[i].bpf_filter when capture could not start.

    live: each interface must exist here and its filter compile for its link type. Otherwise
    (replay) the interfaces are not used and may belong to another host, but a filter must still
    compile (for Ethernet), since a syntax error is wrong everywhere.
    """
    from myason.errors import ConfigError
    for i, iface in enumerate(cfg.interfaces):
        key = "interfaces[%d]" % i
        arphrd = ARPHRD_ETHER
        if live:
            try:
                arphrd = interface_linktype(iface.name)[1]
            except CaptureError as exc:
                raise ConfigError(key, "%s (`myason ifconfig` lists them)" % exc) from None
        if iface.bpf_filter.strip():
            try:
                filter_program(iface.bpf_filter, iface.name, arphrd, cfg.snaplen)
            except CaptureError as exc:
                raise ConfigError(key + ".bpf_filter", str(exc)) from None


def _attach(sock, insns):
    code = ctypes.create_string_buffer(b"".join(_INSN.pack(*i) for i in insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("@HP", len(insns), ctypes.addressof(code)))


def _arphrd(ifname, ifindex):
    try:
        base = "/sys/class/net/%s/" % ifname
        with open(base + "ifindex") as f:
            same = int(f.read()) == ifindex
        # /sys shows the namespace it was mounted in, which need not be ours (setns, containers).
        if same:
            with open(base + "type") as f:
                return int(f.read())
    except (OSError, ValueError):
        pass
    # The device type is also the family of its hardware address, asked in our own namespace.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()))
    return struct.unpack_from("H", ifr, 16)[0]


class LiveSource:
    """Raw frames from one interface via AF_PACKET, with a BPF filter, in batches.

    Both directions are captured. Every frame is delivered once: on a veth (and any real NIC)
    a frame shows up once, as PACKET_OUTGOING when sent or as HOST/BROADCAST/... when received;
    on loopback devices each frame is seen twice, once OUTGOING on transmit and once HOST when
    it is looped back in (checked on Linux 6.x), so there the kernel filter drops the OUTGOING
    copy, as libpcap does. VLAN tags the kernel moved out of the frame (always on receive) are
    put back from PACKET_AUXDATA; a `vlan` filter keyword cannot see them, but port/host
    filters match tagged frames too.
    """

    def __init__(self, ifname, bpf_filter="", promiscuous=True, snaplen=262144, exclude=(),
                 batch_size=512, poll_timeout=0.2):
        self.ifname = ifname
        self.bpf_filter = bpf_filter or ""
        self.promiscuous = promiscuous
        self.snaplen = max(1, int(snaplen))
        self.exclude = tuple(exclude)
        self.batch_size = max(1, int(batch_size))
        self.poll_timeout = poll_timeout
        # Known once open() has run.
        self.linktype = 0
        self.ifindex = 0
        self.arphrd = 0
        self.filter_expression = ""
        # Userland counters: frames/bytes delivered and the reads that failed without ending capture.
        self.stats = {"frames": 0, "bytes": 0, "truncated": 0, "eintr": 0, "enetdown": 0, "read_errors": 0}
        self._kernel = {"kernel_packets": 0, "kernel_drops": 0}
        self._sock = None
        self._poll = None
        self._buf = None
        self._down = False

    def open(self):
        """Open the socket, attach the filter and start capturing; CaptureError says why it cannot."""
        if self._sock is not None:
            return
        self.open_with(*self.program())

    def program(self):
        """(filter expression, BPF instructions) this source attaches; CaptureError if impossible.

        Looks the interface up (ifindex, link type) and resolves the exclusions' host names.
        """
        self.ifindex, self.arphrd, self.linktype = interface_linktype(self.ifname)
        expression = build_filter(self.bpf_filter, self._resolved_exclude())
        # Name the user's filter; scapy's message quotes the whole expression with the exclusions.
        return expression, filter_program(expression, self.ifname, self.arphrd, self.snaplen,
                                          name=self.bpf_filter or expression)

    def open_with(self, expression, insns):
        """open() with a program() already made (sources sharing one interface share it)."""
        if self._sock is not None:
            return
        if not self.ifindex:
            self.ifindex, self.arphrd, self.linktype = interface_linktype(self.ifname)
        cooked = self.linktype == LINKTYPE_LINUX_SLL
        self.filter_expression = expression
        try:
            # Protocol 0 receives nothing until bind(), so no frame slips in before the filter.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if cooked else socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise CaptureError("capturing on %r needs root or CAP_NET_RAW (%s)" % (self.ifname, exc)) from exc
        except OSError as exc:
            raise CaptureError("cannot open a packet socket for %r: %s" % (self.ifname, exc)) from exc
        try:
            self._setup(sock, insns)
        except OSError as exc:
            sock.close()
            raise self._socket_error(exc) from exc
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._opened()

    def _opened(self):
        """The socket is set up: the buffer frames are read into."""
        self._buf = bytearray(self.snaplen + (SLL_HDR_LEN if self.linktype == LINKTYPE_LINUX_SLL else 0))

    def _socket_error(self, exc):
        """CaptureError for an OSError of the socket's set-up."""
        if exc.errno == errno.ENODEV:
            return CaptureError("no such network interface: %r" % (self.ifname,))
        return CaptureError("cannot capture on %r: %s" % (self.ifname, exc))

    def _resolved_exclude(self):
        out = []
        for entry in self.exclude:
            try:
                host, port = entry
                port = int(port)
                hostname = str(host).split("%", 1)[0]
                try:
                    ipaddress.ip_address(hostname)
                    out.append((hostname, port))
                    continue
                except ValueError:
                    pass
                infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_DGRAM)
                out.extend(sorted({(info[4][0].split("%", 1)[0], port) for info in infos}))
            except (OSError, ValueError, TypeError) as exc:
                raise CaptureError("exclude entry %r is not a usable (host, port): %s"
                                   % (entry, exc)) from exc
        try:
            build_filter("", out)
        except ValueError as exc:
            raise CaptureError("exclude %r: %s" % (self.exclude, exc)) from exc
        return out

    def _setup(self, sock, insns):
        _attach(sock, insns)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except OSError:
            # Without CAP_NET_ADMIN (the unit does not grant it; an agent that had it dropped it
            # after start, myason.agent.caps): the kernel caps the buffer at net.core.rmem_max,
            # which the install raises (conf/60-myason.conf).
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            except OSError:
                pass
            # The kernel reports twice what it grants for data (its bookkeeping half).
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            if got < RCVBUF_BYTES:
                log.warning("capture buffer of %s: %d bytes, not %d: bursts beyond it are lost (kernel_drops); "
                            "raise net.core.rmem_max (conf/60-myason.conf: sysctl -w net.core.rmem_max=%d)",
                            self.ifname, got, RCVBUF_BYTES, RCVBUF_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self._bind(sock)
        sock.setblocking(False)

    def _bind(self, sock):
        """Start receiving from the interface (and make it promiscuous if asked)."""
        sock.bind((self.ifname, ETH_P_ALL))
        if self.promiscuous:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                struct.pack("@iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b""))
            except OSError:
                pass  # some virtual devices refuse it; capture still works for what reaches them

    def read_batch(self, stop_event=None):
        """Frames available now (up to batch_size) as (epoch seconds, bytes), waiting at most poll_timeout."""
        sock = self._sock
        if sock is None:
            raise CaptureError("capture on %r is not open" % (self.ifname,))
        view = memoryview(self._buf)
        cooked = self.linktype == LINKTYPE_LINUX_SLL
        ether = self.linktype == LINKTYPE_ETHERNET
        bufs = [view[SLL_HDR_LEN:] if cooked else view]
        recv = sock.recvmsg_into
        out = []
        append = out.append
        limit = self.batch_size
        nbytes = truncated = 0
        waited = stop_event is not None and stop_event.is_set()  # stopping: take what is there, no wait
        while len(out) < limit:
            try:
                n, ancdata, flags, addr = recv(bufs, _ANCBUF, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if out or waited:
                    break
                waited = True
                if not self._wait():
                    break
                continue
            except InterruptedError:
                self.stats["eintr"] += 1
                break
            except OSError as exc:
                self._read_error(exc)
                break
            ts = aux = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    ts = sec + nsec * 1e-9
                elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                    aux = _AUXDATA.unpack_from(data)
            # Cut by the filter's snaplen (tp_len is the length on the wire) or by our buffer.
            if flags & socket.MSG_TRUNC or (aux is not None and aux[1] > n):
                truncated += 1
            if cooked:
                hw = addr[4][:8]
                _SLL.pack_into(self._buf, 0, addr[2], addr[3], len(hw), hw, addr[1])
                n += SLL_HDR_LEN
            frame = bytes(view[:n])
            if aux is not None and aux[0] & TP_STATUS_VLAN_VALID and (ether or cooked):
                tpid = aux[6] if aux[0] & TP_STATUS_VLAN_TPID_VALID else 0x8100
                # After the MAC addresses, or in place of the SLL protocol field (it moves behind the tag).
                at = 12 if ether else 14
                frame = frame[:at] + _VLAN.pack(tpid, aux[5]) + frame[at:]
            append((ts if ts is not None else time.time(), frame))
            nbytes += len(frame)
        if out:
            self._down = False
            stats = self.stats
            stats["frames"] += len(out)
            stats["bytes"] += nbytes
            stats["truncated"] += truncated
        return out

    def _wait(self):
        try:
            events = self._poll.poll(self.poll_timeout * 1000)
        except InterruptedError:  # pragma: no cover - Python retries poll() on EINTR itself
            self.stats["eintr"] += 1
            return False
        for _fd, ev in events:
            if ev & select.POLLNVAL:
                raise CaptureError("capture socket on %r is closed" % (self.ifname,))
        if not events and self._down:
            self._check_alive(None)
        return bool(events)

    def _check_alive(self, cause):
        try:
            alive = socket.if_nametoindex(self.ifname) == self.ifindex
        except OSError:
            alive = False
        if not alive:
            raise CaptureError("interface %r (index %d) is gone" % (self.ifname, self.ifindex)) from cause

    def _read_error(self, exc):
        if exc.errno == errno.ENETDOWN:
            # The kernel says so once when the device goes down; capture resumes when it is up
            # again, but not if the device is deleted: that socket would never see a frame again.
            # Deletion downs the device before it unlists the name, so keep checking while
            # nothing arrives.
            self.stats["enetdown"] += 1
            self._down = True
            self._check_alive(exc)
        elif exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise CaptureError("capture socket on %r is unusable: %s" % (self.ifname, exc)) from exc
        else:
            self.stats["read_errors"] += 1

    def kernel_stats(self):
        """{'kernel_packets', 'kernel_drops'} since open: frames past the filter (drops included), drops."""
        if self._sock is not None:
            try:
                packets, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            except OSError:
                packets = drops = 0
            # Each read resets the kernel's counters, so keep the running totals here.
            self._kernel["kernel_packets"] += packets
            self._kernel["kernel_drops"] += drops
        return dict(self._kernel)

    def close(self):
        """Stop capturing and release the socket (kernel_stats keeps its totals); safe to call twice."""
        if self._sock is None:
            return
        self.kernel_stats()
        self._sock.close()
        self._sock = None
        self._poll = None
        self._buf = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
