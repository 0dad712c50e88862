"""The deployment, run for real: images built, the compose stack up, retraining on cron.

    python scripts/compose_test.py          # make compose-test

Works on a machine that can reach no image registry: it installs docker.io, debootstrap and
docker-compose with apt when missing and starts dockerd when none answers; builds a Debian base
image with debootstrap (python3 3.11 and venv) and a Redis image from Debian's redis-server,
once (kept by name); fills ./wheelhouse with wheels for the image's Python (cached under
~/.cache/cddae, keyed by pyproject.toml); builds the serve and scheduler images; starts the
stack with the retraining schedule set to every minute, and checks:

1. GET recommendations and POST /score answer;
2. an interaction posted through the API is in the next retrain's data (its manifest counts it);
3. a retrain run now (the command cron runs, in the scheduler container) promotes a version the
   API then serves without a restart;
4. the cron schedule fires (a run's summary line appears in the scheduler's log);
5. the Redis container killed: reads still answered, readiness degraded; restarted: ready;
6. `docker-compose down -v` leaves no container, network or volume of the project.
Prints each step's wall time; exits non-zero on the first failure, after taking the stack down.
With COMPOSE_TEST_OPTIONAL=1 (as .ci/run sets it) a machine where no Docker engine can be
started gets a clear "NOT RUN" line and exit 0 instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "cddae-compose-test"
BASE_IMAGE = "cddae-base:bookworm"
REDIS_IMAGE = "cddae-redis:bookworm"
MIRROR = "http://deb.debian.org/debian"
IMAGE_PYTHON = "3.11.2"  # Debian bookworm's python3 (the host may differ: markers do)
CACHE = Path.home() / ".cache" / "cddae"
PORT = 18000
SHARED = ROOT.parent / "shared" / "data"  # ml-100k beside the checkout, on the dev machine


def say(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    *command: str, check: bool = True, capture: bool = False, **kw
) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, text=True, capture_output=capture, **kw)


def compose(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "BASE_IMAGE": BASE_IMAGE, "REDIS_IMAGE": REDIS_IMAGE,
           "CDDAE_PORT": str(PORT), "CDDAE_RETRAIN_SCHEDULE": "* * * * *",
           "CDDAE_ADMIN_TOKEN": "compose-test", "CDDAE_TAG": "compose-test"}  # fmt: skip
    env["CDDAE_SEED_DIR"] = str(SEED_DIR)
    return run("docker-compose", "-p", PROJECT, *args, check=check, capture=capture, env=env,
               cwd=ROOT)  # fmt: skip


def wait_for(what: str, condition: Callable[[], bool], seconds: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


# --- the machine ---------------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [p for t, p in (("docker", "docker.io"), ("dockerd", "docker.io"),
               ("debootstrap", "debootstrap"), ("docker-compose", "docker-compose"))
               if shutil.which(t) is None]  # fmt: skip
    if missing:
        say(f"installing {sorted(set(missing))} with apt")
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", *sorted(set(missing)),
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


def engine_up() -> bool:
    return run("docker", "info", check=False, capture=True).returncode == 0


def ensure_engine() -> None:
    if engine_up():
        return
    say("starting dockerd")
    log = open("/tmp/cddae-dockerd.log", "a")  # noqa: SIM115 - the daemon outlives this script
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    wait_for("dockerd", engine_up, 60)


def image_exists(name: str) -> bool:
    return run("docker", "image", "inspect", name, check=False, capture=True).returncode == 0


def ensure_base_images() -> None:
    if not image_exists(BASE_IMAGE):
        say(f"building {BASE_IMAGE} with debootstrap (a few minutes, once)")
        rootfs = Path("/tmp/cddae-rootfs")
        shutil.rmtree(rootfs, ignore_errors=True)
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
            "bookworm", str(rootfs), MIRROR)  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run("docker", "import", "-", BASE_IMAGE, stdin=tar.stdout)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    if not image_exists(REDIS_IMAGE):
        say(f"building {REDIS_IMAGE} from Debian's redis-server")
        run("docker", "build", "-q", "-t", REDIS_IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "-f", str(ROOT / "docker" / "redis.Dockerfile"), str(ROOT / "docker"))  # fmt: skip


SEED_DIR = CACHE / "seed"  # holds ml-100k/ for the init container (which reaches no PyPI)


def ensure_seed() -> None:
    """The data set the init step copies: from $CDDAE_ML100K or ../shared/data when there, else
    fetched on the host once (GroupLens, or the recbole wheel through pip)."""
    target = SEED_DIR / "ml-100k"
    if target.is_dir() and any(target.iterdir()):  # GroupLens or RecBole files: either loads
        return
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    local = os.environ.get("CDDAE_ML100K") or (SHARED / "ml-100k")
    command = [str(Path(sys.executable).parent / "cddae"), "data", "fetch", "ml-100k",
               "--dest", str(SEED_DIR)]  # fmt: skip
    if Path(local).is_dir():
        command += ["--from", str(local)]
    say("preparing the data set for the init step: " + " ".join(command[1:]))
    run(*command)


def ensure_wheelhouse() -> None:
    """Wheels for everything the images install, made on the host (containers reach no PyPI)
    for the image's Python; cached by pyproject.toml's content."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    cached = CACHE / f"wheelhouse-{key}"
    if not (cached / ".complete").exists():
        say("making the wheelhouse (pip wheel, once per pyproject.toml)")
        shutil.rmtree(cached, ignore_errors=True)
        cached.mkdir(parents=True)
        # async-timeout: redis needs it below Python 3.11.3 (the image's 3.11.2), and the host's
        # pip evaluates markers for its own interpreter; setuptools: to build this project.
        # The project's dependencies from a stand-in with its pyproject.toml alone: building the
        # checkout itself would leave a build/ folder in it.
        with tempfile.TemporaryDirectory() as stand_in:
            shutil.copy2(ROOT / "pyproject.toml", stand_in)
            for package in ("service", "training"):
                (Path(stand_in) / package).mkdir()
                (Path(stand_in) / package / "__init__.py").touch()
            (Path(stand_in) / "README.md").touch()
            run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(cached),
                f"{stand_in}[train]", "async-timeout", "setuptools>=77", "wheel")  # fmt: skip
        for built in cached.glob("cddae-*.whl"):  # the project is built in the image, from source
            built.unlink()
        (cached / ".complete").touch()
    target = ROOT / "wheelhouse"
    for old in target.glob("*.whl"):
        old.unlink()
    for wheel in cached.glob("*.whl"):
        try:
            os.link(wheel, target / wheel.name)  # no copy of torch's wheel on the same disk
        except OSError:
            shutil.copy2(wheel, target / wheel.name)


