# The platform image: this repository installed from requirements.lock on Ray's own image (Ray 2.60.0,
# Python 3.11), without the dev extras. The same image runs the Ray head and workers of the RayService
# (Serve gateway, retraining runs) and the retraining listener (`rts listen`). See infra/README.md.
#   docker build -t <registry>/raytriton:<tag> .
FROM rayproject/ray:2.60.0-py311

# The base image's non-root user `ray` (uid 1000, group users 100); numeric, so Kubernetes can check runAsNonRoot.
USER 1000:100

# Everything pip installs goes to Ray's Python (site-packages, owned by ray); the sources are copied first and
# removed after the install, so code is only ever imported from site-packages.
COPY --chown=1000:100 pyproject.toml requirements.lock README.md /home/ray/src/
COPY --chown=1000:100 services /home/ray/src/services
COPY --chown=1000:100 ray_apps /home/ray/src/ray_apps
COPY --chown=1000:100 loadtests /home/ray/src/loadtests
COPY --chown=1000:100 triton_models /home/ray/src/triton_models
WORKDIR /home/ray/src
RUN pip install --no-cache-dir -c requirements.lock . \
    && rm -rf /home/ray/src

WORKDIR /home/ray
# Local state (caches, the default bucket of a laptop stack) under the user's home, not in site-packages.
ENV RTS_VAR_DIR=/home/ray/var
