# edgepack_events: write every host result of the play as one JSON line to $EDGEPACK_FLEET_EVENTS,
# so edgepack reads Ansible's results as data instead of parsing its screen output.
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


def _result(res):
    data = getattr(res, "result", None)
    if data is None:
        data = getattr(res, "_result", {})
    try:
        return json.loads(json.dumps(dict(data), default=str))
    except Exception:  # noqa: BLE001
        return {"msg": str(data)}


class CallbackModule(CallbackBase):
    """Writes each play start and every host result as one JSON line to ``$EDGEPACK_FLEET_EVENTS`` (nothing when it
    is unset)."""
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "edgepack_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("EDGEPACK_FLEET_EVENTS")
        self._fh = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def _emit(self, **event):
        if self._fh is not None:
            self._fh.write(json.dumps(event, default=str) + "\n")
            self._fh.flush()

    def v2_playbook_on_play_start(self, play):
        """Emit ``play_start`` with every host of the play (not only this batch) and ``serial``."""
        hosts = None
        try:
            inventory = play.get_variable_manager()._inventory
            # every host of the play (--limit applies), not only this serial batch
            hosts = [h.name for h in inventory.get_hosts(play.hosts, ignore_restrictions=True)]
        except Exception:  # noqa: BLE001,S110 - the host list is a nicety (hosts never reached)
            pass
        self._emit(event="play_start", play=play.get_name(), hosts=hosts,
                   serial=[str(s) for s in (play.serial or [])])

    def _host_event(self, status, res, **extra):
        task = getattr(res, "task", None) or getattr(res, "_task", None)
        host = getattr(res, "host", None) or getattr(res, "_host", None)
        self._emit(event="host", status=status, host=host.get_name() if host else None,
                   task=getattr(task, "action", None), result=_result(res), **extra)

    def v2_runner_on_ok(self, result):
        """Emit a ``host`` event with status ok and the task result."""
        self._host_event("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        """Emit a ``host`` event with status failed, the result and whether errors were ignored."""
        self._host_event("failed", result, ignored=bool(ignore_errors))

    def v2_runner_on_unreachable(self, result):
        """Emit a ``host`` event with status unreachable and Ansible's message."""
        self._host_event("unreachable", result)

    def v2_runner_on_skipped(self, result):
        """Emit a ``host`` event with status skipped."""
        self._host_event("skipped", result)

    def v2_playbook_on_no_hosts_remaining(self):
        """Emit ``no_hosts_remaining``: every host of the play failed."""
        self._emit(event="no_hosts_remaining")

    def v2_playbook_on_stats(self, stats):
        """Emit ``stats`` (Ansible's counts per host) and close the events file."""
        hosts = sorted(set(stats.processed))
        self._emit(event="stats", hosts={h: stats.summarize(h) for h in hosts})
        if self._fh is not None:
            self._fh.close()
            self._fh = None
