"""The Debian packages, installed for real in a fresh Debian 12 root.

Builds m6t and m6t-desktop with packaging/build-deb (or takes them from M6T_DEB_DIR),
debootstraps a minimal bookworm into a temporary directory and, inside it (chroot, /proc
mounted): installs them with apt and their dependencies, checks the group, units, desktop
entries, man pages and commands, upgrades to a second build with a bumped --version, removes,
purges, and checks that nothing of them is left. The tests run in file order, each on the
state the previous one left; after a failure the rest skip.

Slow (about 65 s with a warm pip cache and a cached root; the first run adds ~35 s of
debootstrap and the PyPI downloads), needs root, debootstrap, PyPI (the builds) and a Debian
mirror: it runs only with M6T_TEST_PACKAGING=1 (`make test-packaging`). It never touches the
host's systemd, groups or network configuration: a policy-rc.d in the root forbids starting
services, no systemd runs in the chroot (the boot step runs one in its own container with a
private network namespace), and the root's /proc is unmounted and the root removed at the
end, pass or fail.

Environment:
    M6T_TEST_PACKAGING=1       run it
    M6T_DEB_DIR=DIR            take m6t_*.deb and m6t-desktop_*.deb from DIR (one version of
                               each) instead of building them; the upgrade is still built
    M6T_DEBIAN_MIRROR=URL      the mirror (default: the host's apt source for bookworm)
    M6T_DEBOOTSTRAP_CACHE=DIR  where the bootstrapped root is kept as a tarball, rebuilt
                               after 30 days (default /var/cache/m6t-debootstrap)

The boot step (test_units_run_under_systemd) needs systemd-nspawn (package systemd-container)
and is skipped without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "packaging" / "build-deb"
SUITE = "bookworm"
CACHE = Path(os.environ.get("M6T_DEBOOTSTRAP_CACHE", "/var/cache/m6t-debootstrap"))
CACHE_MAX_AGE = 30 * 86400
PACKAGES = ("m6t", "m6t-desktop")
COMMANDS = ("m6t", "m6t-helper", "m6t-gateway", "m6t-gateway-health", "m6t-desktop")
EXAMPLE = "/usr/share/doc/m6t/examples/m6t-gateway.toml"
SITE = "/opt/m6t/lib/python3.11/site-packages"

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("M6T_TEST_PACKAGING") != "1",
                       reason="slow install test: M6T_TEST_PACKAGING=1 runs it"),
]


# --- running things ------------------------------------------------------------------------------


def run(command: list[str], timeout: float = 1800, check: bool = True,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(
        command, text=True, capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)[:300]} exited {result.returncode}\n"
            f"--- stdout (end) ---\n{result.stdout[-4000:]}\n"
            f"--- stderr (end) ---\n{result.stderr[-4000:]}")
    return result


def log(message: str) -> None:
    print(f"[packaging {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Root:
    """A Debian root in a temporary directory, driven through chroot."""

    path: Path
    mounts: list[Path] = field(default_factory=list)

    def sh(self, script: str, check: bool = True, timeout: float = 1800,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        variables = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                     "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        return run(["chroot", str(self.path), "/usr/bin/env", "-i",
                    *(f"{k}={v}" for k, v in variables.items()), "/bin/sh", "-ec", script],
                   timeout=timeout, check=check)

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.file(path))

    def mount_proc(self) -> None:
        target = self.file("/proc")
        run(["mount", "-t", "proc", "proc", str(target)])
        self.mounts.append(target)

    def unmount_all(self) -> None:
        """Every mount under the root, deepest first (ours, and any a package left)."""
        prefix = str(self.path.resolve())
        with open("/proc/self/mountinfo") as info:
            points = [line.split()[4] for line in info]
        inside = sorted({p for p in points if p == prefix or p.startswith(prefix + "/")},
                        key=len, reverse=True)
        for point in inside:
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
        self.mounts.clear()

    def still_mounted(self) -> list[str]:
        prefix = str(self.path.resolve()) + "/"
        with open("/proc/self/mountinfo") as info:
            return [line.split()[4] for line in info if line.split()[4].startswith(prefix)]


# --- the mirror and the root ---------------------------------------------------------------------


def host_mirrors() -> tuple[str, str]:
    """(debian, debian-security) URIs from the host's apt sources, for bookworm."""
    main = os.environ.get("M6T_DEBIAN_MIRROR")
    security = None
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() \
                    or fields.get("enabled", "yes").lower() == "no":
                continue
            entries += [(uri, fields.get("suites", "").split())
                        for uri in fields.get("uris", "").split()]
    for path in [Path("/etc/apt/sources.list"),
                 *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match:
                entries.append((match.group(1), [match.group(2)]))
    for uri, suites in entries:
        if f"{SUITE}-security" in suites and security is None:
            security = uri
        elif SUITE in suites and main is None:
            main = uri
    return (main or "http://deb.debian.org/debian").rstrip("/"), \
        (security or "http://deb.debian.org/debian-security").rstrip("/")


def bootstrap(target: Path, mirror: str) -> None:
    """A minbase bookworm in `target`, from the cached tarball when it is recent."""
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    tarball = CACHE / f"{SUITE}-minbase-{arch}.tar"
    fresh = tarball.exists() and time.time() - tarball.stat().st_mtime < CACHE_MAX_AGE
    if not fresh:
        log(f"debootstrap --variant=minbase {SUITE} from {mirror} (cached afterwards in {CACHE})")
        CACHE.mkdir(parents=True, exist_ok=True)
        run(["debootstrap", "--variant=minbase", SUITE, str(target), mirror], timeout=1800)
        partial = tarball.with_suffix(".tar.partial")
        run(["tar", "--numeric-owner", "-cf", str(partial), "-C", str(target), "."])
        os.replace(partial, tarball)
    else:
        log(f"root from {tarball}")
        run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(target)])


