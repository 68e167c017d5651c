"""The reference registration server: a real HTTP service with a real database.

It implements the registration funnel (register, email verification, photo,
NIK check against a registry service, batch join) with stations of configured
concurrency, queue limits and service work, so that it is a queueing network
with known parameters plus the real costs of HTTP, JSON and SQLite.  It reads
its own plain configuration (:mod:`refserver.config`) and imports nothing from
the planner (no SimPy, Locust or matplotlib).
"""
