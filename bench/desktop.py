"""Benchmark of the desktop app (m6t-desktop): start-up to a visible tray icon, and CPU use while
idle with a connected, active tunnel, each against a bare PySide6 tray app in the same run.

    .venv/bin/python bench/desktop.py [--runs 7] [--cpu-seconds 20] [--offscreen]

What runs:

* An X server with a real tray host: Xvfb and icewm, started here on a free display (as the
  screenshots script does). With --offscreen, or when they are not installed, Qt's offscreen
  platform: there is no tray there, so "visible" is the app's main window instead.
* The helper is FakeHelper (tests/fake_helper.py) in this process: the real control API over a
  real Unix socket, one connected tunnel, and a `traffic` event once a second with changing
  rates and RTT (what the real helper sends for an active tunnel). Its own CPU is not counted.
* The baseline is the least a tray app can be: a QApplication with one QSystemTrayIcon (a
  22 px pixmap), writing the same "ready" marker at the same point (first event-loop turn after
  show()).

Start-up (`--runs` times each, the baseline and the app alternating so a noisy moment hits
both): from just before the process is spawned to (1) the process's "ready" marker
(M6T_DESKTOP_READY_FILE: written on the first event-loop turn after the icon was shown) and
(2) the icon's window embedded in icewm's system tray, seen from outside with xwininfo (polled
every 20 ms once the marker is there). The verdict (< 1.5 s) is on the median of (2).

CPU: after a 5 s settle, utime + stime of the process (/proc/PID/stat, all its threads) over
--cpu-seconds of wall time, as a percentage of one core; also its resident set size. Three
cases: the baseline idle; the app idle in the tray (connected, traffic events arriving, no
window open); the app with its status window open on the traffic graph (--no-tray: the window
repaints each second). The verdict (< 1 %) is on the idle tray case.

A measurement, not a test: exit status 0 whatever the figures; non-zero only when something
does not start.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from m6t import profiles  # noqa: E402
from m6t.control.schema import Profile  # noqa: E402
from tests.fake_helper import FakeHelper, status_for  # noqa: E402

STARTUP_LIMIT = 1.5  # seconds, the figure
CPU_LIMIT = 1.0  # percent of one core
X_TOOLS = ("Xvfb", "icewm", "xwininfo", "xdpyinfo")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_TRAY = "m6t-desktop, idle in the tray, tunnel active"
IDLE_OFFSCREEN = "m6t-desktop, idle, tunnel active (offscreen: no tray, window shown)"

BASELINE = r'''
import os, sys, time
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

app = QApplication(["m6t-baseline"])
pixmap = QPixmap(22, 22)
pixmap.fill(Qt.GlobalColor.darkGreen)
if QSystemTrayIcon.isSystemTrayAvailable():
    shown, what = QSystemTrayIcon(QIcon(pixmap)), "tray"
else:
    shown, what = QWidget(), "window"
shown.show()
app.setQuitOnLastWindowClosed(False)

def ready():
    with open(os.environ["M6T_DESKTOP_READY_FILE"], "a") as out:
        out.write(f"{what} {time.time():.6f}\n")

QTimer.singleShot(0, ready)
sys.exit(app.exec())
'''

OFFICE = Profile(name="office", gateway="198.51.100.1", ports=[3544, 4500],
                 prefix="fd6d:6d74:1:1:1::/80", home_agent="fd48:4100::2", auto_connect=True)


# --- the environment ---


class Display:
    """Xvfb + icewm on a free display (or nothing, offscreen)."""

    def __init__(self, work: Path, offscreen: bool) -> None:
        self.work = work
        self.offscreen = offscreen or any(shutil.which(tool) is None for tool in X_TOOLS)
        self.name = ""
        self.processes: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        if self.offscreen:
            return {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        return {**os.environ, "DISPLAY": self.name, "QT_QPA_PLATFORM": "xcb"}

    def start(self) -> None:
        if self.offscreen:
            return
        self.name = next(f":{n}" for n in range(99, 200)
                         if not Path(f"/tmp/.X{n}-lock").exists()
                         and not Path(f"/tmp/.X11-unix/X{n}").exists())
        self.processes.append(subprocess.Popen(
            ["Xvfb", self.name, "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for("Xvfb", lambda: subprocess.run(["xdpyinfo"], env=self.env(),
                                                capture_output=True).returncode == 0)
        config = self.work / "icewm"
        config.mkdir()
        (config / "preferences").write_text("TaskBarShowCPUStatus=0\nTaskBarShowMEMStatus=0\n"
                                            "TaskBarShowNetStatus=0\nTaskBarShowClock=0\n")
        self.processes.append(subprocess.Popen(
            ["icewm"], env={**self.env(), "ICEWM_PRIVCFG": str(config)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for("icewm's system tray", lambda: "SystemTray" in self.tree())

    def tree(self) -> str:
        return subprocess.run(["xwininfo", "-root", "-tree"], env=self.env(),
                              capture_output=True, text=True).stdout

    def embedded(self, wm_class: str) -> bool:
        """Whether a window of this class sits inside icewm's SystemTray."""
        lines = self.tree().splitlines()
        for index, line in enumerate(lines):
            if '"SystemTray"' in line:
                depth = len(line) - len(line.lstrip())
                for inner in lines[index + 1:]:
                    if len(inner) - len(inner.lstrip()) <= depth:
                        break
                    if f'"{wm_class}"' in inner:
                        return True
        return False

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=5)


