"""Build deploy/Dockerfile for real without a Docker engine, and check the image it makes.

    python deploy/check_image.py            # as root; installs buildah and debootstrap

Where no Docker engine runs (a CI runner, a sandbox), buildah (Debian's package) builds
the Dockerfile as it is, both stages, in chroot isolation. Where Docker Hub is out of
reach too, the base image `python:3.11-slim-bookworm` is stood in for by one made here:
Debian bookworm from Debian's own mirror (debootstrap) with Debian's Python 3.11, the
same Debian release and Python minor version; the Dockerfile takes it as its
PYTHON_IMAGE build argument. With Docker Hub in reach, `--base python:3.11-slim-bookworm`
builds on the real one.

It checks that the build stage installs the gateway and its dependencies from PyPI, the
final stage Tesseract and tini from Debian; that the image runs as user 10001 with tini
as its entrypoint and has its HEALTHCHECK; that no compiler is left in it; and, running
the image's own commands in a container of it: `records-gateway init`, then the API as
the image starts it (gunicorn with deploy/gunicorn.conf.py) on a loopback port, the
image's health check passing against it, and failing once the API is stopped.
Prints each step as it goes; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BASE = "localhost/records-gateway-base:bookworm"
IMAGE = "localhost/records-gateway:check"
MIRROR = "http://deb.debian.org/debian"
COMPILERS = ("gcc", "cc", "c++", "g++", "make", "ld")


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"image: {msg}", flush=True)


def run(*args: str, check: bool = True, quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), text=True, capture_output=True, **kwargs)
    if check and out.returncode != 0:
        raise CheckFailed(f"{' '.join(args[:4])} ... exited {out.returncode}: "
                          f"{(out.stderr or out.stdout)[-1500:]}")
    if not quiet and out.stdout.strip():
        for line in out.stdout.strip().splitlines()[-3:]:
            say(f"  {line}")
    return out


def tools() -> None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        say(f"installing {', '.join(missing)} from Debian's packages")
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, quiet=True)


def local_base(work: Path) -> str:
    """Debian bookworm with Debian's Python 3.11 as `python`, as an image."""
    rootfs = work / "rootfs"
    say(f"debootstrap bookworm (minbase) from {MIRROR}")
    started = time.monotonic()
    run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR, quiet=True)
    container = run("buildah", "from", "scratch", quiet=True).stdout.strip()
    try:
        mount = Path(run("buildah", "mount", container, quiet=True).stdout.strip())
        run("cp", "-a", f"{rootfs}/.", str(mount), quiet=True)
        run("buildah", "umount", container, quiet=True)
        say("installing Debian's python3.11 and python3.11-venv in it")
        run("buildah", "run", "--isolation", "chroot", container, "--", "sh", "-c",
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "--no-install-recommends python3.11 python3.11-venv ca-certificates "
            "&& rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/python3.11 /usr/local/bin/python "
            "&& ln -s /usr/bin/python3.11 /usr/local/bin/python3", quiet=True)
        run("buildah", "config", "--env", "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env", "LANG=C.UTF-8", "--cmd", "python", container, quiet=True)
        run("buildah", "commit", "--quiet", container, LOCAL_BASE, quiet=True)
    finally:
        run("buildah", "rm", container, check=False, quiet=True)
    say(f"base image {LOCAL_BASE} made in {time.monotonic() - started:.0f} s")
    return LOCAL_BASE


def lent_ca(work: Path, bundle: str | None) -> list[str]:
    """Where this machine reaches PyPI through a proxy with its own CA, the build's RUN
    steps are lent the host's CA bundle and a pip.conf naming it (mounted, read-only:
    nothing of it goes into the image)."""
    if not bundle:
        return []
    conf = work / "pip.conf"
    conf.write_text("[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n")
    say(f"lending the build the host's CA bundle ({bundle}) for pip")
    return ["--volume", f"{bundle}:/etc/ssl/certs/host-ca-bundle.crt:ro",
            "--volume", f"{conf}:/etc/pip.conf:ro"]


def build(base: str, mounts: list[str]) -> float:
    say(f"buildah bud -f deploy/Dockerfile on {base} (both stages)")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["buildah", "bud", "--isolation", "chroot", "--format", "docker", "--layers=false",
         "--pull-never" if base.startswith("localhost/") else "--pull", *mounts, "--build-arg",
         f"PYTHON_IMAGE={base}", "-f", "deploy/Dockerfile", "-t", IMAGE, "."],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if "STEP " in line:  # "[1/2] STEP 3/10: RUN ..."
            say(f"  {line.strip()[:110]}")
    if proc.wait() != 0:
        raise CheckFailed("the build failed:\n" + "\n".join(tail))
    took = time.monotonic() - started
    say(f"built {IMAGE} in {took:.0f} s")
    return took


