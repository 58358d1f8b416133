"""Locust users for the gateway: realistic traffic, a share of bad requests, load shaped by a profile.

Headless with a report: ``python -m loadtests.run --profile ramp --host http://127.0.0.1:8000``.
Web UI: ``locust -f loadtests/locustfile.py --host http://127.0.0.1:8000`` (``--load-profile spike``
picks a shape; without the shape class, ``--class-picker`` lets you drive users by hand instead).

Traffic: single images and batches of 2-8 (multipart), JSON pixel grids, images of several sizes
and formats (PNG/JPEG/BMP, 8-256 px, both polarities), and about 9% bad requests (not an image,
wrong pixel shape) that count as successes only when they get their 4xx.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, LoadTestShape, between, events, task

from loadtests.profiles import PROFILES, timeline
from services.models.digits.samples import holdout_images
from services.models.digits.train import load_split

POOL = holdout_images(60, seed=5)
PIXELS = load_split().holdout_images[:60]


@events.init_command_line_parser.add_listener
def _add_profile_argument(parser) -> None:
    parser.add_argument("--load-profile", default=os.environ.get("RTS_LOAD_PROFILE", "ci"),
                        help=f"load profile: {', '.join(PROFILES)}")


class GatewayUser(HttpUser):
    wait_time = between(0.05, 0.3)

    @task(6)
    def one_image(self) -> None:
        d = random.choice(POOL)
        self._expect_ok("/v1/predict", files=[("file", ("d.img", d.data, "application/octet-stream"))],
                        name="/v1/predict [1 image]")

    @task(2)
    def batch_of_images(self) -> None:
        batch = random.sample(POOL, random.randint(2, 8))
        files = [("file", (f"{i}.img", d.data, "application/octet-stream")) for i, d in enumerate(batch)]
        self._expect_ok("/v1/predict", files=files, name="/v1/predict [batch]")

    @task(2)
    def json_pixels(self) -> None:
        rows = random.sample(range(len(PIXELS)), random.randint(1, 4))
        self._expect_ok("/v1/predict", json={"instances": [{"pixels": PIXELS[i].tolist()} for i in rows]},
                        name="/v1/predict [json]")

    @task(1)
    def bad_request(self) -> None:
        if random.random() < 0.5:
            kwargs = {"files": [("file", ("x.png", b"this is not an image", "image/png"))]}
        else:
            kwargs = {"json": {"instances": [{"pixels": [[1, 2, 3]]}]}}
        with self.client.post("/v1/predict", name="/v1/predict [bad input]", catch_response=True, **kwargs) as r:
            if r.status_code == 400 and "error" in r.json():
                r.success()
            else:
                r.failure(f"bad input should be a 400 with an error body, got {r.status_code}")

    def _expect_ok(self, path: str, name: str, **kwargs) -> None:
        with self.client.post(path, name=name, catch_response=True, **kwargs) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")


class ProfileShape(LoadTestShape):
    """Replays the chosen profile's stages, then stops the test."""

    def tick(self):
        name = self.runner.environment.parsed_options.load_profile if self.runner.environment.parsed_options else "ci"
        run_time = self.get_run_time()
        for start, end, stage in timeline(PROFILES[name]):
            if start <= run_time < end:
                return stage.users, stage.spawn_rate
        return None


_timings = None


@events.request.add_listener
def _record_timing(request_type, name, response_time, response_length, exception, start_time=None, **kwargs):
    """Every request's timing to RTS_LOAD_TIMINGS (CSV), so the runner computes exact per-stage percentiles."""
    global _timings
    path = os.environ.get("RTS_LOAD_TIMINGS")
    if not path:
        return
    if _timings is None:
        _timings = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the locust process
    import time

    _timings.write(f"{start_time or time.time():.3f},{response_time:.3f},{0 if exception else 1},{name}\n")
