"""The systemd units: systemd's own checker, the directives we rely on, and MDWE for real.

``systemd-analyze verify`` needs the ExecStart binary to exist, so it runs on temporary
copies whose ExecStart points at this venv's ``corec-node``; everything else is verbatim.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from meshutil import free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "corec-node.service"
TEMPLATE = ROOT / "systemd" / "corec-node@.service"
INSTALLED_BIN = "/usr/local/bin/corec-node"  # where systemd/README.md links the command
VENV_BIN = Path(sys.executable).parent / "corec-node"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (apt-get install systemd): unit files not verified by systemd",
)

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        assert "=" in line, f"{path}: not KEY=VALUE: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


@pytest.fixture(params=[UNIT, TEMPLATE], ids=["single", "template"])
def unit_path(request) -> Path:
    return request.param


def test_service_directives(unit_path):
    unit = parse_unit(unit_path)
    svc = "Service"
    assert one(unit, svc, "Type") == "notify"
    assert one(unit, svc, "NotifyAccess") == "main"
    assert one(unit, svc, "Restart") == "on-failure"
    assert float(one(unit, svc, "RestartSec")) > 0
    # 2: a config error, 65: a damaged store on disk; restarting cannot help either
    assert one(unit, svc, "RestartPreventExitStatus").split() == ["2", "65"]
    assert one(unit, svc, "WatchdogSec") == "10"
    assert one(unit, svc, "ExecReload") == "/bin/kill -HUP $MAINPID"  # the node reloads its keys on SIGHUP
    assert one(unit, svc, "User") == "corec" or one(unit, svc, "DynamicUser") == "yes"
    for key, value in HARDENING.items():
        assert one(unit, svc, key) == value, f"{key}= should be {value!r}"
    assert one(unit, svc, "RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    filters = unit[svc]["SystemCallFilter"]
    assert "@system-service" in filters
    assert one(unit, svc, "AmbientCapabilities") == ""
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _bytes(value: str) -> int:
    """A systemd size (1800M, 2G) in bytes."""
    match = re.fullmatch(r"([0-9]+)([KMGT]?)", value)
    assert match, f"{value!r}: expected a size such as 2G (a percentage or infinity is no bound to size)"
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2) or " "))


def test_memory_is_bounded(unit_path):
    """The kernel's bound on what unauthenticated peers can make libzmq buffer (README: Bounded input)."""
    unit = parse_unit(unit_path)
    high, most = _bytes(one(unit, "Service", "MemoryHigh")), _bytes(one(unit, "Service", "MemoryMax"))
    assert 512 << 20 <= high < most, "MemoryHigh a little below MemoryMax, both above a node's working set"
    assert high >= most * 0.8, "MemoryHigh far below MemoryMax would slow the node long before the bound"
    assert one(unit, "Service", "OOMPolicy") == "stop"  # the whole unit goes and Restart= brings it back
    text = unit_path.read_text()
    assert "MemoryMax" in text and "Size it" in text, "the unit says how to size the bound"


def _percent(value: str) -> int:
    match = re.fullmatch(r"([0-9]+)%", value)
    assert match, f"{value!r}: expected a percentage such as 200%"
    return int(match.group(1))


def test_cpu_and_tasks_are_bounded(unit_path):
    """Two cores' worth at least (the node is two processes, each one busy loop: less would
    throttle the loops themselves), and a thread/process bound far above a node's ~15 tasks."""
    unit = parse_unit(unit_path)
    quota = _percent(one(unit, "Service", "CPUQuota"))
    assert 200 <= quota <= 800
    assert "CPUQuotaPeriodSec" not in unit["Service"], "the default 100 ms period: a throttled loop waits at most that"
    tasks = int(one(unit, "Service", "TasksMax"))
    assert 256 <= tasks <= 4096
    text = unit_path.read_text()
    before = text[:text.index("\nCPUQuota=")]
    assert "WatchdogSec" in before.rsplit("\n\n", 1)[-1] and "100 ms" in before, "the reason, beside the value"
    assert "15" in text[:text.index("\nTasksMax=")].rsplit("CPUQuota=", 1)[-1], "what a node runs, beside TasksMax"


