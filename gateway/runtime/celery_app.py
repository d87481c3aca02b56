"""Celery: Redis broker when configured, else an embedded filesystem broker.

Either way the same tasks run in separate worker processes (or the worker inside
`records-gateway serve`); eager mode is never used. Messages are acked late and
re-queued if a worker dies, and a periodic reconciler re-enqueues any step whose
message was lost, so the database alone decides what happens next.
"""
from __future__ import annotations

import kombu.pools
from celery import Celery

from gateway.config import Settings

celery = Celery("records_gateway", include=["gateway.engine.transfers", "gateway.engine.pulls",
                                            "gateway.engine.checkpoints", "gateway.engine.subscriptions",
                                            "gateway.engine.unattended",
                                            "gateway.inbound.tasks", "gateway.notify.tasks",
                                            "gateway.center.tasks"])


def configure_celery(settings: Settings) -> Celery:
    conf = dict(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {"task": "gateway.transfers.reconcile",
                          "schedule": settings.reconcile_interval_s},
            "audit-checkpoint": {"task": "gateway.auditing.checkpoint",
                                 "schedule": settings.checkpoint_interval_s},
            "sweep-uploads": {"task": "gateway.receive_binaries.sweep", "schedule": 3600.0},
            "notify-deliver": {"task": "gateway.notify.deliver",
                               "schedule": settings.notify.interval_s},
            "notify-expiring": {"task": "gateway.notify.expiring", "schedule": 3600.0},
            "subscription-heartbeats": {"task": "gateway.subscriptions.check_heartbeats",
                                        "schedule": settings.reconcile_interval_s},
            "cases": {"task": "gateway.cases.tick", "schedule": settings.case_tick_s},
        },
        timezone="UTC",
        task_default_queue=settings.queue,
    )
    if settings.center is not None:  # a second-opinion center's requests
        conf["beat_schedule"]["center"] = {"task": "gateway.center.tick",
                                           "schedule": settings.case_tick_s}
    if settings.redis_url:
        visibility = settings.broker_visibility_timeout_s
        # kombu looks for messages past it every interval * throttle seconds (10 * 10 by
        # default): a quarter of the timeout, within 1 to 100 s, so a short one holds
        interval = min(10.0, max(1.0, visibility / 4))
        conf.update(broker_url=settings.redis_url,
                    # a message not acked within this time is delivered again
                    broker_transport_options={
                        "visibility_timeout": visibility,
                        "unacked_restore_interval": interval,
                        "unacked_restore_throttle": max(1, round(min(100.0, visibility / 4) / interval))})
    else:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        from . import fsbroker  # atomic message files (see there)

        conf.update(
            broker_url=f"{fsbroker.ALIAS}://",
            broker_transport_options={
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": 0.1,
            },
            # the filesystem transport has no broadcast: no remote control, no gossip
            worker_enable_remote_control=False,
            beat_schedule_filename=str(folder / "beat-schedule"),
        )
    celery.conf.update(conf)
    # connections pooled under earlier settings (a process that builds several apps,
    # as tests do) would still send to the old broker: drop them
    if celery._pool is not None:
        celery._pool.force_close_all()
        celery._pool = None
        # kombu keeps producer pools by broker URL: one over the connections just closed
        # would be handed out again to an app on the same broker
        kombu.pools.reset()
    if "amqp" in celery.__dict__:
        celery.amqp._producer_pool = None
    return celery