class ActiveTunnel:
    """FakeHelper with one connected tunnel and a traffic event once a second."""

    def __init__(self, socket_path: Path) -> None:
        self.helper = FakeHelper(socket_path)
        self.helper.tunnels["office"] = status_for(OFFICE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._traffic, daemon=True)

    def __enter__(self) -> ActiveTunnel:
        self.helper.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self.helper.stop()

    def _traffic(self) -> None:
        rng = random.Random(1)
        rx = tx = 0
        second = 0
        while not self._stop.wait(1.0):
            second += 1
            rx_rate = 200_000 + 50_000 * math.sin(second / 6) + rng.uniform(-20_000, 20_000)
            tx_rate = 60_000 + rng.uniform(-10_000, 10_000)
            rx, tx = rx + int(rx_rate), tx + int(tx_rate)
            self.helper.emit({"type": "traffic", "tunnel": "m6t0", "profile": "office",
                              "rx_bytes": rx, "tx_bytes": tx, "rx_packets": rx // 1200,
                              "tx_packets": tx // 900, "rx_rate": rx_rate, "tx_rate": tx_rate,
                              "rtt_ms": round(20 + rng.uniform(0, 5), 1)})


def wait_for(what: str, condition: Any, timeout: float = 20.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(step)
    raise SystemExit(f"bench: timed out waiting for {what}")


# --- one process under measurement ---


def command(kind: str, socket_path: Path, profiles_path: Path, script: Path,
            extra: tuple[str, ...] = ()) -> list[str]:
    if kind == "baseline":
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "m6t_desktop", "--socket", str(socket_path), "--profiles",
            str(profiles_path), "--no-notifications", *extra]


def spawn(display: Display, argv: list[str], work: Path, ready: Path) -> tuple[
        subprocess.Popen[bytes], float]:
    ready.unlink(missing_ok=True)
    env = {**display.env(), "M6T_DESKTOP_READY_FILE": str(ready),
           "XDG_CONFIG_HOME": str(work / "config")}
    started = time.time()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(work / "stderr.log", "ab"))  # noqa: SIM115
    return process, started


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_ready(ready: Path) -> tuple[str, float] | None:
    try:
        what, at = ready.read_text().split()
    except (OSError, ValueError):
        return None
    return what, float(at)


def startup(display: Display, argv: list[str], wm_class: str, work: Path) -> dict[str, Any]:
    ready = work / "ready"
    process, started = spawn(display, argv, work, ready)
    try:
        what, at = wait_for("the ready marker", lambda: read_ready(ready))
        embedded = None
        if what == "tray" and not display.offscreen:
            wait_for("the icon in the tray", lambda: display.embedded(wm_class))
            embedded = time.time() - started
        return {"ready": at - started, "embedded": embedded, "what": what}
    finally:
        stop(process)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


def cpu(display: Display, argv: list[str], work: Path, seconds: float,
        settle: float = 5.0) -> dict[str, float]:
    ready = work / "ready"
    process, _ = spawn(display, argv, work, ready)
    try:
        wait_for("the ready marker", lambda: read_ready(ready))
        time.sleep(settle)
        ticks, wall = cpu_ticks(process.pid), time.monotonic()
        time.sleep(seconds)
        used = (cpu_ticks(process.pid) - ticks) / CLOCK_TICKS
        elapsed = time.monotonic() - wall
        return {"percent": 100 * used / elapsed, "cpu_seconds": used, "wall": elapsed,
                "rss_mib": rss_kib(process.pid) / 1024}
    finally:
        stop(process)