def test_single_node_paths():
    unit = parse_unit(UNIT)
    exec_start = one(unit, "Service", "ExecStart").split()
    assert exec_start[:2] == [INSTALLED_BIN, "run"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/corec/node.toml"
    state = one(unit, "Service", "StateDirectory")
    assert state == "corec-node"
    assert exec_start[exec_start.index("--data-dir") + 1] == f"%S/{state}"  # the data dir is the StateDirectory


def test_template_paths():
    unit = parse_unit(TEMPLATE)
    exec_start = one(unit, "Service", "ExecStart").split()
    assert exec_start[:2] == [INSTALLED_BIN, "run"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/corec/%i.toml"
    state = one(unit, "Service", "StateDirectory")
    assert state == "corec-node/%i"
    assert exec_start[exec_start.index("--data-dir") + 1] == f"%S/{state}"


def test_template_differs_only_by_instance():
    """The two units must not drift apart: same directives, apart from the per-instance ones."""
    single, template = parse_unit(UNIT), parse_unit(TEMPLATE)
    per_instance = {"Description", "ExecStart", "StateDirectory", "SyslogIdentifier", "EnvironmentFile"}
    for section in single.keys() | template.keys():
        a = {k: v for k, v in single.get(section, {}).items() if k not in per_instance}
        b = {k: v for k, v in template.get(section, {}).items() if k not in per_instance}
        assert a == b, f"[{section}] differs between the units"


def test_cli_accepts_the_unit_command_line():
    """ExecStart's flags exist: `run --config --data-dir` parse (then stop on the missing file)."""
    exec_start = one(parse_unit(UNIT), "Service", "ExecStart").split()
    args = [a.replace("%S", "/nonexistent-state") for a in exec_start[1:]]
    out = subprocess.run([sys.executable, "-m", "corec_node", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2  # a config error (the file is absent here), not a usage error
    assert "/etc/corec/node.toml" in out.stderr and "unrecognized arguments" not in out.stderr


# -- systemd's own checks -------------------------------------------------------------------


def _copy_for_verify(src: Path, dest_dir: Path, name: str | None = None, extra: str = "") -> Path:
    text = src.read_text()
    assert INSTALLED_BIN in text
    text = text.replace(INSTALLED_BIN, str(VENV_BIN))  # verify checks the binary is executable
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    dest = dest_dir / (name or src.name)
    dest.write_text(text)
    return dest


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(path)], capture_output=True, text=True,
                          timeout=60, cwd=path.parent)


@needs_analyze
@pytest.mark.parametrize(("src", "verify_as"), [(UNIT, "corec-node.service"), (TEMPLATE, "corec-node@a.service")])
def test_systemd_analyze_verify(tmp_path, src, verify_as):
    assert VENV_BIN.exists(), f"{VENV_BIN} missing: install the package into the venv"
    _copy_for_verify(src, tmp_path)
    out = _verify(tmp_path / verify_as)  # a template is verified through an instance of it
    # verify exits 0 on unknown keys and bad values, so every line it prints is a finding
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


@needs_analyze
def test_systemd_analyze_verify_catches_mistakes(tmp_path):
    """The check above is live: a misspelt key and a bad value are reported."""
    _copy_for_verify(UNIT, tmp_path, "broken.service", extra="WatchdogSecs=10\nProtectSystem=sometimes")
    out = _verify(tmp_path / "broken.service")
    assert "Unknown key 'WatchdogSecs'" in out.stderr and "sometimes" in out.stderr


@needs_analyze
def test_hardening_exposure_is_low(tmp_path):
    path = _copy_for_verify(UNIT, tmp_path)
    out = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    if "--offline" in out.stderr or "unrecognized option" in out.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 252)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) < 2.0, out.stdout


# -- MemoryDenyWriteExecute=yes: the node really runs without W+X memory ------------------------

PR_SET_MDWE = 65  # Linux 6.3: the kernel's MemoryDenyWriteExecute, which systemd >= 254 uses when present
PR_MDWE_REFUSE_EXEC_GAIN = 1

MDWE_CHILD = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(%(set)d, %(refuse)d, 0, 0, 0) != 0:
        sys.exit(77)
    try:  # canary: the restriction is in force
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit(78)
    except PermissionError:
        pass
    import numpy as np, zmq, msgpack, zstandard, sqlite3, sklearn.cluster
    a = np.random.default_rng(0).random((200, 200))
    assert (a @ a).sum() > 0 and np.fft.fft(a[0]).shape == (200,)
    sklearn.cluster.KMeans(n_clusters=2, n_init=1).fit(a[:, :3])
    assert len(zmq.curve_keypair()[0]) == 40
    from corec_node.cli import main  # runs until the test, having read event=ready, sends SIGTERM
    sys.exit(main(["run", "--name", "mdwe", "--data-dir", %(data)r, "--listen", %(listen)r]))
""")


def _mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import ctypes, sys
        sys.exit(0 if ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 else 1)
    """)], timeout=30)
    return probe.returncode == 0


def test_node_runs_under_memory_deny_write_execute(tmp_path):
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3): cannot emulate MemoryDenyWriteExecute here")
    data = tmp_path / "d"
    script = MDWE_CHILD % {"set": PR_SET_MDWE, "refuse": PR_MDWE_REFUSE_EXEC_GAIN,
                           "data": str(data), "listen": f"127.0.0.1:{free_port()}"}
    env = dict(os.environ, COREC_MESH_PUB_LISTEN=f"127.0.0.1:{free_port()}", PYTHONUNBUFFERED="1")
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the node's log, until it says it is ready (or the child ends)
            lines.append(line)
            if "event=ready" in line:
                proc.send_signal(signal.SIGTERM)  # a systemctl stop
                break
        lines += proc.stdout.readlines()  # to EOF: the child's last words
        returncode = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    stdout, stderr = "".join(lines), errors.read_text()
    assert returncode not in (77, 78), "MDWE could not be set or was not enforced"
    assert returncode == 0, stdout + stderr
    assert "event=ready" in stdout and "event=stopped" in stdout
    assert "Traceback" not in stderr
