"""Roll one bundle out to many devices with Ansible (``edgepack fleet``); see docs/fleet.md.

    from packager import fleet
    r = fleet.deploy("dist/m-rpi", "inventory.ini", batch="1,10%,100%", max_fail="10%", smoke=True)
    r.ok, [(h.host, h.outcome, h.release, h.reason) for h in r.hosts]
    fleet.status("inventory.ini", bundle_dir="dist/m-rpi"); fleet.rollback("inventory.ini", limit="pi-07")
    fleet.export("dist/m-rpi", "playbook/")
    v = fleet.verify("dist/m-rpi", "inventory.ini", reference="model.h5", data="eval.npz")
    [(h.host, h.verdict, h.line, h.odd) for h in v.hosts]          # the verdict computed on each device

Needs ansible-core (``pip install 'edgepack[fleet]'``); without it every call raises
EnvironmentProblem (exit 5) with that hint.
"""
from __future__ import annotations

from .core import (INSTALL_HINT, FleetResult, HostResult, deploy, export, parse_batches, parse_max_fail,
                   playbook_text, require_ansible, rollback, status, verify)

__all__ = ["deploy", "verify", "status", "rollback", "export", "FleetResult", "HostResult", "require_ansible",
           "parse_batches", "parse_max_fail", "playbook_text", "INSTALL_HINT"]
