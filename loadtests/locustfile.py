"""Locust users for the gateway: realistic traffic, a share of bad requests, load shaped by a profile.

Headless with a report: ``python -m loadtests.run --profile ramp --host http://127.0.0.1:8000``.
Web UI: ``locust -f loadtests/locustfile.py --host http://127.0.0.1:8000`` (``--load-profile spike``
picks a shape; without the shape class, ``--class-picker`` lets you drive users by hand instead).

Traffic, on both bundled models: for digits, single images and batches of 2-8 (multipart), JSON
pixel grids, images of several sizes and formats (PNG/JPEG/BMP, 8-256 px, both polarities); for
diabetes, JSON instances of patients (1-8 rows); all from the training split (see POOL); and about 8% bad requests (not an image,
wrong pixel shape, an out-of-range field) that count as successes only when they get their 400.

Each request comes from one of ``LOADTEST_USER_POOL`` end users (``X-User-ID``, canary splits stick
to it; a Locust user stands for a client that serves many end users), and, with
``LOADTEST_COHORT_HEADER`` set, carries that end user's cohort (``a`` or ``b``, half each: an A/B test).
A share of answers (``LOADTEST_FEEDBACK_SHARE``, default 0.3) is followed by ``POST /v1/feedback``
with the truth (the held-out label or value), which gives the rollout live accuracy per version.
The version that answered each request goes into the timings file, for the report's traffic plot.
"""

from __future__ import annotations

import os
import random
import time

from locust import HttpUser, LoadTestShape, between, events, task

from loadtests.profiles import PROFILES, timeline
from services.models.diabetes.data import FEATURES
from services.models.diabetes.data import load_split as diabetes_split
from services.models.digits.data import load_split
from services.models.digits.samples import training_images

# Rows of the training split, not the holdout: the feedback users send becomes training data, and the
# holdout the gates judge candidates on must never come back that way.
POOL = training_images(60, seed=5)
DIGITS = load_split().train
PIXELS, LABELS = DIGITS.x, DIGITS.y
_diabetes = diabetes_split().train
PATIENTS = [dict(zip(FEATURES, map(float, row))) for row in _diabetes.x]
VALUES = [float(v) for v in _diabetes.y]
FEEDBACK_SHARE = float(os.environ.get("LOADTEST_FEEDBACK_SHARE", "0.3"))
COHORT_HEADER = os.environ.get("LOADTEST_COHORT_HEADER", "")
USER_POOL = int(os.environ.get("LOADTEST_USER_POOL", "500"))


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
                        name="/v1/predict [1 image]", truth={"labels": [d.label]})

    @task(2)
    def batch_of_images(self) -> None:
        batch = random.sample(POOL, random.randint(2, 8))
        files = [("file", (f"{i}.img", d.data, "application/octet-stream")) for i, d in enumerate(batch)]
        self._expect_ok("/v1/predict", files=files, name="/v1/predict [batch]",
                        truth={"labels": [d.label for d in batch]})

    @task(2)
    def json_pixels(self) -> None:
        rows = random.sample(range(len(PIXELS)), random.randint(1, 4))
        self._expect_ok("/v1/predict", json={"instances": [{"pixels": PIXELS[i].tolist()} for i in rows]},
                        name="/v1/predict [json]", truth={"labels": [int(LABELS[i]) for i in rows]})

    @task(2)
    def diabetes(self) -> None:
        rows = random.sample(range(len(PATIENTS)), random.randint(1, 8))
        self._expect_ok("/v1/models/diabetes/predict", json={"instances": [PATIENTS[i] for i in rows]},
                        name="/v1/models/diabetes/predict", truth={"values": [VALUES[i] for i in rows]})

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

    def _expect_ok(self, path: str, name: str, truth: dict | None = None, **kwargs) -> None:
        user = random.randrange(USER_POOL)
        end_user = {"X-User-ID": f"user-{user}", **({COHORT_HEADER: "ab"[user % 2]} if COHORT_HEADER else {})}
        with self.client.post(path, name=name, catch_response=True, headers=end_user, **kwargs) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
        if truth is not None and random.random() < FEEDBACK_SHARE:
            self._feedback(r.json()["request_id"], truth)

    def _feedback(self, request_id: str, truth: dict) -> None:
        with self.client.post("/v1/feedback", json={"request_id": request_id, **truth}, name="/v1/feedback",
                              catch_response=True) as r:
            if r.status_code not in (200, 202):  # 202: joined once the prediction reaches the controller
                r.failure(f"feedback: {r.status_code}: {r.text[:200]}")


class ProfileShape(LoadTestShape):
    """Replays the chosen profile's stages, then stops the test."""

    def tick(self):
        stop_file = os.environ.get("LOADTEST_STOP_FILE")
        if stop_file and os.path.exists(stop_file):
            return None  # asked to end early: Locust stops its users and writes its reports, as at a profile's end
        name = self.runner.environment.parsed_options.load_profile if self.runner.environment.parsed_options else "ci"
        run_time = self.get_run_time()
        for start, end, stage in timeline(PROFILES[name]):
            if start <= run_time < end:
                return stage.users, stage.spawn_rate
        return None


_timings = None


@events.request.add_listener
def _record_timing(request_type, name, response_time, response_length, exception, start_time=None, response=None,
                   **kwargs):
    """Every request's timing to LOADTEST_TIMINGS (CSV): time, ms, ok, model:version that answered, name."""
    global _timings
    path = os.environ.get("LOADTEST_TIMINGS")
    if not path:
        return
    if _timings is None:
        _timings = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the locust process
    answered = ""
    if not exception and name.startswith("/v1/") and "predict" in name:
        try:
            model = response.json()["model"]
            answered = f"{model['name']}:{model['version']}"
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    _timings.write(f"{start_time or time.time():.3f},{response_time:.3f},{0 if exception else 1},{answered},{name}\n")
