"""A real Slurm (Debian's slurmctld, slurmd and munge) on one host, for the demo and tests.

Everything lives in one state directory: a munge key and socket, ``slurm.conf`` and
``gres.conf`` generated from this host's name and the site topology (one partition per
GPU pod), fake GPUs as character device nodes for gres, spool, state, logs and pid files.
By default the cluster has one node named after the host. With ``nodes=N`` it has N nodes
(``node1`` .. ``nodeN``), each its own slurmd (``slurmd -N <name>``) on its own port with its
own spool, log, pid file and fake GPUs, all on this host: enough to run multi-node jobs and
shrink them (``NodeHostname`` is the host for all of them, ``NodeAddr`` loopback).
Daemons run as the current user on free loopback ports, so several clusters can run side
by side (a test session beside the demo). ``start`` waits until the node is idle;
``stop`` shuts everything down. Both are idempotent.

The controller also accepts JWTs (``AuthAltTypes=auth/jwt``, key in the state directory)
when Debian's JWT plugin is installed, so ``start(rest=True)`` or ``start_rest()`` can add
slurmrestd: a REST API on a free loopback port, running as an unprivileged user (it refuses
root), answering requests that carry a token from ``rest_token()``. ``serve`` runs the cluster in the foreground
(a container's main process: ``opsloop slurm up --foreground``) until SIGTERM, slurmrestd on a chosen address
and port, and keeps a token in a file for its clients (``Settings.slurm_jwt_file``), renewed before it expires.

>>> conf = render_slurm_conf(SlurmLayout(Path("/s"), "node1", 6817, 6818, ("batch", "train")), gpus=8)
>>> print(conf.splitlines()[0])
ClusterName=opsloop
>>> [line for line in conf.splitlines() if line.startswith("PartitionName=batch")]
['PartitionName=batch Nodes=node1 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4']
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from opsloop.config.site import Site

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("scontrol", "sbatch", "squeue", "sinfo", "scancel")
SBIN = Path("/usr/sbin")
PLUGIN_GLOB = "/usr/lib/*/slurm-wlm/"  # Debian's multiarch plugin directory
REST_USER = "nobody"  # slurmrestd drops to this user: it refuses to run as root or as SlurmUser


class SlurmSetupError(RuntimeError):
    """The local Slurm cannot be started; the message says what to do."""


@dataclass(frozen=True)
class SlurmLayout:
    """Where a local cluster keeps its files, and its identity."""

    state_dir: Path
    host: str
    ctld_port: int
    slurmd_port: int
    partitions: tuple[str, ...]
    cluster: str = "opsloop"
    node_ports: tuple[int, ...] = ()  # one slurmd port per node of a multi-node cluster; empty: one node, the host

    @property
    def nodes(self) -> tuple[str, ...]:
        """The compute nodes' names: the host alone, or ``node1`` .. ``nodeN`` on this host."""
        return tuple(f"node{i}" for i in range(1, len(self.node_ports) + 1)) if self.node_ports else (self.host,)

    @property
    def multi(self) -> bool:
        return bool(self.node_ports)

    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.state_dir / "munge" / "munge.socket"

    def path(self, name: str) -> Path:
        return self.state_dir / name


