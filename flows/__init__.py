"""Prefect flows: thin orchestration over the stage functions in ``tasks/``."""

import os

# Offline machines: no telemetry, and a generous start-up time for the ephemeral server
# on a loaded 2-core box.  Set before Prefect is imported; explicit settings win.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Libraries' own progress bars (transformers "Loading weights") stay out of run logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
