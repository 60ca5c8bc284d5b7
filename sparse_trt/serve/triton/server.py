"""Find, start, watch and stop a ``tritonserver`` process.

Where the binary comes from, in order: an explicit path (argument or ``$SPARSE_TRT_TRITONSERVER``),
NVIDIA's container (``/opt/tritonserver``), ``tritonserver`` on PATH, or the build bundled in the
``nvidia-pytriton`` wheel (runs on CPU). The wheel ships its Python backend without a stub next to it
(one stub per Python version lives in ``python_backend_stubs/``), so we assemble a private backend
folder holding the backend library, its utils module and the stub for *this* interpreter, and start
the server with this interpreter's libpython first on LD_LIBRARY_PATH and its ``bin/`` first on PATH:
the stub then embeds this environment's Python, so models import this environment's torch.

The server's life is tied to the process that started it: on Linux the kernel kills it when that
process dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so ``kill -9`` of ``sparse-trt triton serve`` leaves no
server; our Python models' stubs exit within a second of their server), and it runs in its own process
group, which ``stop()`` kills last. SIGKILL, not SIGTERM: a server draining an in-flight generation after
its parent died was seen to hang in its own shutdown for over a minute, and nobody is left to drain for. Before start-up the host and ports are checked; a busy port is reported with the PID holding it and
whether that is a stale server of ours. On shutdown a drain file appears (its path is in the server's
environment as ``SPARSE_TRT_DRAIN_FILE``): our Python models then refuse new requests with UNAVAILABLE
while the in-flight ones finish.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .check import check_repo
from .errors import (
    ModelLoadFailed,
    PortInUseError,
    ServerOptionError,
    TritonNotFoundError,
    TritonRepoError,
    TritonServerError,
)

log = logging.getLogger(__name__)

CONTAINER_ROOT = Path("/opt/tritonserver")
ENV_BINARY = "SPARSE_TRT_TRITONSERVER"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "sparse_trt_pb_"
DRAIN_ENV = "SPARSE_TRT_DRAIN_FILE"  # read by python_models/*.py
EXIT_TIMEOUT_ENV = "SPARSE_TRT_EXIT_TIMEOUT_S"  # python_models/*.py stop draining just before it
PR_SET_PDEATHSIG = 1
HOW_TO_GET = (
    "pip install 'sparse_trt[triton]' (the nvidia-pytriton wheel bundles a CPU-capable tritonserver), "
    "or run inside NVIDIA's Triton / TensorRT-LLM container (/opt/tritonserver), "
    f"or point ${ENV_BINARY} at a tritonserver binary"
)


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    source: str  # "explicit" | "container" | "path" | "pytriton"
    root: Path  # the folder holding bin/, backends/

    @property
    def bundled(self) -> bool:
        return self.source == "pytriton"


def _pytriton_root() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_tritonserver(explicit: str | Path | None = None) -> TritonInstall:
    """Locate a tritonserver binary; TritonNotFoundError says how to get one."""
    given = explicit or os.environ.get(ENV_BINARY)
    if given:
        p = Path(given).expanduser()
        if p.is_dir():
            p = p / "bin" / "tritonserver"
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise TritonNotFoundError(f"tritonserver '{given}' does not exist or is not executable", fix=HOW_TO_GET)
        root = p.parent.parent
        if (root / "python_backend_stubs").is_dir():
            return TritonInstall(p, "pytriton", root)
        return TritonInstall(p, "explicit", root)
    c = CONTAINER_ROOT / "bin" / "tritonserver"
    if c.is_file():
        return TritonInstall(c, "container", CONTAINER_ROOT)
    w = shutil.which("tritonserver")
    if w:
        p = Path(w).resolve()
        return TritonInstall(p, "path", p.parent.parent)
    root = _pytriton_root()
    if root is not None:
        return TritonInstall(root / "bin" / "tritonserver", "pytriton", root)
    raise TritonNotFoundError("no tritonserver binary found (looked at $" + ENV_BINARY + ", /opt/tritonserver, PATH "
                              "and the nvidia-pytriton wheel)", fix=HOW_TO_GET)


def prepare_backend_dir(install: TritonInstall, into: Path) -> Path:
    """A backends/ folder for the wheel's server: python backend + the stub for this interpreter."""
    src = install.root / "backends" / "python"
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = install.root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (install.root / "python_backend_stubs").iterdir() if p.is_dir())
        raise TritonNotFoundError(f"the bundled tritonserver has no Python backend stub for Python {ver} "
                                  f"(it has {', '.join(have) or 'none'})",
                                  fix="use one of those Python versions, or NVIDIA's Triton container")
    dst = Path(into) / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).symlink_to(f)
    (dst / "triton_python_backend_stub").symlink_to(stub)
    for other in sorted((install.root / "backends").iterdir()):
        if other.is_dir() and other.name != "python":
            (Path(into) / other.name).symlink_to(other, target_is_directory=True)
    return Path(into)


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if install.bundled:
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        ldl = sysconfig.get_config_var("LDLIBRARY") or ""
        if libdir and ldl and not (Path(libdir) / ldl).exists():
            log.warning("this Python has no shared libpython in %s: the Python backend stub may pick up another "
                        "Python's library", libdir)
        parts = [libdir] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in parts if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# ------------------------------------------------------------------------------------------ ports
