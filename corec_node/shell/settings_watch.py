"""A node runs with the cluster's committed settings (``cluster_settings.py``): at start,
those of the configuration stored in its data directory; while it runs, when the committed
ones change, it restarts itself in place (the same process id, so systemd and a
supervisor see one process) and starts with them. A difference from the node's own file is
said once: one log line per key and one alert. The tick interval changes while the node
runs; the others take a restart.

A restart carries what it restarted for (``COREC_RESTARTED_FOR``): if the node still
differs from those same settings after it, it says so and runs on, never in a loop."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from corec_node import cluster_settings, log
from corec_node.config import Config
from corec_node.shell.datadir import DamagedFile, load_voters

RESTARTED_FOR = "COREC_RESTARTED_FOR"


def _text(settings: cluster_settings.Settings) -> str:
    return ",".join(f"{k}={v}" for k, v in settings)


class SettingsWatch:
    """``file``: the node's configuration as its file, environment and flags give it."""

    def __init__(self, file: Config, alert: Callable[..., None] | None = None) -> None:
        self.file = file
        self.alert = alert
        self.differences: dict[str, tuple[str, str]] = {}
        self.restart_for: cluster_settings.Settings | None = None  # set: restart in place on the way out
        self._said: cluster_settings.Settings = ()

    def at_start(self) -> Config:
        """The configuration to run with: the file's, with the stored committed settings
        in place (a damaged or unreadable file is the start check's to report)."""
        try:
            stored = load_voters(self.file.data_dir)
        except (DamagedFile, OSError):
            stored = None
        committed = stored[4] if stored is not None else ()
        running = cluster_settings.apply(self.file, committed)
        self._say(committed)
        return running

    def said_at_start(self) -> None:
        """The alert for a difference found at start (once the node can raise one)."""
        if self.differences and self.alert is not None:
            self._alert()

    def on_view(self, committed: cluster_settings.Settings, running: Config) -> Config | bool:
        """The committed settings as the mesh process knows them now: False, nothing to do;
        a Config, run with it from now on (only ``LIVE`` keys differ); True, the node must
        restart to run with them (``restart_for`` is set)."""
        if not committed or self.restart_for is not None:
            return False
        if committed != self._said:
            self._say(committed)
            if self.differences and self.alert is not None:
                self._alert()
        differ = cluster_settings.differences(running, committed)
        if not differ:
            return False
        if set(differ) <= cluster_settings.LIVE:
            log.event("cluster_settings_applied", committed=_text(committed), keys=",".join(sorted(differ)),
                      detail="in effect from the next tick")
            return cluster_settings.apply(running, committed)
        if os.environ.get(RESTARTED_FOR) == _text(committed):
            log.event("cluster_settings_not_applied", logging.ERROR, committed=_text(committed),
                      detail="a restart did not bring them into effect; running on with this node's values")
            return False
        log.event("cluster_settings_changed", logging.WARNING, committed=_text(committed),
                  detail="restarting in place to run with them")
        self.restart_for = committed
        return True

    def _say(self, committed: cluster_settings.Settings) -> None:
        self._said = committed
        self.differences = cluster_settings.differences(self.file, committed)
        for key, (mine, theirs) in sorted(self.differences.items()):
            log.event("cluster_setting_differs", logging.WARNING, key=key, file=mine, committed=theirs,
                      detail="running with the committed value (corec-node settings set changes it cluster-wide)")

    def _alert(self) -> None:
        keys = ", ".join(f"{k} {a} (committed {b})" for k, (a, b) in sorted(self.differences.items()))
        assert self.alert is not None
        self.alert("cluster_settings", f"this node's configuration differs from the cluster's committed settings: "
                   f"{keys}; running with the committed values", severity="warning")


def restart_in_place(committed: cluster_settings.Settings) -> None:
    """Replace this process with a fresh start of the same command line (it never returns)."""
    os.environ[RESTARTED_FOR] = _text(committed)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
