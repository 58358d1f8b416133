"""Build the serverless artefacts: an AWS Lambda zip and a Google Cloud Functions gen2 source folder.

Usage::

    make package                                             # both, into dist/serverless/
    python -m services.retraining.artefacts --target aws     # one; --out DIR, --no-deps (code only)

    dist/serverless/aws/lambda.zip          handler services.retraining.serverless.lambda_handler
                                            (runtime python3.11, x86_64), dependencies inside
    dist/serverless/aws/requirements.txt    the distributions the zip holds, pinned (also inside it)
    dist/serverless/gcp/function/           main.py (entry point cloud_event_handler, signature type
                                            cloudevent), requirements.txt (pinned), our code

Each holds what its handler imports and nothing else. The build imports the handler, and the object
store it writes to (S3 for AWS, GCS for GCP), in a fresh interpreter; keeps the modules of ours that
were loaded; maps every other loaded module to the distribution that installed it; adds what those
distributions declare they need; and pins each one to ``requirements.lock`` (a distribution the lock
does not pin stops the build). ``rts-models.json`` carries the configured models' names and data
suffixes (``RTS_MODELS`` at build time), so the handlers never import a model package and its
training libraries (``services.retraining.serverless``).

Lambda's dependencies are installed into the zip for Lambda's platform (``pip install --target
--platform manylinux2014_x86_64 --python-version 3.11 --only-binary=:all:``; needs PyPI or pip's
cache). Cloud Functions' are installed by Cloud Build from requirements.txt when it is deployed.
Deploy with ``infra/serverless/`` (CloudFormation, Terraform).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.modelkit.discovery import load_models
from services.retraining.serverless import MODELS_MANIFEST, models_manifest
from services.settings import REPO_ROOT, Settings, get_settings

LOCK = REPO_ROOT / "requirements.lock"
DEFAULT_OUT = REPO_ROOT / "dist" / "serverless"
LAMBDA_HANDLER = "services.retraining.serverless.lambda_handler"
FUNCTION_ENTRY_POINT = "cloud_event_handler"
# Lambda's python3.11 runtime runs on Amazon Linux 2 (glibc 2.26): manylinux2014 wheels, not newer.
LAMBDA_PIP_PLATFORM = ("--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.11",
                       "--only-binary=:all:")

FUNCTION_MAIN = f'''"""Cloud Run functions / Cloud Functions gen2 entry point, written by `make package`.

Deploy with entry point {FUNCTION_ENTRY_POINT!r} (signature type: CloudEvent): Eventarc's
google.cloud.storage.object.v1.finalized and google.cloud.pubsub.topic.v1.messagePublished events
start retraining runs (services.retraining.serverless). See infra/serverless/gcp.
"""

import functions_framework

from services.retraining import serverless


@functions_framework.cloud_event
def {FUNCTION_ENTRY_POINT}(cloud_event):
    serverless.cloud_event_handler(cloud_event)
'''


@dataclass(frozen=True)
class Target:
    name: str
    # What the handler loads when it runs: itself, the backends of the stores it may write to (its cloud's,
    # and file:// for a mounted bucket or a test), and what hosts it.
    imports: tuple[str, ...]


TARGETS = {
    "aws": Target("aws", ("services.retraining.serverless", "services.storage.s3", "services.storage.local")),
    "gcp": Target("gcp", ("services.retraining.serverless", "services.storage.gcs", "services.storage.local",
                          "functions_framework")),
}


def say(message: str) -> None:
    print(f"[package] {message}", flush=True)


_PROBE = """
import importlib, json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n not in before}))
"""


def loaded_modules(imports: Iterable[str]) -> dict[str, str | None]:
    """Every module importing `imports` loads in a fresh interpreter, with its file."""
    result = subprocess.run([sys.executable, "-c", _PROBE, *imports], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"importing {list(imports)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


class Owners:
    """Which installed distribution a module file belongs to (from the distributions' RECORDs)."""

    def __init__(self) -> None:
        self.site = [Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")]
        self.by_top = importlib.metadata.packages_distributions()
        self._files: dict[str, set[str]] = {}

    def __call__(self, file: str) -> str | None:
        for site in self.site:
            if Path(file).is_relative_to(site):
                relative = Path(file).relative_to(site)
                top = relative.parts[0].removesuffix(".py").split(".")[0]  # package, module, or extension
                for dist in self.by_top.get(top, ()):
                    if relative.as_posix() in self._record(dist):
                        return canonicalize_name(dist)
        return None

    def _record(self, dist: str) -> set[str]:
        if dist not in self._files:
            self._files[dist] = {f.as_posix() for f in importlib.metadata.files(dist) or ()}
        return self._files[dist]


def _top_level_imports(source: Path) -> set[str]:
    """Modules a file imports when it is imported (not in functions, not for type checkers), with the
    names taken from them (``from a import b`` gives ``a`` and ``a.b``, which may be a module)."""
    names: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])

    visit(ast.parse(source.read_text()).body)
    return names


