# gunicorn settings for the API (workers run separately: `records-gateway worker`).
import os
import ssl

bind = os.environ.get("GATEWAY_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GATEWAY_HTTP_WORKERS", "2"))
threads = int(os.environ.get("GATEWAY_HTTP_THREADS", "4"))
worker_class = "gthread"
timeout = 300  # large bundles are received in one request
graceful_timeout = 30
accesslog = "-"  # method, path and status only: no bodies, no query strings, no patient data
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'

# HTTPS with the same files `records-gateway serve` takes (the tls_* settings); with a
# client CA every client must present a certificate it signed (mutual TLS between
# gateways). TLS 1.2 at least.
certfile = os.environ.get("GATEWAY_TLS_CERT_FILE")
keyfile = os.environ.get("GATEWAY_TLS_KEY_FILE")
ca_certs = os.environ.get("GATEWAY_TLS_CLIENT_CA_FILE")
if ca_certs:
    cert_reqs = ssl.CERT_REQUIRED


def ssl_context(conf, default_ssl_context_factory):
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
