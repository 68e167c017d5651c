"""Baseline for benchmarks/bench_load.py: a bare FastHttpUser GET loop."""

from locust import FastHttpUser, constant_throughput, task


class Bare(FastHttpUser):
    wait_time = constant_throughput(10)

    @task
    def get(self) -> None:
        self.client.get("/healthz")
