"""Locust users for the gateway: realistic traffic, a share of bad requests, load shaped by a profile.

Headless with a report: ``python -m loadtests.run --profile ramp --host http://127.0.0.1:8000``.
Web UI: ``locust -f loadtests/locustfile.py --host http://127.0.0.1:8000`` (``--load-profile spike``
picks a shape; without the shape class, ``--class-picker`` lets you drive users by hand instead).

Traffic, on both bundled models: for digits, single images and batches of 2-8 (multipart), JSON
pixel grids, images of several sizes and formats (PNG/JPEG/BMP, 8-256 px, both polarities); for
diabetes, JSON instances of held-out patients (1-8 rows); and about 8% bad requests (not an image,
wrong pixel shape, an out-of-range field) that count as successes only when they get their 400.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, LoadTestShape, between, events, task

from loadtests.profiles import PROFILES, timeline
from services.models.diabetes.data import FEATURES
from services.models.diabetes.data import load_split as diabetes_split
from services.models.digits.data import load_split
from services.models.digits.samples import holdout_images

POOL = holdout_images(60, seed=5)
PIXELS = load_split().holdout.x[:60]
PATIENTS = [dict(zip(FEATURES, map(float, row))) for row in diabetes_split().holdout.x]


@events.init_command_line_parser.add_listener
def _add_profile_argument(parser) -> None:
    parser.add_argument("--load-profile", default=os.environ.get("LOADTEST_PROFILE", "ci"),
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

    @task(2)
    def diabetes(self) -> None:
        rows = random.sample(PATIENTS, random.randint(1, 8))
        self._expect_ok("/v1/models/diabetes/predict", json={"instances": rows}, name="/v1/models/diabetes/predict")

    @task(1)
    def bad_request(self) -> None:
        path, roll = "/v1/predict", random.random()
        if roll < 0.33:
            kwargs = {"files": [("file", ("x.png", b"this is not an image", "image/png"))]}
        elif roll < 0.66:
            kwargs = {"json": {"instances": [{"pixels": [[1, 2, 3]]}]}}
        else:
            path, kwargs = "/v1/models/diabetes/predict", {"json": {"instances": [{**PATIENTS[0], "bmi": 9.0}]}}
        with self.client.post(path, name="[bad input]", catch_response=True, **kwargs) as r:
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
    """Every request's timing to LOADTEST_TIMINGS (CSV), so the runner computes exact per-stage percentiles."""
    global _timings
    path = os.environ.get("LOADTEST_TIMINGS")
    if not path:
        return
    if _timings is None:
        _timings = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the locust process
    import time

    _timings.write(f"{start_time or time.time():.3f},{response_time:.3f},{0 if exception else 1},{name}\n")
