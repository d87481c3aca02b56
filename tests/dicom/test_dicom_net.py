"""The pynetdicom subclasses (connectors/dicom/net.py) against the pinned release: the
internals they override are still there, and they still behave (events, inline C-STORE,
fast shutdown, large and many-PDU messages, no polling)."""
from __future__ import annotations

import threading
import time

import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import AssociationSocket, RequestHandler

from connectors.dicom import net
from tests.dicom.dicom_peers import free_port


def test_pinned_version_and_overridden_internals_exist():
    net.check_version()
    assert pynetdicom.__version__ == net.PYNETDICOM_VERSION
    for cls, names in ((DULServiceProvider, ("_read_pdu_data", "_process_recv_primitive",
                                             "_is_transport_event", "_decode_pdu",
                                             "run_reactor", "stop_dul", "kill_dul")),
                       (Association, ("_run_reactor", "_serve_request", "_c_store_scp",
                                      "_abort_blocking", "kill")),
                       (RequestHandler, ("_create_association",)),
                       (AssociationSocket, ("recv", "ready", "_is_connected"))):
        for name in names:
            assert hasattr(cls, name) or name in cls.__init__.__code__.co_names, (cls, name)
    d = DULServiceProvider.__init__.__code__.co_names
    assert "_run_loop_delay" in d and "to_provider_queue" in d and "event_queue" in d


def test_check_version_refuses_another_release(monkeypatch):
    monkeypatch.setattr(pynetdicom, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="written for pynetdicom"):
        net.check_version()


@pytest.fixture
def scp():
    """A FastServer that stores C-STOREs in memory, recording the serving thread."""
    seen = []
    order = []

    def on_store(event):
        seen.append((threading.get_ident(), event.assoc.dul.ident, event.dataset_path.read_bytes()))
        order.append("handler")
        return 0x0000

    def on_sent(event):
        if type(event.message).__name__ == "C_STORE_RSP":
            order.append("response-sent")

    from pynetdicom import _config

    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = net.FastAE(ae_title="FASTSCP")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)
    server = net.serve(ae, ("127.0.0.1", free_port()),
                       evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_DIMSE_SENT, on_sent)])
    server.seen, server.order = seen, order
    yield server
    server.shutdown()


@pytest.mark.parametrize("client", ["stock", "fast"])
@pytest.mark.parametrize("max_pdu", [0, 4096])
def test_store_roundtrip_served_inline(scp, client, max_pdu):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ae = (AE if client == "stock" else net.FastAE)(ae_title="SCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.server_address[1], ae_title="FASTSCP", max_pdu=max_pdu)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for _ in range(3):
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert assoc.is_released
    assert len(scp.seen) == 3
    for handler_thread, dul_thread, body in scp.seen:
        assert handler_thread == dul_thread  # served inline in the DUL thread
        assert body[128:132] == b"DICM" and len(body) > 39000
    assert scp.order[:2] == ["handler", "response-sent"]


def test_store_before_the_association_is_established_is_queued_not_served_inline():
    """A PACS may send its first C-STORE the instant our A-ASSOCIATE-AC leaves, before our
    association thread has marked the association established. Served inline then,
    pynetdicom's storage SCP would drop its response (seen as a hung C-MOVE): such a
    request goes to the queue that the association thread serves once established."""
    from pynetdicom.dimse_primitives import C_STORE

    assoc = net.FastAssociation(net.FastAE(ae_title="X"), "acceptor")
    assoc.dul._thread_id = threading.get_ident()  # as if put by its DUL thread
    request = C_STORE()
    request.MessageID = 1
    assert not assoc.is_established
    assoc.dimse.msg_queue.put((1, request))
    assert assoc.dimse.msg_queue.get_nowait() == (1, request)


def test_store_sent_the_instant_the_association_is_accepted_is_answered(scp):
    """The same from outside: replay a recorded association request, then the C-STORE
    the moment the A-ASSOCIATE-AC arrives, as a fast peer would; each is answered."""
    import socket

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    sent = []
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", scp.server_address[1], ae_title="FASTSCP",
                         evt_handlers=[(evt.EVT_DATA_SENT, lambda e: sent.append(e.data))])
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    request = next(d for d in sent if d[0] == 0x01)  # A-ASSOCIATE-RQ
    store = b"".join(d for d in sent if d[0] == 0x04)  # the C-STORE's P-DATA-TF PDUs

    def read_pdu(s) -> int:
        head = s.recv(6, socket.MSG_WAITALL)
        assert len(head) == 6, "connection closed without an answer"
        s.recv(int.from_bytes(head[2:], "big"), socket.MSG_WAITALL)
        return head[0]

    for _ in range(20):
        with socket.create_connection(("127.0.0.1", scp.server_address[1]), timeout=5) as s:
            s.sendall(request)
            assert read_pdu(s) == 0x02  # A-ASSOCIATE-AC ...
            s.sendall(store)  # ... and the C-STORE at once, as Orthanc does
            assert read_pdu(s) == 0x04  # the C-STORE-RSP (a timeout here: dropped)
            s.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT


def test_many_associations_and_abort_do_not_stop_the_server(scp):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ae = net.FastAE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage)
    assocs = [ae.associate("127.0.0.1", scp.server_address[1], ae_title="FASTSCP")
              for _ in range(4)]
    assocs[0].abort()
    results = []
    threads = [threading.Thread(target=lambda a=a: results.append(a.send_c_store(ds).Status))
               for a in assocs[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for a in assocs[1:]:
        a.release()
    assert results == [0, 0, 0]


def test_server_shuts_down_fast():
    ae = net.FastAE(ae_title="X")
    ae.add_supported_context(Verification)
    server = net.serve(ae, ("127.0.0.1", free_port()))
    time.sleep(0.05)
    start = time.monotonic()
    server.shutdown()
    assert time.monotonic() - start < 0.25


def test_requestor_reactor_does_not_poll():
    """An idle FastAssociation's threads sleep in select()/Event.wait, not 1 ms loops."""
    ae = net.FastAE(ae_title="X")
    ae.add_supported_context(Verification)
    server = net.serve(ae, ("127.0.0.1", free_port()))
    try:
        scu = net.FastAE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="X")
        cpu0 = time.process_time()
        time.sleep(0.5)
        used = time.process_time() - cpu0
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert used < 0.05  # stock pynetdicom spends ~10-20% of a core polling here
    finally:
        server.shutdown()
