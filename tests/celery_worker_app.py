"""The module every worker process of the Celery proofs imports (see ``tests/celery_support.py``).

    CW_DATABASE=... CW_BROKER=... celery -A celery_worker_app:celery_app worker ...
    CW_DATABASE=... CW_BROKER=... chimeway worker --app celery_worker_app:app
"""

from __future__ import annotations

import logging
import os

from celery_support import make_app

logging.basicConfig(level=logging.WARNING)
app, celery_app = make_app(os.environ, pool=40)