def import_closure(imports: Iterable[str]) -> tuple[list[Path], set[str]]:
    """(our source files, distributions) that `imports` need: the modules of ours they load, and the
    distributions of the modules those (and `imports`) import themselves.

    A library's optional imports of whatever else happens to be installed here (urllib3 takes brotli,
    google-api-core takes grpc) do not count: what a distribution needs is what it declares.
    """
    loaded = loaded_modules(imports)
    site = tuple(os.path.normpath(sysconfig.get_paths()[k]) + os.sep for k in ("purelib", "platlib"))
    ours = sorted(Path(f) for f in filter(None, loaded.values())
                  if Path(f).is_relative_to(REPO_ROOT) and not os.path.normpath(f).startswith(site))
    wanted = set(imports).union(*(_top_level_imports(f) for f in ours))
    owner, dists, unknown = Owners(), set(), []
    for name in sorted(wanted):
        file = loaded.get(name)
        if file is None or Path(file).is_relative_to(REPO_ROOT) and not os.path.normpath(file).startswith(site):
            continue  # not loaded (a name, not a module; stdlib loaded before), a namespace package, or ours
        dist = owner(os.path.normpath(file))
        if dist is not None:
            dists.add(dist)
        elif os.path.normpath(file).startswith(site):
            unknown.append(f"{name} ({file})")
    if unknown:
        raise RuntimeError(f"modules no installed distribution owns: {unknown}")
    return ours, dists


def requirement_closure(names: Iterable[str]) -> set[str]:
    """`names` and everything they declare they need (for this Python and platform), transitively."""
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(n), "") for n in names]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in importlib.metadata.requires(name) or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                dep = canonicalize_name(req.name)
                todo += [(dep, "")] + [(dep, canonicalize_name(e)) for e in req.extras]
    return {name for name, _ in seen}


def locked() -> dict[str, str]:
    """requirements.lock as {canonical name: "Name==version"}."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            pins[canonicalize_name(line.split("==", 1)[0])] = line
    return pins


def pinned(dists: Iterable[str]) -> list[str]:
    """Each distribution as the lock pins it; the lock and the installed version must agree."""
    pins, lines, problems = locked(), [], []
    for name in sorted(dists):
        if name not in pins:
            problems.append(f"{name} is not in requirements.lock")
            continue
        version = pins[name].split("==", 1)[1]
        installed = importlib.metadata.version(name)
        if installed != version:
            problems.append(f"{name} {installed} is installed but requirements.lock pins {version} (make venv)")
        lines.append(pins[name])
    if problems:
        raise RuntimeError("cannot pin the artefact's dependencies: " + "; ".join(problems))
    return lines


def requirements(target: Target) -> tuple[list[Path], list[str]]:
    """The target's source files and its pinned requirements."""
    files, dists = import_closure(target.imports)
    return files, pinned(requirement_closure(dists))


