"""A batch enters every writer's spool at once, or none of them: the processors' commit step.

A processor accepts a batch in three steps:

1. stage: the batch, in each writer's format, is written to `tmp/NAME` of that writer's spool
   (fsynced when `fsync` is on); a reader never looks in `tmp/`;
2. commit: the processor's sequence state (each agent's top sequence number, which says what
   has been received) is written to `sequences-I.json` beside the spools, naming NAME, by one
   atomic rename. This rename is the moment the batch is accepted;
3. publish: `tmp/NAME` is renamed into `incoming/` of each spool, where the writers claim it.

A crash before the commit leaves only files in `tmp/`, deleted at the next start, and the
saved state does not count the batch's datagrams: they show as sequence gaps, and no store
holds them. A crash after the commit leaves the state counting them and their files in `tmp/`
or `incoming/`; `recover()` at the next start (or when a processor process is restarted)
finishes step 3. So after any crash every store gets the same batches, and the gaps reported
are exactly the datagrams that no store holds.

The state file carries the batch name so that recovery knows which staged files were committed;
a processor commits one batch at a time, so only the last one can be half published.
"""
import logging
import os
import re

import orjson

log = logging.getLogger("myason.collector")

STATE_VERSION = 2
_STATE_RE = re.compile(r"^sequences-(\d+)\.json$")


def sequence_file(spool_dir, index):
    """Where processor `index` keeps its agents' sequence state and its last commit."""
    return os.path.join(spool_dir, "sequences-%d.json" % index)


def read_state(path):
    """(agents' state, last committed batch name or None) of one state file; ({}, None) if absent.

    Reads the format of earlier collectors too (a plain {agent: state} mapping, no batch name).
    Raises ValueError or OSError for a damaged or unreadable file.
    """
    try:
        with open(path, "rb") as fh:
            state = orjson.loads(fh.read())
    except FileNotFoundError:
        return {}, None
    if not isinstance(state, dict):
        raise ValueError("not an object")
    if state.get("v") == STATE_VERSION and isinstance(state.get("agents"), dict):
        batch = state.get("batch")
        return state["agents"], batch if isinstance(batch, str) else None
    return state, None


def load_sequences(spool_dir):
    """Merged per-agent sequence state of every processor of the last run ({} if none).

    Merged because the number of processors may have changed, which moves agents between them;
    for an agent found in several files the newest (highest sent time) wins.
    """
    merged = {}
    try:
        names = sorted(n for n in os.listdir(spool_dir) if _STATE_RE.match(n))
    except FileNotFoundError:
        return merged
    for name in names:
        try:
            agents, _ = read_state(os.path.join(spool_dir, name))
        except (OSError, ValueError) as exc:
            log.warning("ignoring sequence state %s: %s", name, exc)
            continue
        for agent, st in agents.items():
            try:
                sent = float(st["max_sent"])
            except (KeyError, TypeError, ValueError):
                continue
            if agent not in merged or sent > merged[agent]["max_sent"]:
                merged[agent] = dict(st, max_sent=sent)
    return merged


class BatchJournal:
    """One processor's commit of batches into a set of spools, with its sequence state."""

    def __init__(self, spools, state_path, fsync=True):
        self.spools = list(spools)
        self.state_path = state_path
        self.fsync = fsync
        # Staged but not committed: a retry after an error starts from a clean tmp/.
        self._staged = []
        # A state-only commit keeps naming the last batch: it may still be half published.
        self._last = _read_quietly(state_path)[1] if state_path else None

    def commit(self, name, datas, agents):
        """Accept one batch: datas[i] goes to spools[i] (name None: only the state is saved).

        Raises OSError (disk full, I/O error) with nothing accepted and nothing left behind:
        the caller may retry the same batch later. Once this returns, the batch is accepted.
        """
        if name is not None:
            try:
                for spool, data in zip(self.spools, datas):
                    spool.stage(name, data)
                    self._staged.append(spool)
            except OSError:
                self._discard(name)
                raise
        if self.state_path:
            try:
                self._write_state(name, agents)
            except OSError:
                if name is not None:
                    self._discard(name)
                raise
        self._staged = []
        if name is not None:
            for spool in self.spools:
                spool.publish(name)

    def _discard(self, name):
        for spool in self._staged:
            spool.discard(name)
        self._staged = []

    def _write_state(self, name, agents):
        body = {"v": STATE_VERSION, "agents": agents}
        if name is not None:
            self._last = name
        if self._last is not None:
            body["batch"] = self._last
        tmp = self.state_path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(orjson.dumps(body))
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        if self.fsync:
            _fsync_dir(os.path.dirname(self.state_path) or ".")


def _read_quietly(path):
    try:
        return read_state(path)
    except (OSError, ValueError):
        return {}, None


def _fsync_dir(path):
    # The rename that commits is durable only once its directory is on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(spool_dir, spools, index=None):
    """Finish publishing committed batches (all processors, or only `index`); returns how many.

    Run at start before the writers claim anything, and before a processor process that died is
    started again. Files of batches that were staged but never committed stay in tmp/ for the
    spools' own recover() (at start) or discard_staged_by() (for one dead process) to delete.
    """
    done = 0
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return 0
    for fname in names:
        m = _STATE_RE.match(fname)
        if not m or (index is not None and int(m.group(1)) != index):
            continue
        _, batch = _read_quietly(os.path.join(spool_dir, fname))
        if batch is None:
            continue
        published = [spool.publish_staged(batch) for spool in spools]
        if any(published):
            done += 1
            log.info("batch %s was accepted before a crash: published to every spool now", batch)
    return done
