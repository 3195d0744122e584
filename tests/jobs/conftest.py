"""Registers the jobs fixtures (defined in jobs_fixtures.py, which tests import helpers from by that unique name)."""

from jobs_fixtures import jobs, rabbitmq_url, redis_server, redis_url, sqlite_jobs, start_simulator  # noqa: F401
