"""Starting the `tritonserver` of the nvidia-pytriton wheel on a repository, and stopping it.

The wheel ships a real Triton (2.51 in nvidia-pytriton 0.7) with the Python backend only. Three
facts of that build decide how it is started:

- its Python-backend stub is compiled against numpy 1.x, so the models run in their own
  environment, where `deploytool[serve]` is installed (numpy < 2; `scripts/setup_serve.sh` makes
  `.venv-serve`), separate from deploytool's (numpy 2 is fine there);
- the stub embeds `libpython3.X.so`, resolved by the dynamic linker: a Python built outside the
  system (pyenv) has it in its own `lib/`, which must come first on LD_LIBRARY_PATH, or the
  system's libpython is picked up with the system's standard library and packages;
- the embedded interpreter's `sys.prefix` is the base Python's, not the environment's, and it
  reads no `.pth` file: the environment's site-packages go on PYTHONPATH, alone, and deploytool
  must be installed there from its wheel (an editable install's source root, named by a `.pth`
  file, would not be seen).

The server imports the deploytool installed in that environment, never this process's: an
environment whose deploytool differs from this one, file by file, is refused in one line naming
the fix, so changed sources are never served stale. These are settings of the server process
only; the repository names no path of this machine and stays portable (a per-model
EXECUTION_ENV_PATH would tie it to this machine's environment).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import deploytool
from deploytool.errors import DeployError

SERVE_ENV_VARIABLE = "DEPLOYTOOL_SERVE_ENV"
DEFAULT_ENV_NAME = ".venv-serve"
PACKAGE_DIR = Path(deploytool.__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
SETUP_HINT = f"run scripts/setup.sh or scripts/setup_serve.sh (it installs deploytool[serve,openvino] into {DEFAULT_ENV_NAME}), or pass --env with an environment where deploytool[serve] is installed"


@dataclass(frozen=True)
class ServerEnvironment:
    """A Python environment holding nvidia-pytriton and the models' packages."""

    prefix: Path
    python_version: str  # "3.11"
    site_packages: Path
    libpython_dir: Path  # where the base interpreter keeps libpython3.X.so

    @property
    def triton_dir(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.triton_dir / "bin" / "tritonserver"

    @property
    def wheel_libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"


_PROBE = """
import json, os, sys, sysconfig
try:
    import numpy
    numpy_version = numpy.__version__
except ImportError:
    numpy_version = None
try:
    import deploytool
    deploytool_dir = os.path.dirname(os.path.realpath(deploytool.__file__))
except ImportError:
    deploytool_dir = None
print(json.dumps({"version": f"{sys.version_info[0]}.{sys.version_info[1]}", "purelib": sysconfig.get_paths()["purelib"],
                  "libdir": sysconfig.get_config_var("LIBDIR"), "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")), "numpy": numpy_version,
                  "deploytool": deploytool_dir}))
"""


def find_environment(env: Path | None = None) -> ServerEnvironment:
    """The server environment: `env`, else $DEPLOYTOOL_SERVE_ENV, else `.venv-serve` beside
    deploytool's source; checked for everything the wheel's Triton needs and for this deploytool
    installed in it, refused in one line."""
    chosen = env or (Path(os.environ[SERVE_ENV_VARIABLE]) if os.environ.get(SERVE_ENV_VARIABLE) else SOURCE_ROOT / DEFAULT_ENV_NAME)
    facts = _probe(chosen)
    found = ServerEnvironment(chosen.resolve(), facts["version"], Path(facts["purelib"]), Path(facts["libdir"]))
    _check_triton(found, facts, chosen)
    _check_deploytool(found, facts["deploytool"], chosen)
    return found


def _probe(chosen: Path) -> dict:
    """What the environment's Python reports about itself, run isolated (-I: no PYTHONPATH, no
    current folder on sys.path), as the server's Python sees it."""
    python = chosen / "bin" / "python"
    if not python.is_file():
        raise DeployError(f"no server environment at {chosen}: {SETUP_HINT}")
    probe = subprocess.run([str(python), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        raise DeployError(f"{python} does not run: {last}")
    return json.loads(probe.stdout)


def _check_triton(found: ServerEnvironment, facts: dict, chosen: Path) -> None:
    if not found.binary.is_file():
        raise DeployError(f"{chosen} has no nvidia-pytriton (no {found.binary}): {SETUP_HINT}")
    if facts["numpy"] is None or int(facts["numpy"].split(".")[0]) >= 2:
        have = "no numpy" if facts["numpy"] is None else f"numpy {facts['numpy']}"
        raise DeployError(f"{chosen} has {have}: the wheel's Python backend is built against numpy 1.x (pip install 'numpy<2' there)")
    if not facts["shared"]:
        raise DeployError(
            f"{chosen / 'bin' / 'python'} is a Python built without libpython{found.python_version}.so, which Triton's Python backend embeds; use a shared-library build"
        )
    if not (found.triton_dir / "python_backend_stubs" / found.python_version / "triton_python_backend_stub").is_file():
        raise DeployError(f"nvidia-pytriton in {chosen} has no Python-backend stub for Python {found.python_version}")


def _check_deploytool(found: ServerEnvironment, imported_from: str | None, chosen: Path) -> None:
    """deploytool must be installed in the environment's site-packages (the only folder on the
    server's PYTHONPATH) and hold the same files as the deploytool running this launcher."""
    installed = found.site_packages / "deploytool"
    if imported_from is None:
        raise DeployError(f"{chosen} has no deploytool: {SETUP_HINT}")
    if Path(imported_from) != installed.resolve():
        raise DeployError(
            f"{chosen} imports deploytool from {imported_from}, not from its site-packages (an editable install? Triton's embedded Python reads no .pth file): {SETUP_HINT}"
        )
    differing = first_difference(installed, PACKAGE_DIR)
    if differing is not None:
        raise DeployError(
            f"the deploytool installed in {chosen} is not this one ({differing} differs from {PACKAGE_DIR / differing}): "
            "reinstall it (scripts/setup_serve.sh does, for .venv-serve)"
        )


def package_files(folder: Path) -> dict[str, str]:
    """{path relative to `folder`: sha256 of its bytes} for every file of a package folder, the
    byte-code caches left out."""
    files = (path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.relative_to(folder).parts)
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def first_difference(installed: Path, source: Path) -> str | None:
    """The first file (in name order) that one package folder holds and the other does not, or
    holds with other bytes; None when they hold the same files."""
    theirs, ours = package_files(installed), package_files(source)
    return next((name for name in sorted(theirs.keys() | ours.keys()) if theirs.get(name) != ours.get(name)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def is_ready(url: str) -> bool:
    """Whether a Triton server at `url` answers that it and all its models are ready."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_environment(env: ServerEnvironment) -> dict[str, str]:
    """The process environment tritonserver (and its Python stubs, its children) run in: Python
    finds packages in the environment's site-packages only (no source root, none of this
    process's folders)."""
    variables = dict(os.environ)

    def prepend(name: str, *paths: Path) -> None:
        variables[name] = os.pathsep.join([str(p) for p in paths] + ([variables[name]] if variables.get(name) else []))

    prepend("LD_LIBRARY_PATH", env.libpython_dir, env.wheel_libs)
    prepend("PATH", env.prefix / "bin")
    variables["PYTHONPATH"] = str(env.site_packages)
    variables.pop("PYTHONHOME", None)
    return variables


def _backends(env: ServerEnvironment, into: Path) -> Path:
    """A backend folder with the Python backend and the stub for the environment's Python (the
    wheel keeps one stub per Python version beside the backend, as pytriton itself arranges)."""
    python_backend = into / "backends" / "python"
    shutil.copytree(env.triton_dir / "backends" / "python", python_backend)
    shutil.copy2(env.triton_dir / "python_backend_stubs" / env.python_version / "triton_python_backend_stub", python_backend / "triton_python_backend_stub")
    return into / "backends"


# Logged as errors by the wheel's Triton on every machine without a GPU; not why anything failed.
_BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)


def _first_error(log: Path) -> str:
    """The first error Triton logged (lines 'E<date> <time> <thread> <file:line>] "message"'),
    its message's first line only."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [line for line in lines if line[:1] == "E" and line[1:5].isdigit() and not any(b in line for b in _BENIGN_ERRORS)]
    if not errors:
        return " ".join((lines[-1] if lines else "no output").split())[:600]
    message = errors[0].split("] ", 1)[-1].strip().strip('"')
    return " ".join(message.split("\\n")[0].split())[:600]


def keep_log(log: Path) -> Path:
    """A copy of `log` in the temporary folder under a new, unpredictable name (mkstemp: created
    exclusively, mode 0600), so nothing planted there in advance is followed or overwritten."""
    fd, kept = tempfile.mkstemp(prefix="deploytool-tritonserver-", suffix=".log")
    with os.fdopen(fd, "wb") as out, open(log, "rb") as source:
        shutil.copyfileobj(source, out)
    return Path(kept)


class TritonServer:
    """tritonserver on `repo`, HTTP on host:port only (no gRPC, no metrics); a context manager
    that always stops it (and its Python stubs) on leaving."""

    def __init__(self, repo: Path, *, host: str = "127.0.0.1", http_port: int = 8000, env: Path | None = None, log: Path | None = None):
        self.repo, self.host, self.http_port = Path(repo).resolve(), host, http_port
        self.environment = find_environment(env)
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.log = log
        self.kept_log = log  # where the message of a failure says the log is
        self.ready_timeout = 180.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> None:
        if not self.repo.is_dir():
            raise DeployError(f"model repository not found: {self.repo}")
        self.workdir = Path(tempfile.mkdtemp(prefix="deploytool-triton-"))
        backends = _backends(self.environment, self.workdir)
        self.log = self.log or self.workdir / "tritonserver.log"
        command = [
            str(self.environment.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
        ]
        with open(self.log, "wb") as log:
            # its own session: Ctrl-C reaches deploytool, which stops the server once, in order; in
            # the work folder, since the models' Python puts its current folder first on sys.path
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=server_environment(self.environment), cwd=self.workdir, start_new_session=True
            )

    def ready(self) -> bool:
        return is_ready(self.url)

    def models(self) -> list[dict]:
        request = urllib.request.Request(f"{self.url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def failure(self, what: str) -> DeployError:
        """`what` with Triton's first error, the full log kept where the message says (a log in
        the work folder, which `stop` removes, is copied out first)."""
        self.kept_log = self.log
        if self.log is not None and self.workdir is not None and self.log.is_relative_to(self.workdir) and self.log.exists():
            self.kept_log = keep_log(self.log)
        return DeployError(f"{what}: {_first_error(self.log)} (log: {self.kept_log})")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise self.failure(f"tritonserver exited ({code}) before its models were ready")
            if self.ready():
                return
            time.sleep(0.2)
        raise self.failure(f"tritonserver's models were not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT (Triton unloads its models and exits), then SIGKILL for the whole session after `timeout`."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stubs left behind by a server that did not exit
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve_forever(server: TritonServer, *, ready_timeout: float = 180.0, say=lambda message: print(message, file=sys.stderr)) -> None:
    """Run until Ctrl-C (or until the server exits by itself, which is an error)."""
    server.ready_timeout = ready_timeout

    def terminate(signum, frame):
        raise KeyboardInterrupt  # SIGTERM (kill, a service manager) stops the server as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, terminate)
    # Python leaves SIGINT ignored where the parent ignored it (a background job of a
    # non-interactive shell, `nohup`), and Ctrl-C would then never stop the server
    previous_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _serve(server, say)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_interrupt)


def _serve(server: TritonServer, say) -> None:
    say(f"starting tritonserver on {server.repo} at {server.url}, models from {server.environment.prefix}; waiting until they are ready")
    with server:
        try:
            names = sorted(model["name"] for model in server.models() if model.get("state") == "READY")
            say(f"serving {len(names)} model(s) at {server.url}: {', '.join(names)} (log: {server.log}); Ctrl-C stops")
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            # a second Ctrl-C must not cut the shutdown short and leave the server behind
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            say("stopping tritonserver")
            return
        raise server.failure(f"tritonserver exited ({server.process.returncode if server.process else '?'})")
