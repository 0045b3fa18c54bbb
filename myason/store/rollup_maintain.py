"""Rollup maintenance: finalise the 1m top-N lists, rebuild dirty minutes, sum the coarse lists, retention.

The bucket math, options and constants are myason.store.rollup's; the SQL each step runs is the
backend's (myason.store.rollup_sql). How the steps keep a writer from ever waiting on them:
docs/rollups.md.
"""
from __future__ import annotations

import logging
import time

from myason.store.rollup import (COARSE, DIRTY_CHUNK, DIRTY_MINUTES, HEALTH_KEEP, RESOLUTIONS, SETTLE, enclosing,
                                 horizon, new_summary, ranges)
from myason.store.events import delete_events_before
from myason.store.rollup_sql import backend

log = logging.getLogger("myason.store.rollup")


def maintain(target, now=None, top=None, retention=None, wait=True, chunk=DIRTY_CHUNK, deadline=None) -> dict:
    """Bring the rollups up to date, or as far as `deadline` allows; returns a summary.

    In order: the top-N candidates of every closed minute (what stored batches added, see
    myason.store.rollup_batch) are summed into the 1m lists; minutes marked dirty are rebuilt
    from raw flows (migrations, `myason maintain --rebuild`); the closed coarse lists are summed
    from the finer ones. Each step is a short transaction of its own (one minute, or one chunk of
    dirty marks), so a writer waits for none of them and a stop between two loses nothing.

    target: an open sqlite3 or psycopg connection (or a SqliteWriter/PostgresWriter, whose
    connection is used). now: Unix time (default: the clock) deciding which buckets are closed
    and the retention horizon. top: keys per top-N list (default: the writer's rollup_top, else
    25). retention: {raw, 1m, ...: seconds} (see check_retention; default: the writer's), used
    only to skip buckets whose raw flows are gone. wait: in PostgreSQL, wait for another
    maintainer instead of returning with summary["busy"]. deadline: time.monotonic() after which
    no new step starts (summary["more"] then says work is left). Idempotent; safe while writers
    commit.
    """
    db = backend(getattr(target, "_conn", target))
    now = time.time() if now is None else float(now)
    top = getattr(target, "rollup_top", 25) if top is None else top
    retention = getattr(target, "retention", {}) if retention is None else retention
    summary = new_summary()
    if not db.lock(wait):
        summary["busy"] = True
        return summary

    steps = [0]

    def late():
        # At least one step per call, however short the deadline.
        steps[0] += 1
        return deadline is not None and steps[0] > 1 and time.monotonic() >= deadline
    try:
        h = horizon(retention, now)
        while not late() and _candidate_step(db, now, h, top, summary):
            pass
        while not late() and _dirty_step(db, h, top, chunk, summary):
            pass
        if not late():
            _pending_step(db, now, h, top, summary)
        summary["lag"] = rollup_lag(db, now)
        summary["more"] = summary["lag"] > 0 and deadline is not None and time.monotonic() >= deadline
        db.set_state("last_maintain", "%.3f" % now, now)
    finally:
        db.unlock()
    return summary


def rollup_lag(db, now) -> float:
    """Seconds the rollups are behind: since the oldest waiting minute could have been finalised.

    Counts candidates of a minute closed more than SETTLE["1m"] ago and minutes marked dirty; 0.0
    when there are none.
    """
    due = []
    b = db.oldest("rollup_cand")
    if b is not None:
        due.append(b + 60 + SETTLE["1m"])
    b = db.oldest("rollup_dirty")
    if b is not None:
        due.append(b + 60)
    return max([0.0] + [now - d for d in due])