def render_slurm_conf(layout: SlurmLayout, gpus: int, cpus: int = 64, memory_mb: int = 512_000,
                      jwt_key: Path | None = None) -> str:
    """The cluster's slurm.conf. The node advertises more CPUs and memory than the host
    (``config_overrides``) so many small GPU jobs fit at once; no cgroups, so it runs in a container.
    With ``jwt_key`` the controller also accepts JWTs (slurmrestd and ``scontrol token`` need them)."""
    p = layout.path
    lines = [
        f"ClusterName={layout.cluster}",
        f"SlurmctldHost={layout.host}(127.0.0.1)",
        f"SlurmctldPort={layout.ctld_port}",
        f"SlurmdPort={layout.slurmd_port}",
        f"SlurmUser={_user()}",
        f"SlurmdUser={_user()}",
        f"AuthInfo=socket={layout.munge_socket}",
        f"StateSaveLocation={p('ctld')}",
        f"SlurmdSpoolDir={p('spool/%n' if layout.multi else 'spool')}",
        f"SlurmctldPidFile={p('slurmctld.pid')}",
        f"SlurmdPidFile={p('slurmd-%n.pid' if layout.multi else 'slurmd.pid')}",
        f"SlurmctldLogFile={p('slurmctld.log')}",
        f"SlurmdLogFile={p('slurmd-%n.log' if layout.multi else 'slurmd.log')}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2",
        "PriorityType=priority/basic",
        "JobRequeue=1",
        "ReturnToService=2",
        "SlurmdParameters=config_overrides",
        "MpiDefault=none",
        "GresTypes=gpu",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=5",
    ]
    if layout.multi:  # several slurmd on this host: each its own name and port, the host's name as NodeHostname
        lines += [f"NodeName={name} NodeHostname={layout.host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} "
                  f"RealMemory={memory_mb} Gres=gpu:{gpus} State=UNKNOWN"
                  for name, port in zip(layout.nodes, layout.node_ports)]
    else:
        lines.append(f"NodeName={layout.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} "
                     f"Gres=gpu:{gpus} State=UNKNOWN")
    if jwt_key is not None:
        lines[7:7] = ["AuthAltTypes=auth/jwt", f"AuthAltParameters=jwt_key={jwt_key}"]
    for i, name in enumerate(layout.partitions):
        default = "YES" if i == 0 else "NO"
        lines.append(f"PartitionName={name} Nodes={','.join(layout.nodes)} Default={default} MaxTime=INFINITE "
                     "State=UP OverSubscribe=FORCE:4")
    return "\n".join(lines) + "\n"


def site_partitions(site: Site) -> tuple[str, ...]:
    """Slurm partitions named by the site's GPU pods, in file order."""
    if not site.slurm_partitions:
        raise SlurmSetupError(f"{site.source}: no gpu_pods with a slurm_partition")
    return site.slurm_partitions


