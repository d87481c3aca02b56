"""The delivery tests' fixtures (delivery_fixtures.py), and the receive-mode app's from
tests/test_receive.py, registered here for every module of this folder."""
from tests.delivery.delivery_fixtures import (dstack, plain_peer, plain_proxy, proxy,  # noqa: F401
                                              sekmet, two_sources)
from tests.test_receive import peer, receiver, sender_keys  # noqa: F401