# --- the run ---


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="start-ups of each (default 7)")
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    parser.add_argument("--offscreen", action="store_true",
                        help="no X server: Qt's offscreen platform (no tray)")
    args = parser.parse_args()

    import PySide6

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}; Python {platform.python_version()}, "
          f"PySide6 {PySide6.__version__}")
    with tempfile.TemporaryDirectory(prefix="m6t-bench-", dir="/tmp") as temporary:
        work = Path(temporary)
        socket_path = work / "helper.sock"
        profiles_path = work / "profiles.toml"
        profiles.save(profiles.ProfileBook([OFFICE], default="office"), profiles_path)
        script = work / "baseline.py"
        script.write_text(BASELINE)
        display = Display(work, args.offscreen)
        display.start()
        print("display: " + ("offscreen (no tray: the main window is what appears)"
                             if display.offscreen else f"Xvfb {display.name} + icewm "
                             "(a real XEmbed system tray)"))
        try:
            with ActiveTunnel(socket_path):
                results = run_all(args, display, work, socket_path, profiles_path, script)
        finally:
            display.stop()
    report(results, display.offscreen, args)
    return 0


def run_all(args: argparse.Namespace, display: Display, work: Path, socket_path: Path,
            profiles_path: Path, script: Path) -> dict[str, Any]:
    cases = {"baseline": ("m6t-baseline", command("baseline", socket_path, profiles_path,
                                                  script)),
             "app": ("m6t-desktop", command("app", socket_path, profiles_path, script))}
    starts: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for run in range(args.runs):
        for name, (wm_class, argv) in cases.items():
            result = startup(display, argv, wm_class, work)
            starts[name].append(result)
            embedded = f", in the tray {result['embedded']:.3f} s" if result["embedded"] \
                else ""
            print(f"start-up {run + 1}/{args.runs} {name:8s}: ready {result['ready']:.3f} s"
                  f"{embedded}")
    idle = IDLE_OFFSCREEN if display.offscreen else IDLE_TRAY
    loads = {
        "baseline, idle": cpu(display, cases["baseline"][1], work, args.cpu_seconds),
        idle: cpu(display, cases["app"][1], work, args.cpu_seconds),
        "m6t-desktop, status window open (graph live)": cpu(
            display, command("app", socket_path, profiles_path, script, ("--no-tray",)), work,
            args.cpu_seconds),
    }
    for name, load in loads.items():
        print(f"cpu {name}: {load['percent']:.2f} % of a core "
              f"({load['cpu_seconds']:.2f} s in {load['wall']:.1f} s), RSS "
              f"{load['rss_mib']:.0f} MiB")
    return {"starts": starts, "loads": loads}


def report(results: dict[str, Any], offscreen: bool, args: argparse.Namespace) -> None:
    starts, loads = results["starts"], results["loads"]
    key = "ready" if offscreen else "embedded"
    print()
    print("| start-up (s) | median to ready | median to icon in tray | max to icon in tray "
          "| first run |")
    print("|---|---|---|---|---|")
    for name, runs in starts.items():
        ready = statistics.median(r["ready"] for r in runs)
        if offscreen:
            print(f"| {name} | {ready:.3f} | n/a (offscreen) | n/a | {runs[0]['ready']:.3f} |")
        else:
            values = [r["embedded"] for r in runs]
            print(f"| {name} | {ready:.3f} | {statistics.median(values):.3f} | "
                  f"{max(values):.3f} | {values[0]:.3f} |")
    print()
    print(f"| CPU over {args.cpu_seconds:.0f} s | % of one core | RSS (MiB) |")
    print("|---|---|---|")
    for name, load in loads.items():
        print(f"| {name} | {load['percent']:.2f} | {load['rss_mib']:.0f} |")
    app_start = statistics.median(r[key] for r in starts["app"])
    idle = loads[IDLE_OFFSCREEN if offscreen else IDLE_TRAY]["percent"]
    print()
    print(f"verdict: start-up {app_start:.3f} s "
          f"({'under' if app_start < STARTUP_LIMIT else 'OVER'} {STARTUP_LIMIT} s); idle CPU "
          f"{idle:.2f} % ({'under' if idle < CPU_LIMIT else 'OVER'} {CPU_LIMIT} %)")


if __name__ == "__main__":
    sys.exit(main())