def check_port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ServerOptionError(f"{what} {port} is not a TCP port", fix=f"pass {what} between 1 and 65535")
    return port


def check_host(host: str) -> str:
    """The host must resolve; an unknown name is an input error, not a busy port."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ServerOptionError(f"--host '{host}' is not an address or a name that resolves ({e})",
                                fix="use 127.0.0.1 (loopback, the default), 0.0.0.0 (all interfaces) or this machine's "
                                "address") from None
    return host


def port_free(host: str, port: int) -> bool:
    """True if ``port`` can be bound on ``host``; ServerOptionError when the host itself cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        check_host(host)  # raises with the reason
        raise
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            if e.errno == errno.EACCES:
                raise ServerOptionError(f"port {port} on {host} needs privileges ({e.strerror})",
                                        fix="use a port above 1023") from None
            raise ServerOptionError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                                    fix="--host must be an address of this machine (127.0.0.1 by default)") from None
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(parts[9])
    return inodes


def port_holder(port: int) -> int | None:
    """PID of a process listening on ``port`` (Linux /proc; None if unknown or not visible to us)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fd in (d / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(d.name)
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(pid: int) -> str:
    """'pid N (cmd)', and whether it is a tritonserver of ours and if the sparse-trt process that started it lives."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cmd = [a.decode(errors="replace") for a in argv if a]
    except OSError:
        return f"pid {pid}"
    name = Path(cmd[0]).name if cmd else "?"
    text = f"pid {pid} ({name})"
    m = next((re.search(re.escape(SHM_PREFIX) + r"(\d+)_", a) for a in cmd if SHM_PREFIX in a), None)
    if m:
        owner = int(m.group(1))
        if _alive(owner):
            text += f", a tritonserver started by sparse-trt (pid {owner}, still running)"
        else:
            text += (f", a stale tritonserver of sparse-trt: the process that started it (pid {owner}) is gone; "
                     f"stop it with `kill {pid}`")
    elif name == "tritonserver":
        text += ", a tritonserver not started by sparse-trt"
    elif any("sparse-trt" in a or "sparse_trt" in a for a in cmd) and "serve" in cmd:
        text += ", a running `sparse-trt triton serve` (its HTTP front)"
    return text