def stage_code(dest: Path, files: Iterable[Path], pins: list[str], settings: Settings) -> None:
    """Our modules (paths kept), rts-models.json (the models of `settings`) and requirements.txt into `dest`."""
    for file in files:
        (dest / file.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest / file.relative_to(REPO_ROOT))
    manifest = models_manifest(load_models(settings))
    (dest / MODELS_MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n")
    (dest / "requirements.txt").write_text(
        "# Written by `make package` (services/retraining/artefacts.py) from requirements.lock.\n" + "\n".join(pins) + "\n")
    say(f"models: {', '.join(m['name'] for m in manifest)}")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_zip(source: Path, zip_path: Path) -> None:
    """A reproducible zip of `source`: sorted, fixed timestamps, no byte code."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            info = zipfile.ZipInfo(file.relative_to(source).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(file, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, file.read_bytes())


def build_lambda(out: Path, *, deps: bool = True, settings: Settings | None = None,
                 pip_args: Sequence[str] = ()) -> Path:
    """out/aws/lambda.zip (and out/aws/requirements.txt). Returns the zip.

    `deps` False leaves the dependencies out (no network); `pip_args` go to the pip that installs them
    (``--no-index --find-links DIR`` for a folder of wheels).
    """
    started, target = time.monotonic(), TARGETS["aws"]
    root = out / "aws"
    shutil.rmtree(root, ignore_errors=True)
    stage = root / "stage"
    stage.mkdir(parents=True)
    say("aws: finding what the Lambda handler imports ...")
    files, pins = requirements(target)
    say(f"aws: {len(files)} modules of ours, {len(pins)} distributions pinned from requirements.lock")
    stage_code(stage, files, pins, settings or get_settings())
    shutil.copy2(stage / "requirements.txt", root / "requirements.txt")
    if deps:
        say("aws: installing them for Lambda (manylinux2014_x86_64, CPython 3.11) ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--progress-bar", "off", "--no-deps",
                        "--no-compile", "--disable-pip-version-check", *LAMBDA_PIP_PLATFORM, *pip_args,
                        "--target", str(stage), "-r", str(stage / "requirements.txt")], check=True)
        shutil.rmtree(stage / "bin", ignore_errors=True)  # console scripts: a Lambda runs none
    say(f"aws: zipping {_mb(_size(stage))} ...")
    zip_path = root / "lambda.zip"
    write_zip(stage, zip_path)
    shutil.rmtree(stage)
    say(f"aws: {zip_path} ({_mb(zip_path.stat().st_size)}) handler {LAMBDA_HANDLER} "
        f"in {time.monotonic() - started:.0f} s")
    return zip_path


def build_function(out: Path, *, settings: Settings | None = None) -> Path:
    """out/gcp/function/: main.py, requirements.txt, our code. Returns the folder."""
    started, target = time.monotonic(), TARGETS["gcp"]
    folder = out / "gcp" / "function"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    say("gcp: finding what the Cloud Function imports ...")
    files, pins = requirements(target)
    say(f"gcp: {len(files)} modules of ours, {len(pins)} distributions pinned from requirements.lock")
    stage_code(folder, files, pins, settings or get_settings())
    (folder / "main.py").write_text(FUNCTION_MAIN)
    say(f"gcp: {folder} ({_mb(_size(folder))}) entry point {FUNCTION_ENTRY_POINT} "
        f"in {time.monotonic() - started:.0f} s")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the serverless artefacts (AWS Lambda, Google Cloud Functions)")
    parser.add_argument("--target", choices=["aws", "gcp", "all"], default="all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default dist/serverless")
    parser.add_argument("--no-deps", action="store_true", help="Lambda zip without its dependencies (offline)")
    args = parser.parse_args(argv)
    try:
        if args.target in ("aws", "all"):
            build_lambda(args.out, deps=not args.no_deps)
        if args.target in ("gcp", "all"):
            build_function(args.out)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"[package] failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
