# gunicorn settings for the API (workers run separately: `records-gateway worker`).
import os

bind = os.environ.get("GATEWAY_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GATEWAY_HTTP_WORKERS", "2"))
threads = int(os.environ.get("GATEWAY_HTTP_THREADS", "4"))
worker_class = "gthread"
timeout = 300  # large bundles are received in one request
graceful_timeout = 30
accesslog = "-"  # method, path and status only: no bodies, no patient data
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