def prepare(root: Root, mirror: str, security: str) -> None:
    """apt sources, name resolution, no service starts; then the tools the checks use."""
    root.file("/etc/apt/sources.list").write_text(
        f"deb {mirror} {SUITE} main\n"
        f"deb {mirror} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n")
    resolv = root.file("/etc/resolv.conf")
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    policy = root.file("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\n# m6t packaging test: no service starts in this root\nexit 101\n")
    policy.chmod(0o755)
    root.mount_proc()
    log("apt-get update; tools for the checks: systemd (systemd-analyze), man-db, "
        "desktop-file-utils")
    root.sh("apt-get update -q")
    root.sh("apt-get install -y -q --no-install-recommends systemd man-db desktop-file-utils")


# --- the packages --------------------------------------------------------------------------------


def build(output: Path, version: str | None = None) -> dict[str, Path]:
    command = [str(BUILD_DEB), "--output", str(output), "--compression", "zstd"]
    if version:
        command += ["--version", version]
    started = time.monotonic()
    result = run(command, timeout=2400)
    log(f"built {version or 'default version'} in {time.monotonic() - started:.0f} s")
    paths = [Path(line) for line in result.stdout.split()]
    return debs_in(paths)


def debs_in(paths: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        package = path.name.split("_", 1)[0]
        if package in PACKAGES:
            assert package not in found, f"two {package} packages: {found[package]}, {path}"
            found[package] = path
    missing = set(PACKAGES) - set(found)
    assert not missing, f"no .deb for {', '.join(sorted(missing))} in {paths}"
    return found


def deb_version(path: Path) -> str:
    return run(["dpkg-deb", "-f", str(path), "Version"]).stdout.strip()


@dataclass
class State:
    root: Root
    work: Path
    debs: dict[str, Path]
    version: str
    owned: dict[str, list[str]] = field(default_factory=dict)  # dpkg -L before removal
    broken: str | None = None


@pytest.fixture(scope="module")
def state() -> Iterator[State]:
    if os.geteuid() != 0:
        pytest.fail("M6T_TEST_PACKAGING=1 but not root (chroot, mount and debootstrap need it)")
    missing = [tool for tool in ("debootstrap", "chroot", "mount", "dpkg-deb", "tar")
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"M6T_TEST_PACKAGING=1 but missing: {', '.join(missing)} "
                    "(apt-get install debootstrap)")
    work = Path(tempfile.mkdtemp(prefix="m6t-packaging-test."))
    root = Root(work / "root")
    root.path.mkdir()
    started = time.monotonic()
    try:
        given = os.environ.get("M6T_DEB_DIR")
        if given:
            debs = debs_in(sorted(Path(given).glob("*.deb")))
            log(f"packages from {given}")
        else:
            debs = build(work / "v1")
        mirror, security = host_mirrors()
        bootstrap(root.path, mirror)
        prepare(root, mirror, security)
        yield State(root, work, debs, deb_version(debs["m6t"]))
    finally:
        root.unmount_all()
        left = root.still_mounted()
        if left:  # never rm -rf across a mount point
            raise RuntimeError(f"still mounted, {work} left in place: {left}")
        run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        log(f"torn down; {time.monotonic() - started:.0f} s in all")


@pytest.fixture
def ready(state: State, request: pytest.FixtureRequest) -> Iterator[State]:
    """Each step builds on the previous one: after a failure the rest are skipped."""
    if state.broken:
        pytest.skip(f"an earlier step failed: {state.broken}")
    yield state
    report = getattr(request.node, "rep_call", None)  # set by conftest.py
    if report is None or report.failed:
        state.broken = request.node.name


def install(root: Root, debs: dict[str, Path], tag: str) -> None:
    inside = f"/tmp/debs-{tag}"
    root.file(inside).mkdir(parents=True, exist_ok=True)
    paths = []
    for path in debs.values():
        shutil.copy(path, root.file(f"{inside}/{path.name}"))
        root.file(f"{inside}/{path.name}").chmod(0o644)
        paths.append(f"{inside}/{path.name}")
    started = time.monotonic()
    root.sh(f"apt-get install -y -q {' '.join(paths)}")
    log(f"apt-get install ({tag}) took {time.monotonic() - started:.0f} s")


def leftovers(root: Root) -> list[str]:
    """Every path with "m6t" in its name, outside /proc and /tmp (where the .deb files are)."""
    found = []
    for directory, dirs, files in os.walk(root.path):
        relative = "/" + os.path.relpath(directory, root.path)
        if relative in ("/proc", "/tmp", "/sys", "/dev"):
            dirs.clear()
            continue
        for name in dirs + files:
            if "m6t" in name.lower():
                found.append(os.path.normpath(f"{relative}/{name}"))
    return sorted(found)


def status(root: Root, package: str) -> str:
    result = root.sh(f"dpkg-query -W -f='${{Status}} ${{Version}}' {package} 2>/dev/null || true")
    return result.stdout.strip()


# --- the steps -----------------------------------------------------------------------------------


def test_install(ready: State) -> None:
    root = ready.root
    assert leftovers(root) == [], "the fresh root already has m6t files"
    install(root, ready.debs, "v1")
    for package in PACKAGES:
        assert status(root, package) == f"install ok installed {ready.version}"


def test_group_venv_and_files(ready: State) -> None:
    root = ready.root
    group = root.sh("getent group m6t").stdout.strip().split(":")
    assert group[0] == "m6t"
    assert int(group[2]) < 1000, f"m6t is not a system group: {group}"
    for path in ("/lib/systemd/system/m6t-helper.service",
                 "/lib/systemd/system/m6t-gateway.service",
                 "/usr/share/applications/m6t-desktop.desktop",
                 "/usr/share/icons/hicolor/scalable/apps/m6t.svg",
                 "/etc/xdg/autostart/m6t-desktop.desktop",
                 "/usr/share/man/man1/m6t.1.gz", "/usr/share/man/man1/m6t-desktop.1.gz",
                 "/usr/share/man/man8/m6t-helper.8.gz", "/usr/share/man/man8/m6t-gateway.8.gz",
                 "/usr/share/man/man8/m6t-gateway-health.8.gz",
                 "/usr/share/doc/m6t/operating.md.gz",
                 "/usr/share/doc/m6t/keepalived/keepalived.conf.sample",
                 "/usr/share/doc/m6t/examples/prometheus/m6t-alerts.yml",
                 "/usr/share/doc/m6t/examples/grafana/m6t-gateway.json",
                 EXAMPLE, "/usr/share/doc/m6t/copyright", "/usr/share/doc/m6t-desktop/copyright"):
        assert root.exists(path), f"{path} is missing"
    for command in COMMANDS:
        assert os.readlink(root.file(f"/usr/bin/{command}")) == f"/opt/m6t/bin/{command}"
    # The venv runs Debian's interpreter and names no path of the build machine.
    python = root.sh("readlink -f /opt/m6t/bin/python3").stdout.strip()
    assert python == "/usr/bin/python3.11"
    leaks = root.sh("grep -rlI -e m6t-build-deb -e /root/.pyenv -e /work/main /opt/m6t || true")
    assert leaks.stdout.strip() == "", f"build paths in: {leaks.stdout}"
    # Byte-code compiled by postinst, for both packages' directories.
    assert root.exists(f"{SITE}/m6t/__pycache__")
    assert root.exists(f"{SITE}/m6t_desktop/__pycache__")
    # m6t-helper enabled (the symlink deb-systemd-helper makes without a running systemd);
    # m6t-gateway not, it needs /etc/m6t/gateway.toml first.
    wants = "/etc/systemd/system/multi-user.target.wants"
    assert root.exists(f"{wants}/m6t-helper.service")
    assert not root.exists(f"{wants}/m6t-gateway.service")


def test_commands(ready: State) -> None:
    root = ready.root
    upstream = ready.version.rsplit("-", 1)[0]
    # As an ordinary user (nobody): the files must be readable by anyone.
    nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp"
    for command in COMMANDS:
        result = root.sh(f"{nobody} {command} --help")
        assert "usage:" in result.stdout, f"{command} --help: {result.stdout[:300]}"
    assert upstream in root.sh(f"{nobody} m6t --version").stdout
    check = root.sh(f"{nobody} m6t-gateway --config {EXAMPLE} --check")
    assert "OK" in check.stdout
    # No helper runs here: one line on stderr, no traceback.
    result = root.sh(f"{nobody} m6t status", check=False)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and result.stderr.startswith("m6t:"), result.stderr
    # Without CAP_NET_ADMIN the helper refuses cleanly (run as root it would really start).
    result = root.sh(f"{nobody} m6t-helper", check=False)
    assert result.returncode == 1 and "CAP_NET_ADMIN" in result.stderr, result.stderr
    # Man pages found by man(1).
    for page in ("m6t", "m6t-helper", "m6t-gateway", "m6t-gateway-health", "m6t-desktop"):
        root.sh(f"man -w {page}")


def test_desktop_app_starts(ready: State) -> None:
    root = ready.root
    # Every library the X11 platform plugin links to is there (Depends + Recommends).
    missing = root.sh(f"ldd {SITE}/PySide6/Qt/plugins/platforms/libqxcb.so | grep 'not found' "
                      "|| true").stdout.strip()
    assert missing == "", f"the xcb platform plugin lacks: {missing}"
    # The real app, off screen, as nobody: it must get to its window (the ready file).
    script = """
        export HOME=/tmp/nobody-home XDG_RUNTIME_DIR=/tmp/nobody-run
        export QT_QPA_PLATFORM=offscreen M6T_DESKTOP_READY_FILE=/tmp/nobody-run/ready
        mkdir -p $HOME $XDG_RUNTIME_DIR && chmod 700 $XDG_RUNTIME_DIR
        m6t-desktop --no-tray --no-notifications 2>/tmp/nobody-run/stderr &
        pid=$!
        for i in $(seq 120); do [ -s $M6T_DESKTOP_READY_FILE ] && break; sleep 0.25; done
        kill $pid 2>/dev/null || true
        wait $pid || true
        cat $M6T_DESKTOP_READY_FILE 2>/dev/null || { cat /tmp/nobody-run/stderr; exit 1; }
    """
    root.sh("mkdir -p /tmp/nobody-home /tmp/nobody-run && "
            "chown nobody:nogroup /tmp/nobody-home /tmp/nobody-run")
    result = root.sh(f"setpriv --reuid=nobody --regid=nogroup --clear-groups sh -ec '{script}'")
    assert result.stdout.startswith("window"), result.stdout + result.stderr


def test_units_and_entries(ready: State) -> None:
    root = ready.root
    # systemd-analyze verify: syntax, directives known to this systemd, ExecStart executable,
    # Documentation= man pages present.
    root.sh("systemd-analyze verify /lib/systemd/system/m6t-helper.service "
            "/lib/systemd/system/m6t-gateway.service")
    security = root.sh("systemd-analyze security --offline=yes "
                       "/lib/systemd/system/m6t-helper.service "
                       "/lib/systemd/system/m6t-gateway.service 2>&1").stdout
    levels = re.findall(r"Overall exposure level for (\S+): ([\d.]+)", security)
    assert len(levels) == 2, security[-2000:]
    for unit, level in levels:
        log(f"systemd-analyze security {unit}: {level}")
        assert float(level) < 4.0, f"{unit} exposure {level}: hardening lost?"
    result = root.sh("desktop-file-validate /usr/share/applications/m6t-desktop.desktop "
                     "/etc/xdg/autostart/m6t-desktop.desktop")
    assert result.stdout.strip() == "", result.stdout
    # The autostart entry ships disabled (see docs/packaging.md).
    autostart = root.file("/etc/xdg/autostart/m6t-desktop.desktop").read_text()
    assert "Hidden=true" in autostart and "X-GNOME-Autostart-enabled=false" in autostart


@contextmanager
def booted(root: Root) -> Iterator[Callable[[str], subprocess.CompletedProcess[str]]]:
    """The root booted with systemd-nspawn, in its own network namespace (--private-network:
    it has only lo, nothing of it reaches the host's network). Yields a function that runs a
    shell script inside; powers it off afterwards."""
    root.unmount_all()  # nspawn mounts its own /proc
    console = open(root.path.parent / "boot.log", "w")  # noqa: SIM115 - closed below
    machine = f"m6t-pkgtest-{os.getpid()}"
    state_dir = Path("/run/systemd/nspawn")
    had_state_dir = state_dir.exists()
    # --register=no and --keep-unit: no machined or host systemd needed.
    nspawn = subprocess.Popen(["systemd-nspawn", "--quiet", "--directory", str(root.path),
                               "--machine", machine, "--private-network", "--register=no",
                               "--keep-unit", "--boot"],
                              stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
    leader = None

    def enter(script: str) -> subprocess.CompletedProcess[str]:
        return run(["nsenter", "--target", str(leader), "--mount", "--uts", "--ipc", "--net",
                    "--pid", "--cgroup", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "/bin/sh", "-ec", script], timeout=180)

    try:
        deadline = time.monotonic() + 60
        while leader is None and time.monotonic() < deadline and nspawn.poll() is None:
            leader = container_init(nspawn.pid)
            time.sleep(0.2)
        assert leader is not None, (root.path.parent / "boot.log").read_text()[-3000:]
        enter("systemctl is-system-running --wait >/dev/null || true")
        yield enter
    finally:
        if leader is not None and nspawn.poll() is None:
            run(["nsenter", "--target", str(leader), "--mount", "--pid", "systemctl",
                 "poweroff"], check=False, timeout=60)
        try:
            nspawn.wait(90)
        except subprocess.TimeoutExpired:
            nspawn.terminate()
            nspawn.wait(30)
        console.close()
        # nspawn cannot remove this directory when /run is not a tmpfs (as on this kind of
        # machine); it is ours, for this machine name only.
        propagate = state_dir / "propagate" / machine
        leftover = propagate if had_state_dir else state_dir
        if leftover.is_dir() and not os.path.ismount(leftover):
            run(["rm", "-rf", "--one-file-system", str(leftover)], check=False)
        root.mount_proc()


def container_init(ancestor: int) -> int | None:
    """The PID (host numbering) of the container's PID 1: a descendant of `ancestor` running
    systemd, which is PID 1 in its own PID namespace."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text()
                          .splitlines() if ":" in line)
        except OSError:
            continue
        parents[int(entry.name)] = int(fields.get("PPid", "0"))
        if fields.get("Name", "").strip() == "systemd" \
                and fields.get("NSpid", "").split()[-1:] == ["1"]:
            pid = int(entry.name)
            while pid > 1:
                pid = parents.get(pid) or _parent(pid)
                if pid == ancestor:
                    return int(entry.name)
    return None


def _parent(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_units_run_under_systemd(ready: State) -> None:
    """The hardened units, really started by systemd (systemd-nspawn): only the capabilities
    they need, and yet the helper serves its socket and the gateway makes its TUN device and
    sets forwarding (through ReadWritePaths= under ProtectKernelTunables=). Both are
    Type=notify: each start returns only once the daemon said it serves."""
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        pytest.skip("systemd-nspawn missing (apt-get install systemd-container): the units "
                    "were verified, not run")
    root = ready.root
    root.sh("apt-get install -y -q --no-install-recommends systemd-sysv dbus")
    root.sh(f"mkdir -p /etc/m6t && cp {EXAMPLE} /etc/m6t/gateway.toml")
    with booted(root) as enter:
        # Type=notify: the unit is active only once the helper said READY=1, which it says
        # after its control socket listens. So: once active, the socket must be there.
        enter("for i in $(seq 150); do systemctl is-active -q m6t-helper && break; "
              "sleep 0.1; done; systemctl is-active m6t-helper && [ -S /run/m6t/helper.sock ]")
        socket = enter("stat -c '%A %U %G' /run/m6t/helper.sock").stdout.split()
        assert socket == ["srw-rw-rw-", "root", "m6t"], socket
        capabilities = enter("grep -E '^Cap(Eff|Bnd)' /proc/$(systemctl show -p MainPID "
                             "--value m6t-helper)/status").stdout.split()
        # CAP_CHOWN (0), CAP_NET_ADMIN (12), CAP_NET_RAW (13): 0x3001, nothing else.
        assert capabilities == ["CapEff:", "0000000000003001", "CapBnd:", "0000000000003001"]
        status = enter("setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp "
                       "m6t status")
        assert "no tunnels" in status.stdout
        before = enter("cat /proc/sys/net/ipv6/conf/all/forwarding").stdout.strip()
        # Type=notify: `systemctl start` returns once the gateway said READY=1, which it says
        # when its ports are bound and its TUN device is up. So: no waiting here.
        enter("systemctl start m6t-gateway")
        enter("systemctl is-active m6t-gateway")
        assert enter("cat /proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "1"
        assert "m6tgw0:" in enter("cat /proc/net/dev").stdout
        udp = enter("cat /proc/net/udp").stdout
        for port in (3544, 4500):  # the example's listen ports
            assert f"00000000:{port:04X} " in udp, udp
        # RELOADING=1 ... READY=1 (systemd 252 shows "reloading" in between): once the
        # gateway has logged the reload, the unit is active again, the same process.
        pid = enter("systemctl show -p MainPID --value m6t-gateway").stdout.strip()
        enter("systemctl reload m6t-gateway")
        enter("for i in $(seq 100); do journalctl -q --no-pager -o cat -u m6t-gateway | "
              "grep -q 'configuration reloaded' && exit 0; sleep 0.1; done; exit 1")
        enter("for i in $(seq 50); do systemctl is-active -q m6t-gateway && exit 0; "
              "sleep 0.1; done; systemctl is-active m6t-gateway")
        assert enter("systemctl show -p MainPID --value m6t-gateway").stdout.strip() == pid
        # SIGKILL: Restart=on-failure brings it back (RestartSec=2s), and the new process
        # finds the killed one's note of forwarding in /run/m6t-gateway
        # (RuntimeDirectoryPreserve=restart), so the stop below still restores the value
        # from before the first start, not the 1 the killed one left.
        enter("systemctl kill -s KILL m6t-gateway")
        enter(f"for i in $(seq 100); do p=$(systemctl show -p MainPID --value m6t-gateway); "
              f"[ \"$p\" != 0 ] && [ \"$p\" != {pid} ] && systemctl is-active -q m6t-gateway "
              f"&& exit 0; sleep 0.1; done; systemctl status m6t-gateway; exit 1")
        assert enter("ls /run/m6t-gateway").stdout.startswith("forwarding.")
        enter("systemctl stop m6t-gateway")
        assert enter("ls -A /run/m6t-gateway 2>/dev/null || true").stdout.strip() == ""
        assert enter("systemctl show -p Result --value m6t-gateway").stdout.strip() == "success"
        assert enter("cat /proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == before
        journal = enter("journalctl --no-pager -o cat -u m6t-helper -u m6t-gateway").stdout
        assert "Traceback" not in journal, journal
    root.sh("rm -rf /etc/m6t")


def test_upgrade(ready: State) -> None:
    root = ready.root
    # What an administrator and a user did with version 1, to be kept by the upgrade.
    autostart = root.file("/etc/xdg/autostart/m6t-desktop.desktop")
    edited = autostart.read_text().replace("Hidden=true\n", "").replace(
        "X-GNOME-Autostart-enabled=false", "X-GNOME-Autostart-enabled=true")
    autostart.write_text(edited)
    root.sh(f"mkdir -p /etc/m6t && cp {EXAMPLE} /etc/m6t/gateway.toml")
    root.sh("useradd --create-home alice && adduser --quiet alice m6t")
    gid = root.sh("getent group m6t").stdout.split(":")[2]

    upgrade = f"{ready.version}+upgrade1"
    debs = build(ready.work / "v2", upgrade)
    install(root, debs, "v2")
    for package in PACKAGES:
        assert status(root, package) == f"install ok installed {upgrade}"
    assert root.sh("getent group m6t").stdout.split(":")[2] == gid
    assert "alice" in root.sh("id -nG alice").stdout.split()
    assert autostart.read_text() == edited, "the conffile edit was lost"
    assert root.exists("/etc/m6t/gateway.toml")
    assert root.exists("/etc/systemd/system/multi-user.target.wants/m6t-helper.service")
    assert not root.exists("/etc/systemd/system/multi-user.target.wants/m6t-gateway.service")
    root.sh("m6t --version && m6t-gateway --config /etc/m6t/gateway.toml --check")
    assert root.exists(f"{SITE}/m6t/__pycache__")
    ready.version = upgrade


def test_remove(ready: State) -> None:
    root = ready.root
    for package in PACKAGES:
        ready.owned[package] = root.sh(f"dpkg -L {package}").stdout.split("\n")
    root.sh("apt-get remove -y -q " + " ".join(PACKAGES))
    for package in PACKAGES:
        assert status(root, package).startswith("deinstall ok config-files")
    for command in COMMANDS:
        assert not root.exists(f"/usr/bin/{command}")
    assert not root.exists("/opt/m6t"), f"left in /opt/m6t: {leftovers(root)}"
    # Until purge: the group, the conffile, the administrator's configuration.
    root.sh("getent group m6t")
    assert root.exists("/etc/xdg/autostart/m6t-desktop.desktop")
    assert root.exists("/etc/m6t/gateway.toml")


def test_purge_leaves_nothing(ready: State) -> None:
    root = ready.root
    root.sh("apt-get purge -y -q " + " ".join(PACKAGES))
    for package in PACKAGES:
        assert status(root, package) == "", f"dpkg still knows {package}"
        result = root.sh(f"dpkg -L {package}", check=False)
        assert result.returncode != 0 and result.stdout.strip() == ""
    assert root.sh("getent group m6t", check=False).returncode == 2, "group m6t left"
    for path in ("/etc/group", "/etc/gshadow"):
        assert not re.search(r"(?m)^m6t:", root.file(path).read_text()), path
    # Every file the packages had, gone (directories shared with others stay, of course).
    for package, paths in ready.owned.items():
        for path in paths:
            if path and not root.file(path).is_dir() and root.exists(path):
                pytest.fail(f"{path} of {package} is still there")
    assert leftovers(root) == [], "left behind"
