"""The sandbox's fork server (`python -m connectors.fax.zygote SOCKET`, started by sandbox.py).

Starting a fresh interpreter and importing the parsers (PDFium, qpdf, Pillow, zxing-cpp)
cost more CPU than parsing an ordinary fax: three children a fax (analyze, build, the
same-document text), a fifth of a second each. This process imports them once, holds
no secret and no file of anyone's, and forks one child per request: each file is still
parsed in a process of its own, which drops every descriptor but its answer and error
files, starts its own session (the parent kills its group at the wall-clock limit) and
sets the request's rlimits before it opens the file (child.py).

Protocol, one connection a request on a Unix socket in a private folder: the parent
sends the request's JSON with the answer and error files' descriptors (SCM_RIGHTS); the
server answers `pid <n>` once the child runs and `exit <code>` when it has ended
(negative: the signal that ended it, as subprocess reports it). One thread: it forks no
process while another thread could hold a lock. It runs in its parent's process group
(its CPU, and its children's, counts as the parent's) and exits when the parent is gone.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import sys
import traceback

MAX_REQUEST = 1 << 20


def _preload() -> None:
    # what the requests use, imported before any fork: each child starts with them
    import img2pdf  # noqa: F401
    import numpy  # noqa: F401
    import pikepdf  # noqa: F401
    import pypdfium2  # noqa: F401
    import zxingcpp  # noqa: F401
    from PIL import Image, ImageFilter, TiffImagePlugin  # noqa: F401

    from . import child, pages  # noqa: F401

    _warm()


def _warm() -> None:
    """Once, what the parsers set up at their first call (pdfium's page and text helpers,
    zxing, numpy's routines, the PNG encoder): each child inherits it done, where each
    used to pay it itself (0.14 s of a fax's 0.32 s analysis). No file is opened."""
    import io

    import pypdfium2 as pdfium

    from .cover import decode_payloads

    doc = pdfium.PdfDocument.new()
    try:
        page = doc.new_page(612, 792)
        try:
            image = page.render(scale=1, grayscale=True).to_pil().convert("L")
            textpage = page.get_textpage()
            textpage.get_text_bounded()
            textpage.close()
        finally:
            page.close()
    finally:
        doc.close()
    decode_payloads(image)
    image.thumbnail((200, 260))
    image.save(io.BytesIO(), format="PNG")


def _child(conn: socket.socket, listener: socket.socket, data: bytes, fds: list[int]) -> None:
    """In the forked child: nothing of the server's but the code; never returns."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the socket, other requests' files
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stderr = os.fdopen(2, "w", closefd=False)
        request = json.loads(data)
        os.chdir(request["out"])
        from .child import answer

        answer(request)
        code = 0
    except BaseException:  # as an interpreter would: the traceback on stderr, exit 1
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(code)


def _request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The JSON (up to the parent's end of writing) and the two descriptors."""
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 2)
    chunks = [data]
    while data and sum(map(len, chunks)) <= MAX_REQUEST:
        data = conn.recv(MAX_REQUEST)
        chunks.append(data)
    if len(fds) != 2 or not chunks[0] or sum(map(len, chunks)) > MAX_REQUEST:
        for fd in fds:
            os.close(fd)
        raise OSError("a request is its JSON and two descriptors")
    return b"".join(chunks), fds


def serve(path: str) -> None:
    _preload()
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # its folder goes (below)
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes the loop: a child's end is reported at once
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    running: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, wake_r], [], [], 0.5)
        if wake_r in ready:
            os.read(wake_r, 4096)
        if listener in ready:
            conn, _ = listener.accept()
            try:
                data, fds = _request(conn)
                pid = os.fork()
                if pid == 0:
                    _child(conn, listener, data, fds)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"pid {pid}\n".encode())
                running[pid] = conn
            except OSError:
                conn.close()
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = running.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass
                conn.close()


if __name__ == "__main__":
    try:
        serve(sys.argv[1])
    finally:  # its folder (the socket, its error file): the parent may have been killed
        shutil.rmtree(os.path.dirname(sys.argv[1]), ignore_errors=True)