def _parent_death_signal(parent: int) -> Callable[[], None]:
    """Popen preexec_fn: the child is killed when ``parent`` dies (Linux prctl); it exits at once if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls into it

    def preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cleanup_shm(prefix: str) -> list[Path]:
    """Remove Python-backend shared-memory files with ``prefix`` (left behind when a server is killed)."""
    removed = []
    if not SHM_DIR.is_dir():
        return removed
    for p in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def cleanup_stale_shm() -> list[Path]:
    """Remove our shm regions whose owning sparse_trt process is gone (prefix holds its pid)."""
    removed = []
    if not SHM_DIR.is_dir():
        return removed
    pat = re.compile(re.escape(SHM_PREFIX) + r"(\d+)_")
    for p in SHM_DIR.glob(f"{SHM_PREFIX}*"):
        m = pat.match(p.name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
        except PermissionError:
            pass
    return removed


# ------------------------------------------------------------------------------------------ server
_LOAD_FAIL = re.compile(r"failed to load|UNAVAILABLE:|Poll failed for model|failed to initialize", re.I)
_PORT_FAIL = re.compile(r"address already in use|failed to start .*(service|server)|bind", re.I)


class TritonServer:
    """One tritonserver process over one or more model repositories. Use as a context manager."""

    def __init__(
        self,
        repos: Sequence[Path],
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        install: TritonInstall | None = None,
        log_file: Path | None = None,
        log_verbose: int = 0,
        exit_timeout_s: int = 30,
        on_log_line: Callable[[str], None] | None = None,
        extra_args: Sequence[str] = (),
        check: bool = True,
        http_front: bool = True,
    ) -> None:
        if not repos:
            raise TritonRepoError("no model repository given", fix="pass the folder written by `sparse-trt triton repo`")
        self.repos = [Path(r).absolute() for r in repos]
        self.host = host
        ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        for what, p in ports.items():
            check_port(p, what)
        if len(set(ports.values())) < 3:
            raise ServerOptionError(f"the ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}",
                                    fix="give --http-port, --grpc-port and --metrics-port three different ports")
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.install = install
        self.log_file = Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.on_log_line = on_log_line
        self.extra_args = list(extra_args)
        self.check = check
        self.proc: subprocess.Popen | None = None
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        self._tmp: Path | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._reader: threading.Thread | None = None
        self._log_fh = None
        self.models_ready: list[str] = []
        self.drain_file: Path | None = None
        # HTTP: our front (front.py) on host:http_port, tritonserver's own HTTP endpoint on a loopback port
        self.http_front = http_front
        self._front = None
        self._triton_http_port = http_port

    # -- addresses
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    def log_tail(self, n: int = 30) -> list[str]:
        return list(self._tail)[-n:]

    # -- life cycle
    def command(self, backend_dir: Path | None) -> list[str]:
        assert self.install is not None
        cmd = [str(self.install.binary)]
        cmd += [f"--model-repository={r}" for r in self.repos]
        cmd += [
            f"--http-address={'127.0.0.1' if self.http_front else self.host}", f"--http-port={self._triton_http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--disable-auto-complete-config",
        ]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd + self.extra_args

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        if self.proc is not None:
            return self
        for r in self.repos:
            if self.check:
                rep = check_repo(r)
                if not rep.ok:
                    raise TritonRepoError(f"model repository '{r}' has problems:\n  " + "\n  ".join(rep.problems),
                                          fix=f"run `sparse-trt triton check {r}` and regenerate the repository")
            elif not r.is_dir():
                raise TritonRepoError(f"model repository '{r}' does not exist", fix="check the path")
        check_host(self.host)
        busy = []
        for what, p in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            if not port_free(self.host, p):
                pid = port_holder(p)
                busy.append(f"{what} {p} (held by {describe_holder(pid)})" if pid else f"{what} {p}")
        if busy:
            raise PortInUseError(f"port(s) already in use on {self.host}: {'; '.join(busy)}",
                                 fix="stop the other server, or pick free ports with --http-port/--grpc-port/--metrics-port")
        self.install = self.install or find_tritonserver()
        cleanup_stale_shm()
        backend_dir = None
        self._tmp = Path(tempfile.mkdtemp(prefix="sparse_trt_triton_"))
        self.drain_file = self._tmp / "draining"
        if self.install.bundled:
            backend_dir = prepare_backend_dir(self.install, self._tmp / "backends")
        if self.http_front:
            from .front import HttpFront

            self._triton_http_port = free_port("127.0.0.1")
            try:
                self._front = HttpFront(self.host, self.http_port, ("127.0.0.1", self._triton_http_port)).start()
            except OSError as e:
                self._cleanup()
                raise PortInUseError(f"cannot listen on {self.host}:{self.http_port}: {e}",
                                     fix="pick a free port with --http-port") from None
        cmd = self.command(backend_dir)
        log.info("starting %s", " ".join(cmd))
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_file, "w", encoding="utf-8")  # noqa: SIM115 - closed in _cleanup
        try:
            env = server_env(self.install)
            env[DRAIN_ENV] = str(self.drain_file)
            env[EXIT_TIMEOUT_ENV] = str(self.exit_timeout_s)
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, text=True, errors="replace", bufsize=1,
                preexec_fn=_parent_death_signal(os.getpid()) if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        except OSError as e:
            self._cleanup()
            raise TritonServerError(f"could not run {self.install.binary}: {e}", fix=HOW_TO_GET) from None
        self._reader = threading.Thread(target=self._read_log, name="tritonserver-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            if self._log_fh:
                self._log_fh.write(line + "\n")
                self._log_fh.flush()
            if self.on_log_line:
                with contextlib.suppress(Exception):
                    self.on_log_line(line)

    @property
    def _triton_http_url(self) -> str:
        return f"127.0.0.1:{self._triton_http_port}" if self.http_front else self.http_url

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self._triton_http_url}{path}", timeout=timeout) as r:  # noqa: S310 - loopback
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def ready(self) -> bool:
        return self._get("/v2/health/ready") == 200

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        t0 = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                if self._reader:
                    self._reader.join(timeout=5)
                raise self._startup_error(code)
            if self.ready():
                self.models_ready = self._ready_models()
                return
            if time.monotonic() - t0 > timeout_s:
                tail = "\n  ".join(self.log_tail(15))
                raise TritonServerError(f"tritonserver was not ready after {timeout_s:.0f}s; last log lines:\n  {tail}",
                                        fix="a large model may need a longer --startup-timeout; see the log")
            time.sleep(0.2)

    def _ready_models(self) -> list[str]:
        import json

        try:
            req = urllib.request.Request(f"http://{self._triton_http_url}/v2/repository/index", data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
                return sorted(m["name"] for m in json.loads(r.read()) if m.get("state") == "READY")
        except Exception:  # noqa: BLE001 - informational only
            return []

    def _startup_error(self, code: int) -> TritonServerError:
        lines = self.log_tail(400)
        loads = [ln.strip() for ln in lines if _LOAD_FAIL.search(ln)]
        ports = [ln.strip() for ln in lines if _PORT_FAIL.search(ln)]
        tail = "\n  ".join(self.log_tail(12))
        where = f" (full log: {self.log_file})" if self.log_file else ""
        if loads:
            reasons = "\n  ".join(dict.fromkeys(loads))
            return ModelLoadFailed(f"tritonserver exited (code {code}): a model failed to load:\n  {reasons}",
                                   fix=f"fix the model or regenerate the repository; check it with `sparse-trt triton check`{where}")
        if ports:
            return PortInUseError(f"tritonserver could not open its ports (exit code {code}):\n  " + "\n  ".join(ports),
                                  fix="pick free ports with --http-port/--grpc-port/--metrics-port")
        return TritonServerError(f"tritonserver exited during start-up (code {code}); last log lines:\n  {tail}",
                                 fix=f"read the log above{where}")

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (or timeout); return its exit code (None if still running)."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def begin_drain(self) -> None:
        """From now on our Python models refuse new requests (UNAVAILABLE); in-flight ones continue."""
        if self._front is not None:
            self._front.drain()
        if self.drain_file is not None:
            with contextlib.suppress(OSError):
                self.drain_file.touch()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.begin_drain()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests for up to exit_timeout_s), then SIGKILL the group."""
        code = None
        if self.proc is not None:
            self.signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout_s if timeout_s is not None else self.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit in time: killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                code = self.proc.wait(10)
            # stubs live in the server's session: make sure none outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self._reader:
                self._reader.join(timeout=5)
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        if self._front is not None:
            self._front.stop()
            self._front = None
        cleanup_shm(self.shm_prefix)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