# --- the checks ----------------------------------------------------------------------------------


def api(path: str) -> str:
    return f"http://127.0.0.1:{PORT}{path}"


def ready_status() -> str:
    return httpx.get(api("/readyz"), timeout=5).json()["status"]


def served_version() -> str:
    return httpx.get(api("/model"), timeout=5).json()["model_version"]


def current_pointer() -> str:
    return compose("exec", "-T", "scheduler", "cat", "/models/CURRENT", capture=True).stdout.strip()


def retrain_now() -> str:
    """The command cron runs, in the scheduler container; waits out a cron run holding the lock."""
    for _ in range(30):
        done = compose("exec", "-T", "scheduler", "cddae-retrain", check=False, capture=True)
        if done.returncode != 3:  # 3: another run holds the lock
            assert done.returncode == 0, f"retrain exited {done.returncode}: {done.stdout}"
            return done.stdout.strip()
        time.sleep(5)
    raise AssertionError("the retraining lock was never free")


def check_answers() -> None:
    listed = httpx.get(api("/users/196/recommendations?n=5"), timeout=10)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 5, listed.text
    scored = httpx.post(api("/score"), json={"items": ["50", "181"], "n": 5}, timeout=10)
    assert scored.status_code == 200 and scored.json()["source"] == "model", scored.text
    say(f"GET and POST /score answer (model {listed.json()['model_version']})")


def write_token() -> str:
    """The token init generated at first start (and printed once in its log)."""
    token = compose("exec", "-T", "scheduler", "cat", "/secrets/write-token", capture=True)
    logged = compose("logs", "--no-color", "init", capture=True).stdout
    assert token.stdout.strip() and f"CDDAE_WRITE_TOKEN={token.stdout.strip()}" in logged
    return token.stdout.strip()


def check_deployment_defaults() -> None:
    """Redis bounded with noeviction; the job's environment readable by root only, the job
    itself run as the unprivileged user cddae."""
    memory = compose("exec", "-T", "redis", "redis-cli", "config", "get", "maxmemory",
                     capture=True).stdout.split()  # fmt: skip
    policy = compose("exec", "-T", "redis", "redis-cli", "config", "get", "maxmemory-policy",
                     capture=True).stdout.split()  # fmt: skip
    assert int(memory[-1]) > 0 and policy[-1] == "noeviction", (memory, policy)
    env = compose("exec", "-T", "scheduler", "stat", "-c", "%U %a", "/etc/cddae.env",
                  capture=True).stdout.strip()  # fmt: skip
    assert env == "root 600", env
    owner = compose("exec", "-T", "scheduler", "stat", "-c", "%U", "/models/CURRENT",
                    capture=True).stdout.strip()  # fmt: skip
    assert owner == "cddae", f"the job wrote /models as {owner}"
    say(f"Redis maxmemory {memory[-1]} noeviction; the job's environment: {env}")


