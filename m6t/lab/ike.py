"""Real IKEv2 and IPsec through the tunnel: strongSwan in the mobile node and the home agent.

What users run m6t for: a Mobile IPv6 node whose IKE and IPsec with its home agent keep
working on an IPv4-only network. This kernel has no ESP (and no MIP6), so both ends run
strongSwan's charon with `kernel-libipsec` (ESP in user space, on a TUN device `ipsec0`, ESP
in UDP as libipsec requires). The layout is that of Mobile IPv6 with IPsec:

* the IKE SA runs between the care-of address, here the m6t tunnel address, and the home
  agent (fd48:4100::2): it moves with the tunnel address (MOBIKE, RFC 4555) when the laptop
  roams, as a binding update moves the binding;
* the ESP CHILD_SA, in tunnel mode, carries the traffic of the home address (HOME_ADDRESS,
  on mn's loopback) with a home-side address (CORRESPONDENT, on ha's loopback): it stays the
  same, whatever network the laptop is on.

Each charon gets its own configuration (STRONGSWAN_CONF), log and vici socket in the lab's
directory, and a private /run (a mount namespace of its own), so two of them, and a host's
own, never meet. `swanctl` drives each through its vici socket.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m6t.lab.lab import Lab

CHARON = "/usr/sbin/charon-systemd"  # Debian's charon-systemd: the daemon, no starter
HOME_ADDRESS = "fd48:4100:1::100"
CORRESPONDENT = "fd48:4100::100"
PSK = "m6t-lab-ike-secret"
# Only what the test needs: no forecast, farp, connmark, bypass-lan... touching the namespace.
PLUGINS = ("random nonce openssl pem pkcs1 curve25519 sha2 hmac kdf gcm kernel-libipsec "
           "kernel-netlink socket-default vici")

STRONGSWAN_CONF = """\
charon {{
  load = {plugins}
{interfaces}  filelog {{
    log {{
      path = {log}
      default = 1
      ike = 2
      append = no
      flush_line = yes
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici}
    }}
  }}
}}
"""

SWANCTL_CONF = """\
connections {{
  home {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    encap = yes
    mobike = yes
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      home {{
        local_ts = {local_ts}/128
        remote_ts = {remote_ts}/128
        mode = tunnel
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-home {{
    id-mn = mn@m6t.lab
    id-ha = ha@m6t.lab
    secret = "{psk}"
  }}
}}
"""


class IkeError(RuntimeError):
    pass


@dataclass(frozen=True)
class IkeSa:
    """What `swanctl --list-sas` says of the IKE SA: its SPIs name it across MOBIKE."""

    spis: str  # "initiator_responder"
    local: str  # the address IKE uses here now
    children_installed: int


def available() -> str | None:
    """Why strongSwan cannot run here, or None."""
    missing = [tool for tool in (CHARON, "swanctl") if shutil.which(tool) is None]
    if missing:
        return f"strongSwan is not installed ({', '.join(missing)}): scripts/setup-system"
    if not Path("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so").exists():
        return "strongSwan's kernel-libipsec plugin is missing (libcharon-extra-plugins)"
    return None


class IkePair:
    """charon in mn (initiator, from the tunnel address `mn_address`) and in ha."""

    def __init__(self, lab: Lab, mn_address: str, tunnel_device: str = "m6t0") -> None:
        self.lab = lab
        self.tunnel_device = tunnel_device
        self.ends = {"mn": (mn_address, lab.addr.home_agent, HOME_ADDRESS, CORRESPONDENT),
                     "ha": (lab.addr.home_agent, mn_address, CORRESPONDENT, HOME_ADDRESS)}

    def directory(self, role: str) -> Path:
        return self.lab.workdir / f"ike-{role}"

    def start(self) -> None:
        from m6t.lab.lab import wait_for

        self.lab.ip("mn", "addr", "add", f"{HOME_ADDRESS}/128", "dev", "lo")
        self.lab.ip("ha", "addr", "add", f"{CORRESPONDENT}/128", "dev", "lo")
        for role, (local, remote, local_ts, remote_ts) in self.ends.items():
            directory = self.directory(role)
            directory.mkdir()
            (directory / "strongswan.conf").write_text(STRONGSWAN_CONF.format(
                plugins=PLUGINS, interfaces=self.interfaces(role), log=directory / "charon.log",
                vici=directory / "charon.vici"))
            (directory / "swanctl.conf").write_text(SWANCTL_CONF.format(
                local=local, remote=remote, local_ts=local_ts, remote_ts=remote_ts,
                local_id=f"{role}@m6t.lab", remote_id=f"{'ha' if role == 'mn' else 'mn'}@m6t.lab",
                psk=PSK))
            # A private /run: charon's pid file and the host's own charon stay apart.
            self.lab.spawn(role, ["unshare", "--mount", "sh", "-c",
                                  f"mount -t tmpfs m6t-ike /run && exec {CHARON}"],
                           log_name=f"charon-{role}",
                           env={"STRONGSWAN_CONF": str(directory / "strongswan.conf")})
        for role in self.ends:
            vici = self.directory(role) / "charon.vici"
            wait_for(vici.exists, 10, f"charon in {role} to listen")
            self.swanctl(role, "--load-all", "--file", str(self.directory(role) / "swanctl.conf"))

    def interfaces(self, role: str) -> str:
        """The laptop's charon looks at the tunnel device alone (README, "IKE and IPsec"): the
        IPv4 links' changes are not IKE's business, and their private addresses are no use to
        the home agent. Otherwise a roam's new IPv4 address makes charon send the home agent
        the new address list from the old tunnel address, which is dead by then, and retransmit
        it only after 4 s; with it, the new tunnel address triggers the MOBIKE update at once."""
        return f"  interfaces_use = {self.tunnel_device}\n" if role == "mn" else ""

    def swanctl(self, role: str, *args: str, timeout: float = 30) -> str:
        directory = self.directory(role)
        result = self.lab.run(role, ["env", f"STRONGSWAN_CONF={directory / 'strongswan.conf'}",
                                     "swanctl", *args, "--uri", f"unix://{directory}/charon.vici"],
                              check=False, timeout=timeout)
        if result.returncode != 0:
            raise IkeError(f"swanctl {' '.join(args)} in {role} failed: "
                           f"{(result.stdout + result.stderr).strip()[-800:]}")
        return result.stdout

    def initiate(self) -> None:
        self.swanctl("mn", "--initiate", "--child", "home", "--timeout", "20")

    def sa(self, role: str = "mn") -> IkeSa | None:
        text = self.swanctl(role, "--list-sas")
        head = re.search(r"^home: #\d+, ESTABLISHED, IKEv2, (\w+)_i\*? (\w+)_r", text, re.M)
        local = re.search(r"^\s+local\s+'[^']*' @ ([0-9a-f:.]+)\[\d+\]", text, re.M)
        if head is None or local is None:
            return None
        return IkeSa(f"{head.group(1)}_{head.group(2)}", local.group(1),
                     len(re.findall(r"INSTALLED, TUNNEL", text)))

    def ping(self, count: int = 1, wait: float = 1) -> bool:
        """An ICMPv6 echo from the home address to the home side, inside ESP."""
        result = self.lab.run("mn", ["ping", "-6", "-c", str(count), "-W", str(wait), "-i",
                                     "0.2", "-I", HOME_ADDRESS, CORRESPONDENT],
                              check=False, timeout=count * wait + 10)
        return result.returncode == 0

    def log(self, role: str) -> str:
        path = self.directory(role) / "charon.log"
        return path.read_text(errors="replace") if path.exists() else ""
