"""`[core] hostname_callable` for the Celery test: two workers on one host report different names."""

import os
import socket


def name() -> str:
    return os.environ.get("MTL_TEST_WORKER") or socket.getfqdn()