def check_retrain_takes_recorded_interactions() -> None:
    before = served_version()
    unauthorised = httpx.post(api("/users/compose-user/interactions"), json={"items": ["50"]},
                              timeout=10)  # fmt: skip
    assert unauthorised.status_code == 401, "writes must need the generated token"
    auth = {"Authorization": f"Bearer {write_token()}"}
    posted = httpx.put(api("/users/compose-user/profile"), json={"gender": "F", "age": 30},
                       headers=auth, timeout=10)  # fmt: skip
    assert posted.status_code in (200, 201), posted.text
    body = {"items": ["50", "181", "258"]}
    recorded = httpx.post(api("/users/compose-user/interactions"), json=body, headers=auth,
                          timeout=10)  # fmt: skip
    assert recorded.status_code == 201, recorded.text
    summary = retrain_now()
    say(f"retrain now: {summary}")
    assert "retrain: promoted" in summary, summary  # the job's one line says what happened
    assert "events trimmed" in summary, summary  # the scheduled job trims the stream
    version = current_pointer()
    assert version != before, "the retrain did not promote a new version"
    wait_for("the API to serve the new version", lambda: served_version() == version, 30)
    manifest = httpx.get(api("/model"), timeout=10).json()
    assert manifest["retrain"]["recorded_interactions"] >= 3, manifest.get("retrain")
    seen = httpx.get(api("/users/compose-user/recommendations?n=10"), timeout=10).json()
    assert not {"50", "181", "258"} & {i["item_id"] for i in seen["items"]}
    say(f"promoted {version}, served without a restart; it folded "
        f"{manifest['retrain']['recorded_interactions']} recorded interactions")  # fmt: skip


def check_cron_fires() -> None:
    def logged() -> bool:
        out = compose("logs", "--no-color", "scheduler", capture=True).stdout
        return "retrain: " in out and "(exit " in out

    wait_for("a cron-started retrain in the scheduler's log", logged, 200, every=5)
    line = [ln for ln in compose("logs", "--no-color", "scheduler", capture=True).stdout
            .splitlines() if "(exit " in ln][-1]  # fmt: skip
    say(f"cron fired: {line.split('|', 1)[-1].strip()}")


def check_redis_outage() -> None:
    compose("kill", "redis")
    wait_for("readiness to say degraded", lambda: ready_status() == "degraded", 30)
    listed = httpx.get(api("/users/196/recommendations?n=5"), timeout=10)
    assert listed.status_code == 200 and listed.json()["items"], listed.text
    say(f"Redis killed: reads answered (degraded={listed.json().get('degraded')}), "
        "readiness degraded")  # fmt: skip
    compose("start", "redis")
    wait_for("readiness back to ok", lambda: ready_status() == "ok", 60)
    say("Redis restarted: ready again")


def check_nothing_left() -> None:
    compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind in ("ps -a", "network ls", "volume ls"):
        left = run("docker", *kind.split(), "-q", "--filter", label, capture=True).stdout.split()
        assert not left, f"docker {kind} still lists {left}"
    say("down -v: no container, network or volume left")


def main() -> int:
    started = time.monotonic()
    try:
        ensure_tools()
        ensure_engine()
    except (OSError, subprocess.CalledProcessError, AssertionError) as error:
        if os.environ.get("COMPOSE_TEST_OPTIONAL"):  # .ci/run: say so, do not fail the build
            say(f"NOT RUN: no Docker engine could be started here ({error})")
            return 0
        raise
    ensure_base_images()
    ensure_seed()
    ensure_wheelhouse()
    say("building the images")
    compose("build")
    compose("down", "-v", "--remove-orphans", check=False, capture=True)  # a previous run's
    try:
        say("starting the stack (init trains the first model)")
        compose("up", "-d")
        wait_for("the API to be ready", lambda: ready_status() == "ok", 600, every=3)
        say(f"ready after {time.monotonic() - started:.0f} s")
        check_answers()
        check_deployment_defaults()
        check_retrain_takes_recorded_interactions()
        check_cron_fires()
        check_redis_outage()
    except BaseException:
        compose("ps", check=False)
        compose("logs", "--no-color", "--tail", "40", check=False)
        compose("down", "-v", "--remove-orphans", check=False)
        raise
    check_nothing_left()
    say(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
