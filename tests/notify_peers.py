"""Real notification receivers on loopback for the tests: a webhook endpoint (an HTTP
server that records what it gets and answers as told) and an SMTP server (aiosmtpd)
requiring STARTTLS and AUTH, with a CA and certificate made for it."""
from __future__ import annotations

import ipaddress
import json
import ssl
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.storage.models import utcnow
from tests.helpers import free_port

ANSWER_TEXT = "peer-answer-text-never-stored"


class HookServer:
    """A webhook receiver on 127.0.0.1: records each request and answers with the
    statuses queued in `answers` (then `default`)."""

    def __init__(self):
        self.received: list[dict] = []
        self.answers: list[int] = []
        self.default = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.received.append({"path": self.path, "headers": dict(self.headers),
                                        "body": self.rfile.read(length)})
                status = server.answers.pop(0) if server.answers else server.default
                body = json.dumps({"issue": [{"diagnostics": ANSWER_TEXT}]}).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "120")
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _ca_and_server_cert(folder):
    now = utcnow()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Notify Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


class MailServer:
    """aiosmtpd on 127.0.0.1 offering STARTTLS (required) and AUTH (required, over TLS
    only), accepting `password` for user "gateway"."""

    def __init__(self, folder, password: str, mechanism: str):
        self.ca, cert, key = _ca_and_server_cert(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.messages: list = []
        self.logins: list = []
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):
                server.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                        "content": envelope.content,
                                        "tls": session.ssl is not None})
                return "250 OK"

        def authenticator(smtp, session, envelope, used, data):
            ok = data.login == b"gateway" and data.password == password.encode()
            server.logins.append((used, ok, session.ssl is not None))
            return AuthResult(success=ok, handled=False)

        other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     tls_context=context, require_starttls=True,
                                     auth_required=True, authenticator=authenticator,
                                     auth_exclude_mechanism=[other])
        self.controller.start()

    def stop(self):
        self.controller.stop()
