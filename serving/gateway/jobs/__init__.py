"""Async jobs: records, queues (in process or Redis Streams), event logs and workers."""