def configuration() -> dict:
    config = json.loads(run("buildah", "inspect", "--type", "image", IMAGE, quiet=True).stdout)
    docker = config.get("Docker", {}).get("config", {})
    return {"user": docker.get("User"), "entrypoint": docker.get("Entrypoint"),
            "cmd": docker.get("Cmd"), "healthcheck": (docker.get("Healthcheck") or {}).get("Test"),
            "size_mb": round(sum(layer.get("size", 0) for layer in
                                 json.loads(config.get("Manifest") or "{}").get("layers", [])) / 1e6)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exercise(env: list[str]) -> dict:
    """Run the image's own commands in a container of it (the host's network: loopback)."""
    container = run("buildah", "from", "--pull-never", IMAGE, quiet=True).stdout.strip()
    api = None
    try:
        def inside(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            return run("buildah", "run", "--isolation", "chroot", *env, container, "--", *args,
                       check=check, quiet=True)

        found = {"uid": inside("id", "-u").stdout.strip()}
        found["compilers"] = inside("sh", "-c", " ; ".join(f"command -v {c}" for c in COMPILERS),
                                    check=False).stdout.split()
        found["version"] = inside("python", "-c", "import importlib.metadata as m; "
                                  "print('records-gateway', m.version('records-gateway'))").stdout.strip()
        found["tesseract"] = inside("tesseract", "--version").stdout.splitlines()[0:1]
        inside("records-gateway", "init")
        say("records-gateway init ran; starting the API as the image does (tini, gunicorn)")
        image = configuration()
        # (tini is not PID 1 here: a subreaper instead, as it asks)
        api_log = tempfile.TemporaryFile("w+")  # gunicorn's log: shown if it exits
        api = subprocess.Popen(["buildah", "run", "--isolation", "chroot", *env, "--env", "TINI_SUBREAPER=1",
                                container, "--", *image["entrypoint"], *image["cmd"]],
                               stdout=api_log, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        health = image["healthcheck"][1:]  # ["CMD", program, args...]
        deadline = time.monotonic() + 90
        while True:
            if api.poll() is not None:
                api_log.seek(0)
                raise CheckFailed(f"the API exited {api.returncode}: {api_log.read()[-1500:]}")
            if inside(*health, check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise CheckFailed("the image's health check did not pass within 90 s")
            time.sleep(1)
        found["healthy_while_serving"] = True
        stop(api, signal.SIGTERM)
        found["healthy_once_stopped"] = inside(*health, check=False).returncode == 0
        return found
    finally:
        if api is not None:
            stop(api, signal.SIGKILL)
        run("buildah", "rm", container, check=False, quiet=True)


def session(sid: int) -> list[int]:
    """Every process of session `sid` (the API's was started in one of its own: buildah's
    chroot helper and tini leave gunicorn to be reparented, but never in another session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def stop(proc: subprocess.Popen, sig: int) -> None:
    """Signal every process of `proc`'s session, by PID; wait until all are gone."""
    deadline = time.monotonic() + 30
    while pids := session(proc.pid):
        for pid in pids:
            try:
                os.kill(pid, sig if time.monotonic() < deadline else signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="the base image to build on (default: one made here from Debian)")
    ap.add_argument("--keep", action="store_true", help="keep the images afterwards")
    ap.add_argument("--ca-bundle", default=os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE"),
                    help="the host's CA bundle, lent to pip in the build (default: $PIP_CERT, "
                         "else $SSL_CERT_FILE; none when neither is set)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("image: run as root (buildah's chroot isolation)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="image-check-"))
    started = time.monotonic()
    try:
        tools()
        base = args.base or local_base(work)
        build_s = build(base, lent_ca(work, args.ca_bundle))
        config = configuration()
        say(f"image config: user {config['user']}, entrypoint {config['entrypoint']}, "
            f"health check {config['healthcheck']}, {config['size_mb']} MB of layers")
        port = free_port()
        found = exercise(["--env", f"GATEWAY_BIND=127.0.0.1:{port}", "--env", "GATEWAY_HTTP_WORKERS=1"])
        say(f"in a container: uid {found['uid']}, {found['version']}, {' '.join(found['tesseract'])}, compilers found: "
            f"{found['compilers'] or 'none'}; health check passes while the API serves, "
            f"{'passes' if found['healthy_once_stopped'] else 'fails'} once it is stopped")
        problems = []
        if config["user"] != "10001:10001" or found["uid"] != "10001":
            problems.append(f"runs as {config['user']} (uid {found['uid']}), not 10001")
        if not config["entrypoint"] or config["entrypoint"][0] != "tini":
            problems.append(f"entrypoint {config['entrypoint']}, not tini")
        if not config["healthcheck"] or "healthcheck.py" not in " ".join(config["healthcheck"]):
            problems.append("no HEALTHCHECK running healthcheck.py")
        if found["compilers"]:
            problems.append(f"compilers in the final image: {found['compilers']}")
        if found["healthy_once_stopped"]:
            problems.append("the health check passes with the API stopped")
        result = {"built": True, "base": base, "build_s": round(build_s), "size_mb": config["size_mb"],
                  "user": config["user"], "compilers": found["compilers"],
                  "healthy_while_serving": found["healthy_while_serving"],
                  "healthy_once_stopped": found["healthy_once_stopped"], "problems": problems,
                  "elapsed_s": round(time.monotonic() - started)}
    except CheckFailed as exc:
        print(f"image: {exc}", file=sys.stderr)
        result = {"built": False, "problems": [str(exc)[:500]], "elapsed_s": round(time.monotonic() - started)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            for image in (IMAGE, LOCAL_BASE):
                subprocess.run(["buildah", "rmi", image], capture_output=True)
    print(json.dumps(result))
    return 0 if result["built"] and not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
