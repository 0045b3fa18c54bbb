"""The collector's keystore: which agents may send, with which Fernet keys, from which networks.

File format, one agent per line::

    # AGENT_ID  KEY[,KEY...]                                   [CIDR[,CIDR...]]
    edge-01     q3C1...new...=,Zx9a...old...=                  192.0.2.0/24,2001:db8::/32
    lab-7       bW9y...=

- `AGENT_ID` is the id the agent puts in its datagram header: 1..64 characters of
  ``[A-Za-z0-9._:-]``. Each agent appears on one line only.
- `KEY` is a Fernet key (44 characters of url-safe base64, as `myason keygen` prints). Several
  keys are separated by commas, without spaces. The FIRST key is the one the agent encrypts
  with; every key listed decrypts (MultiFernet), which is how a key is rotated without loss.
- The optional third column lists the networks the agent may send from (IPv4 and IPv6 CIDRs
  or single addresses, separated by commas). Without it the agent may send from anywhere. An
  IPv4-mapped IPv6 source (``::ffff:192.0.2.1``, from a dual-stack socket) matches the IPv4
  networks.
- ``#`` starts a comment (to the end of the line); blank lines are ignored.

The file holds secrets, so it must be a regular file that the group and others cannot read
(``chmod 600``); loading fails with KeyFileError otherwise. Error messages name the file and
the line number but never quote the line, since it may hold key material.
"""
import ipaddress
import os


from myason import keys as _keys
from myason.errors import KeyFileError
from myason.wire import check_agent_id

# Source addresses looked up per datagram; bounded because addresses come from the network.
_CACHE_MAX = 4096
_USAGE = "expected: AGENT_ID KEY[,KEY...] [CIDR[,CIDR...]]"


def format_line(agent_id, keys, networks=()):
    """The keystore line for agent_id with keys (first encrypts) and optional networks."""
    check_agent_id(agent_id)
    texts = [k.decode("ascii") if isinstance(k, bytes) else k for k in keys]
    line = "%s %s" % (agent_id, ",".join(texts))
    if networks:
        line += " " + ",".join(str(n) for n in networks)
    return line


def _parse_keys(column, where):
    out = []
    for text in column.split(","):
        raw = text.encode("ascii", "replace")
        if not _keys._KEY_RE.fullmatch(raw):
            raise KeyFileError("%s: column 2 is not a comma-separated list of Fernet keys "
                               "(44 characters of url-safe base64 each)" % where)
        out.append(raw)
    return out


def _parse_networks(column, where):
    nets = []
    for text in column.split(","):
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            hint = ""
            if _keys._KEY_RE.fullmatch(text.encode("ascii", "replace")):
                hint = " (it looks like a key: separate keys with commas, not spaces)"
            raise KeyFileError("%s: column 3 is not a comma-separated list of networks%s"
                               % (where, hint)) from None
    return nets


def parse_keystore(data, path="<keystore>"):
    """Entries {agent_id: (keys, networks or None)} from keystore text; KeyFileError if malformed."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFileError("%s: not UTF-8 text" % path) from None
    entries, first_line = {}, {}
    for number, line in enumerate(data.split("\n"), 1):
        where = "%s: line %d" % (path, number)
        cols = line.split("#", 1)[0].split()
        if not cols:
            continue
        if len(cols) not in (2, 3):
            raise KeyFileError("%s: %d columns, %s" % (where, len(cols), _USAGE))
        try:
            check_agent_id(cols[0])
        except ValueError:
            # Not echoed: swapped columns would put a key here.
            raise KeyFileError("%s: column 1 is not an agent id (1..64 characters of "
                               "[A-Za-z0-9._:-])" % where) from None
        if cols[0] in entries:
            raise KeyFileError("%s: agent already defined on line %d" % (where, first_line[cols[0]]))
        agent_keys = _parse_keys(cols[1], where)
        nets = _parse_networks(cols[2], where) if len(cols) == 3 else None
        entries[cols[0]] = (agent_keys, nets)
        first_line[cols[0]] = number
    if not entries:
        raise KeyFileError("%s: no agents in keystore (%s)" % (path, _USAGE))
    return entries


class Keystore:
    """Agent id -> MultiFernet (first key encrypts, all decrypt) and allowed source networks."""

    def __init__(self, entries):
        """Build from {agent_id: (keys, networks or None)}, keys as Fernet key bytes or str."""
        self.agents = list(entries)
        self._fernets = {}
        self._networks = {}
        for agent, (agent_keys, nets) in entries.items():
            check_agent_id(agent)
            if not agent_keys:
                raise ValueError("agent %r has no keys" % agent)
            self._fernets[agent] = _keys.FernetKeys(agent_keys)
            self._networks[agent] = (None if nets is None
                                     else tuple(ipaddress.ip_network(n, strict=False) for n in nets))
        self._cache = {}

    @classmethod
    def load(cls, path):
        """Read a keystore file (must be mode 0600 or stricter); KeyFileError on any problem."""
        path = os.fspath(path)
        # keys.read_private owns the regular-file and permission checks (with the chmod hint).
        return cls(parse_keystore(_keys.read_private(path, "keystore"), path))

    def keys_for(self, agent_id):
        """The agent's MultiFernet, or None for an agent not in the keystore."""
        return self._fernets.get(agent_id)

    def allowed(self, agent_id, ip):
        """True if agent_id is known and may send from address ip (text form)."""
        nets = self._networks.get(agent_id, False)
        if nets is None:
            return True
        if nets is False:
            return False
        key = (agent_id, ip)
        hit = self._cache.get(key)
        if hit is None:
            hit = _in_networks(ip, nets)
            if len(self._cache) >= _CACHE_MAX:
                # Crude but bounded: spoofed sources must not grow memory without limit.
                self._cache.clear()
            self._cache[key] = hit
        return hit


def _in_networks(ip, nets):
    try:
        addr = ipaddress.ip_address(ip)
    except (ValueError, TypeError):
        return False
    candidates = [addr]
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        candidates.append(mapped)
    # Membership across versions is simply False, so mixed lists need no sorting out.
    return any(a in n for a in candidates for n in nets)