class LocalSlurm:
    """One controller, ``nodes`` compute nodes with ``gpus`` fake GPUs each, one partition per GPU pod
    (every partition spans every node)."""

    def __init__(self, state_dir: Path, partitions: tuple[str, ...], gpus: int = 8,
                 host: str | None = None, ports: tuple[int, ...] | None = None, nodes: int | None = None):
        state_dir = Path(state_dir).resolve()
        host = host or socket.gethostname().split(".")[0]
        saved = _saved_ports(state_dir)
        if nodes is None:  # a cluster started before keeps its size (stop and status need no --nodes)
            nodes = len(saved) - 2 if saved and len(saved) > 2 else 1
        if nodes < 1:
            raise SlurmSetupError(f"a cluster needs at least one node, not {nodes}")
        wanted = 2 + (nodes if nodes > 1 else 0)  # controller, the single node's port, one port per node of many
        ports = tuple(ports or (saved if saved and len(saved) == wanted else None) or _free_ports(wanted))
        self.layout = SlurmLayout(state_dir, host, ports[0], ports[1], tuple(partitions), node_ports=ports[2:])
        self.gpus = gpus

    @classmethod
    def for_site(cls, state_dir: Path, site: Site, **kwargs) -> "LocalSlurm":
        return cls(state_dir, site_partitions(site), **kwargs)

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands (scontrol, sbatch, ...) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.layout.conf)}

    @property
    def host(self) -> str:
        return self.layout.host

    @property
    def nodes(self) -> tuple[str, ...]:
        """The compute nodes' names (the host's name for a single-node cluster)."""
        return self.layout.nodes

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        """Base URL of this cluster's slurmrestd (started by ``start_rest``)."""
        return f"http://127.0.0.1:{self._rest_port()}"

    def start(self, timeout_s: float = 60.0, rest: bool = False, rest_host: str = "127.0.0.1",
              rest_port: int | None = None) -> str:
        if self.running():
            return f"Slurm already running ({self.layout.conf})" + \
                (f"; {self.start_rest(host=rest_host, port=rest_port)}" if rest else "")
        for name in (*DAEMONS, *CLIENTS):
            if not (shutil.which(name) or (SBIN / name).exists()):
                raise SlurmSetupError(f"{name} not found: install Debian's slurmctld, slurmd, slurm-client "
                                      "and munge (`make install` does it as root)")
        self._write_files()
        self._start_munge()
        self._run_daemon("slurmctld", "-f", str(self.layout.conf))
        for node in self.nodes:
            self._run_daemon(self._slurmd(node), "-f", str(self.layout.conf), "-N", node)
        self._wait_idle(timeout_s)
        up = f"Slurm up: cluster {self.layout.cluster}, node(s) {', '.join(self.nodes)}, " \
             f"partitions {', '.join(self.layout.partitions)}, {self.gpus} GPUs per node (SLURM_CONF={self.layout.conf})"
        return up + (f"; {self.start_rest(host=rest_host, port=rest_port)}" if rest else "")

    def start_rest(self, timeout_s: float = 30.0, host: str = "127.0.0.1", port: int | None = None) -> str:
        """Start slurmrestd (JWT auth, the installed ``openapi/v*`` plugins) on ``host``: ``port`` (default: a
        free one, kept for the cluster's next start). ``host`` 0.0.0.0 serves other containers too: every request
        still needs a token."""
        if not self.running():
            raise SlurmSetupError("start Slurm before slurmrestd")
        if self.rest_running():
            return f"slurmrestd already at {self.rest_url}"
        binary = shutil.which("slurmrestd") or str(SBIN / "slurmrestd")
        if not Path(binary).exists():
            raise SlurmSetupError("slurmrestd not found: install Debian's slurmrestd (`make install` does it as root)")
        if "AuthAltTypes=auth/jwt" not in self.layout.conf.read_text():
            raise SlurmSetupError("this cluster was started without JWT auth (Debian's slurm-wlm-jwt-plugin missing "
                                  "at the time): install it, then `stop` and `start` Slurm again")
        conf = self._public_conf() if os.getuid() == 0 else self.layout.conf
        argv = [binary, "-f", str(conf), "-a", "rest_auth/jwt"]
        plugins = _openapi_plugins()
        if plugins:  # the dbv* plugins need slurmdbd, which this cluster has not: load only the others
            argv += ["-s", ",".join(plugins)]
        if os.getuid() == 0:
            argv += ["-u", REST_USER]
        elif _user() == self._slurm_user():
            raise SlurmSetupError("slurmrestd refuses to run as SlurmUser; start it as root (it drops to "
                                  f"{REST_USER}) or run the cluster as another user")
        if port is not None:
            self.layout.path("rest_port").write_text(f"{port}\n")
        port = self._rest_port()
        log = open(self.layout.path("slurmrestd.log"), "ab")
        # SLURM_JWT=daemon: slurmrestd forwards each request's token to slurmctld instead of using munge.
        env = {**self.env, "SLURM_CONF": str(conf), "SLURM_JWT": "daemon"}
        proc = subprocess.Popen([*argv, f"{host}:{port}"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
        log.close()
        self.layout.path("slurmrestd.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                self._kill("slurmrestd")
                raise SlurmSetupError(f"slurmrestd did not come up on port {port}\n{self._log_tail('slurmrestd')}")
            time.sleep(0.1)
        return f"slurmrestd at {self.rest_url} (JWT auth; token: rest_token())"

    def rest_running(self) -> bool:
        return _alive(self._pid("slurmrestd"))

    def rest_token(self, lifespan_s: int = 3600) -> str:
        """A JWT for the current user from ``scontrol token`` (what ``SLURM_JWT`` holds for the REST backend)."""
        out = self.scontrol("token", f"lifespan={int(lifespan_s)}").strip()
        if not out.startswith("SLURM_JWT="):
            raise SlurmSetupError(f"scontrol token gave no token: {out!r}")
        return out.split("=", 1)[1]

    def stop(self) -> str:
        """Cancel every job (job steps outlive slurmd otherwise), then end the daemons."""
        if self.running():
            self._cancel_all()
        daemons = ("slurmrestd", *(self._slurmd(n) for n in self.nodes), "slurmctld", "munged")
        stopped = [name for name in daemons if self._kill(name)]
        saved = self.layout.path("rest_conf_dir")
        if saved.exists():  # the public copy of slurm.conf goes with slurmrestd
            shutil.rmtree(saved.read_text().strip(), ignore_errors=True)
            saved.unlink()
        return f"stopped {', '.join(stopped)}" if stopped else "Slurm was not running"

    def running(self) -> bool:
        return all(_alive(self._pid(name)) for name in ("munged", "slurmctld", *map(self._slurmd, self.nodes)))

    def _slurmd(self, node: str) -> str:
        """The daemon name of a node's slurmd (its pid and log file are named after it)."""
        return f"slurmd-{node}" if self.layout.multi else "slurmd"

    def scontrol(self, *args: str) -> str:
        """Run ``scontrol`` against this cluster (argv list, never a shell)."""
        return self.run("scontrol", *args)

    def run(self, command: str, *args: str) -> str:
        result = subprocess.run([command, *args], env=self.env, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SlurmSetupError(f"{command} {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    # -- internals --------------------------------------------------------------------------

    def _write_files(self) -> None:
        lay = self.layout
        for sub in ("ctld", "spool", "munge", "dev"):
            lay.path(sub).mkdir(parents=True, exist_ok=True)
        lay.path("munge").chmod(0o700)
        (lay.state_dir / "ports").write_text(" ".join(map(str, (lay.ctld_port, lay.slurmd_port, *lay.node_ports)))
                                             + "\n")
        gres = []
        for node in lay.nodes:
            folder = lay.path("dev") / node if lay.multi else lay.path("dev")
            folder.mkdir(parents=True, exist_ok=True)
            if lay.multi:
                lay.path("spool").joinpath(node).mkdir(exist_ok=True)
            for i in range(self.gpus):
                dev = folder / f"nvidia{i}"
                if not dev.exists():
                    _make_device_node(dev)
                gres.append(f"NodeName={node} Name=gpu File={dev}")
        jwt_key = lay.path("jwt.key") if _jwt_plugin_installed() else None
        if jwt_key is not None and not jwt_key.exists():
            jwt_key.touch(0o600)
            jwt_key.write_bytes(os.urandom(32))  # HS256 key; readable by the controller (this user) only
        lay.conf.write_text(render_slurm_conf(lay, self.gpus, jwt_key=jwt_key))
        lay.path("gres.conf").write_text("\n".join(gres) + "\n")
        lay.path("cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")

    def _start_munge(self) -> None:
        key = self.layout.path("munge") / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        munge_dir = self.layout.path("munge")
        self._run_daemon("munged", "--force", f"--key-file={key}", f"--socket={self.layout.munge_socket}",
                         f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
                         f"--seed-file={munge_dir / 'munged.seed'}")

    def _run_daemon(self, name: str, *args: str) -> None:
        if _alive(self._pid(name)):
            return
        program = name.split("-", 1)[0]  # slurmd-node1 is a slurmd
        binary = shutil.which(program) or str(SBIN / program)
        result = subprocess.run([binary, *args], env=self.env, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SlurmSetupError(f"{name} failed to start: {result.stderr.strip()}\n{self._log_tail(name)}")
        deadline = time.monotonic() + 10
        while not _alive(self._pid(name)):
            if time.monotonic() > deadline:
                raise SlurmSetupError(f"{name} did not stay up\n{self._log_tail(name)}")
            time.sleep(0.1)

    def _public_conf(self) -> Path:
        """A copy of slurm.conf that REST_USER can read: slurmrestd reads it after dropping privileges, and the
        state directory may sit below directories only we may enter. It holds paths and ports, no secrets."""
        saved = self.layout.path("rest_conf_dir")
        folder = Path(saved.read_text().strip()) if saved.exists() else None
        if folder is None or not folder.is_dir():
            folder = Path(tempfile.mkdtemp(prefix="opsloop-slurmrestd-"))
            folder.chmod(0o755)
            saved.write_text(f"{folder}\n")
        copy = folder / "slurm.conf"
        copy.write_text(self.layout.conf.read_text())
        copy.chmod(0o644)
        return copy

    def _rest_port(self) -> int:
        saved = self.layout.path("rest_port")
        try:
            return int(saved.read_text())
        except (OSError, ValueError):
            port = _free_ports(1)[0]
            saved.write_text(f"{port}\n")
            return port

    def _slurm_user(self) -> str:
        for line in self.layout.conf.read_text().splitlines():
            if line.startswith("SlurmUser="):
                return line.split("=", 1)[1]
        return _user()

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = result.stdout.strip()
            if result.returncode == 0 and state and all(s.startswith(("idle", "mixed", "alloc")) for s in state.split()):
                return
            if "drain" in state or "down" in state:
                subprocess.run(["scontrol", "update", f"NodeName={','.join(self.nodes)}", "State=RESUME"],
                               env=self.env, capture_output=True)
            time.sleep(0.5)
        raise SlurmSetupError(f"node(s) {', '.join(self.nodes)} not idle after {timeout_s:.0f} s (state {state!r})\n"
                              f"{self._log_tail('slurmctld')}\n{self._log_tail(self._slurmd(self.nodes[0]))}")

    def _cancel_all(self, wait_s: float = 15.0) -> None:
        subprocess.run(["scancel", "--full", f"--user={_user()}"], env=self.env, capture_output=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            left = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
            if left.returncode != 0 or not left.stdout.strip():
                return
            time.sleep(0.5)

    def _pid(self, name: str) -> int | None:
        """The daemon's pid from its pid file, if that process is still this daemon: a container restarted with
        the same state directory finds the old pid files, and their numbers may now be other programs'."""
        pid_file = self.layout.path("munge") / "munged.pid" if name == "munged" else self.layout.path(f"{name}.pid")
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _program(pid) in (None, name.split("-", 1)[0]) else None

    def _kill(self, name: str, wait_s: float = 10.0) -> bool:
        pid = self._pid(name)
        if not _alive(pid):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        return True

    def _log_tail(self, name: str, lines: int = 15) -> str:
        log = self.layout.path("munge") / "munged.log" if name == "munged" else self.layout.path(f"{name}.log")
        try:
            return f"--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {log})"


def serve(cluster: LocalSlurm, stop: threading.Event, rest: bool = False, rest_host: str = "127.0.0.1",
          rest_port: int | None = None, token_file: Path | None = None, token_lifespan_s: int = 86_400,
          check_s: float = 5.0, out=print) -> int:
    """Run ``cluster`` (and slurmrestd with ``rest``) in the foreground until ``stop`` is set, then stop it: a
    container's main process. With ``token_file`` a JWT for slurmrestd is written there once it answers and
    renewed at half its life; the file is removed first (a token left by an earlier run must not pass for
    readiness) and last. Returns 1 if a daemon died meanwhile (a restart policy starts the whole again), else 0."""
    if token_file is not None and not rest:
        raise SlurmSetupError("a token file is for slurmrestd: start it too (rest)")
    token_path = Path(token_file) if token_file is not None else None
    if token_path is not None:
        token_path.unlink(missing_ok=True)
    try:
        out(cluster.start(rest=rest, rest_host=rest_host, rest_port=rest_port))
        out(f"SLURM_CONF={cluster.layout.conf}; running until SIGTERM or SIGINT")
        renew_at = None
        while not stop.is_set():
            if token_path is not None and (renew_at is None or time.monotonic() >= renew_at):
                write_token(token_path, cluster.rest_token(lifespan_s=token_lifespan_s))
                if renew_at is None:
                    out(f"JWT in {token_path} (lifespan {token_lifespan_s} s, renewed every {token_lifespan_s // 2} s)")
                renew_at = time.monotonic() + token_lifespan_s / 2
            checks = (("Slurm", cluster.running()), ("slurmrestd", not rest or cluster.rest_running()))
            dead = [name for name, up in checks if not up]
            if dead:
                out(f"{' and '.join(dead)} stopped by itself; stopping the rest")
                return 1
            stop.wait(check_s)
        return 0
    finally:
        if token_path is not None:
            token_path.unlink(missing_ok=True)
        out(cluster.stop())


def write_token(path: Path, token: str) -> None:
    """Put a JWT where other processes read it (``Settings.slurm_jwt_file``), as Docker mounts a secret: whole or
    not at all (a new file renamed over the old one), readable only by the owner of its folder (as root the file is
    given to that owner: a volume mounted for the reading service's user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        if os.getuid() == 0:
            owner = path.parent.stat()
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.chmod(tmp, 0o400)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_device_node(path: Path) -> None:
    """A character device standing in for a GPU (same numbers as /dev/null): gres needs a file per GPU."""
    try:
        os.mknod(path, 0o666 | 0o020000, os.makedev(1, 3))
    except PermissionError:  # not root: a plain file still satisfies gres.conf's File=
        path.touch()


def _jwt_plugin_installed() -> bool:
    return bool(glob.glob(PLUGIN_GLOB + "auth_jwt.so"))


def _openapi_plugins() -> list[str]:
    """Installed ``openapi/v0.0.NN`` plugins, newest first (``openapi_v0_0_38.so`` → ``openapi/v0.0.38``)."""
    names = {Path(p).stem[len("openapi_"):] for p in glob.glob(PLUGIN_GLOB + "openapi_v*.so")}
    versions = sorted(names, key=lambda n: [int(x) for x in n[1:].split("_")], reverse=True)
    return ["openapi/" + v.replace("_", ".") for v in versions]


def _program(pid: int) -> str | None:
    """The program a process runs (its ``comm``), None if that cannot be read (the process is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie or a recycled pid of another program does not count
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _saved_ports(state_dir: Path) -> tuple[int, ...] | None:
    try:
        ports = tuple(int(x) for x in (state_dir / "ports").read_text().split())
    except (OSError, ValueError):
        return None
    return ports if len(ports) >= 2 else None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