def _candidate_step(db, now, h, top, summary):
    """Finalise the oldest minute whose candidates are due; False when none is."""
    b = db.oldest("rollup_cand")
    if b is None or b + 60 + SETTLE["1m"] > now:
        return False
    if b < h:
        # Before the retention horizon the finer lists are gone: a list made of these late
        # candidates alone would replace good coarse lists. Their totals are already counted.
        with db.transaction():
            db.drop_candidates(b, b + 60)
        summary["skipped"] += 1
        log.warning("rollup: candidates of %s are before the retention horizon: dropped",
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(b)))
        return True
    coarse = {res: enclosing([b], res) for res in COARSE}
    db.ensure_partitions([("1m", b)] + [(r, c) for r in COARSE for c in coarse[r]])
    with db.transaction():
        db.finalize(b, b + 60, top)
        for res in COARSE:
            db.add_pending(res, coarse[res])
    summary["tops"]["1m"] += 1
    return True


def _dirty_step(db, h, top, chunk, summary):
    """Rebuild the oldest dirty minutes (at most DIRTY_MINUTES) from raw flows; returns marks consumed."""
    dirty = db.read_dirty(chunk)
    if not dirty:
        return 0
    minutes = sorted({b for _, b in dirty if b >= h})[:DIRTY_MINUTES]
    # Marks of the minutes done now, and those past the horizon; the rest wait for the next step.
    taken = set(minutes)
    ids = [i for i, b in dirty if b < h or b in taken]
    summary["dirty"] += len(ids)
    skipped = sum(1 for _, b in dirty if b < h)
    if skipped:
        log.warning("rollup: %d dirty marks are before the retention horizon (raw flows or 1m rollups"
                    " already gone); their buckets are left as they are", skipped)
    summary["skipped"] += skipped
    coarse = {res: enclosing(minutes, res) for res in COARSE}
    db.ensure_partitions([("1m", m) for m in minutes] + [(r, b) for r in COARSE for b in coarse[r]])
    # One snapshot for the raw flows read and the candidates dropped: the candidates of a batch
    # committed meanwhile stay, and so does its share of the totals (its flows were not read).
    with db.transaction(snapshot=True):
        for lo, hi in ranges(minutes, 60):
            db.recompute_raw(lo, hi, top)
            db.drop_candidates(lo, hi)
        for res in COARSE:
            for lo, hi in ranges(coarse[res], RESOLUTIONS[res]):
                db.recompute_coarse_totals(res, lo, hi)
            db.add_pending(res, coarse[res])
        db.delete_dirty(ids)
    summary["buckets"]["1m"] += len(minutes)
    summary["tops"]["1m"] += len(minutes)
    for res in COARSE:
        summary["buckets"][res] += len(coarse[res])
    return len(ids)


def _pending_step(db, now, h, top, summary):
    pending = db.read_pending()
    due = {res: sorted(b for r, b in pending if r == res and h <= b and b + RESOLUTIONS[res] + SETTLE[res] <= now)
           for res in COARSE}
    stale = [(r, b) for r, b in pending if b < h]
    if not stale and not any(due.values()):
        return
    db.ensure_partitions([(r, b) for r in COARSE for b in due[r]], totals=False)
    with db.transaction():
        for res in COARSE:
            for lo, hi in ranges(due[res], RESOLUTIONS[res]):
                db.recompute_tops(res, lo, hi, top)
            summary["tops"][res] += len(due[res])
        db.delete_pending([(r, b) for r in COARSE for b in due[r]] + stale)


def apply_retention(target, retention, now=None, events=0.0) -> dict:
    """Drop (PostgreSQL partitions) or delete (SQLite rows) rollups older than their retention.

    Also deletes health_samples older than 7 days, and IDEA events detected more than `events`
    seconds ago (the writer's events_retention; 0 keeps them). Raw flows are the writers' own
    retention. Returns a summary with "dropped" (partition names) and "deleted" ({table: rows}).
    """
    db = backend(getattr(target, "_conn", target))
    now = time.time() if now is None else float(now)
    summary = new_summary()
    for res in RESOLUTIONS:
        keep = (retention or {}).get(res)
        if keep:
            db.expire(res, now - keep, summary)
    summary["deleted"]["health_samples"] = db.expire_health(now - HEALTH_KEEP)
    if events:
        summary["deleted"]["events"] = delete_events_before(db.d.kind, db.conn, now - events)
    return summary
