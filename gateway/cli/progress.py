"""The live progress display of a transfer, for `transfer status --follow` and the demo."""
from __future__ import annotations

import sys
import time

import click


def follow_transfer(fetch, timeout: float | None) -> dict:
    """Poll until the transfer ends, drawing a progress bar on stderr."""
    from gateway.engine.transfers import PARKED, TERMINAL

    deadline = time.monotonic() + timeout if timeout else None
    view = fetch()
    with click.progressbar(length=100, label="transfer", file=sys.stderr,
                           show_percent=True, show_eta=False,
                           item_show_func=lambda _: view["state"]) as bar:
        while True:
            bar.update(view["percent"] - bar.pos)
            if view["state"] in TERMINAL | PARKED or (deadline and time.monotonic() > deadline):
                return view
            time.sleep(0.3)
            view = fetch()
