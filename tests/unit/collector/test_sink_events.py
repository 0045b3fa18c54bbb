"""WriterThread and batch format v2: events go only to writers that store them."""
import threading

from myason.collector.sink import WriterThread
from myason.collector.spool import Spool
from myason.store.base import Writer, encode_batch


class Recorder(Writer):
    name = "rec"

    def __init__(self, events):
        super().__init__()
        self.stores_events = events
        self.calls = []

    def write(self, batch_id, rows, **kw):
        self.calls.append((rows, kw))


def drain(writer, batches, tmp_path):
    spool = Spool(str(tmp_path / writer.name), fsync=False)
    for b in batches:
        spool.put(b)
    stop = threading.Event()
    t = WriterThread(writer, spool, stop, poll=0.01)
    t.start()
    stop.set()
    t.join(10)
    assert not t.is_alive() and spool.depth()[0] == 0
    return t


def test_events_reach_only_writers_that_store_them(tmp_path):
    batches = [encode_batch([[1]]), encode_batch([[2]], [{"ID": "a"}]), encode_batch([], [{"ID": "b"}])]
    plain = Recorder(False)
    t = drain(plain, batches, tmp_path / "p")
    assert plain.calls == [([[1]], {}), ([[2]], {})]      # the event-only batch is acknowledged
    assert t.events == 0 and t.batches == 3
    full = Recorder(True)
    t = drain(full, batches, tmp_path / "f")
    assert full.calls == [([[1]], {}), ([[2]], {"events": [{"ID": "a"}]}), ([], {"events": [{"ID": "b"}]})]
    assert t.events == 2
