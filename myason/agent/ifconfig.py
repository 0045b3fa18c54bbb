"""Network interface listing: index, state, MAC and addresses of every interface on this host."""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

try:
    import netifaces
except ImportError:  # netifaces is unmaintained; without it we still list names, state and MAC
    netifaces = None

SYS_CLASS_NET = "/sys/class/net"

# operstate values (RFC 2863) folded into the three states the table shows.
_DOWN_STATES = frozenset(("down", "lowerlayerdown", "notpresent"))


@dataclass
class InterfaceInfo:
    """One network interface as seen by the agent."""

    name: str
    ifindex: int = 0
    state: str = "unknown"
    mac: str = ""
    ipv4: list[str] = field(default_factory=list)
    ipv6: list[str] = field(default_factory=list)


def resolve_ifindex(name) -> int:
    """The kernel's index for interface `name`, or 0 when there is no such interface."""
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError, TypeError):
        return 0


def read_operstate(name, sys_root=SYS_CLASS_NET) -> str:
    """'up', 'down' or 'unknown' from <sys_root>/<name>/operstate."""
    try:
        with open(os.path.join(sys_root, name, "operstate"), encoding="ascii") as fh:
            value = fh.read().strip().lower()
    except (OSError, ValueError):
        return "unknown"
    if value == "up":
        return "up"
    return "down" if value in _DOWN_STATES else "unknown"


def _read_mac(name, sys_root):
    try:
        with open(os.path.join(sys_root, name, "address"), encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, ValueError):
        return ""


def prefix_length(netmask, version) -> int | None:
    """Prefix length of a netmask ('255.0.0.0', 'ffff::', 'ffff:ffff::/64'); None if unreadable."""
    if not netmask:
        return None
    if "/" in netmask:
        # netifaces gives IPv6 masks as 'ffff:ffff:ffff:ffff::/64'.
        tail = netmask.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else None
    try:
        bits = int(ipaddress.IPv4Address(netmask) if version == 4 else ipaddress.IPv6Address(netmask))
    except ValueError:
        return None
    width = 32 if version == 4 else 128
    prefix = bin(bits).count("1")
    # Only contiguous masks have a prefix length.
    return prefix if bits == ((1 << width) - 1) ^ ((1 << (width - prefix)) - 1) else None


def format_address(entry, version) -> str | None:
    """'addr/prefix' from one netifaces address entry (scope suffix '%eth0' dropped); None if invalid."""
    addr = str(entry.get("addr") or "").split("%", 1)[0]
    if not addr:
        return None
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:
        return None
    prefix = prefix_length(entry.get("netmask"), version)
    return addr if prefix is None else "%s/%d" % (addr, prefix)


def _addresses(entries, version):
    out = []
    for entry in entries or ():
        text = format_address(entry, version)
        if text is not None and text not in out:
            out.append(text)
    return out


def _interface_names():
    if netifaces is not None:
        return list(netifaces.interfaces())
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def list_interfaces(sys_root=SYS_CLASS_NET) -> list[InterfaceInfo]:
    """Every interface on this host, ordered by ifindex."""
    infos = []
    for name in _interface_names():
        info = InterfaceInfo(name=name, ifindex=resolve_ifindex(name), state=read_operstate(name, sys_root))
        addrs = {}
        if netifaces is not None:
            try:
                addrs = netifaces.ifaddresses(name)
            except ValueError:  # the interface vanished between listing and asking
                addrs = {}
        links = addrs.get(getattr(netifaces, "AF_LINK", -1)) or []
        info.mac = links[0].get("addr", "") if links else _read_mac(name, sys_root)
        info.ipv4 = _addresses(addrs.get(socket.AF_INET), 4)
        info.ipv6 = _addresses(addrs.get(socket.AF_INET6), 6)
        infos.append(info)
    infos.sort(key=lambda i: (i.ifindex, i.name))
    return infos


_COLUMNS = ("INDEX", "NAME", "STATE", "MAC", "IPV4", "IPV6")


def format_table(infos) -> str:
    """Aligned text table of interfaces with a header row; several addresses are comma-separated."""
    rows = [_COLUMNS]
    for info in infos:
        rows.append((
            str(info.ifindex), info.name, info.state, info.mac or "-",
            ", ".join(info.ipv4) or "-", ", ".join(info.ipv6) or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"
