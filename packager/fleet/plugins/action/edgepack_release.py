# edgepack_release: run edgepack's release protocol on one host over Ansible's connection.
# Generated playbooks use it; it needs edgepack (pip install 'edgepack[fleet]') on the controller.
#
#   - edgepack_release:
#       op: deploy            # deploy | status | rollback
#       bundle: /path/to/dist/NAME-rpi      # the bundle directory on the controller (deploy)
#       remote_dir: ~/edgepack/NAME
#       keep: 3
#       smoke: true           # run the bundled self-test; on failure switch this host back
#       install: false        # python -m venv DIR/venv && pip install --only-binary :all: <checked lines>
#       device_python: /usr/bin/python3     # optional
#       runtime: ai-edge-litert             # optional: the runtime the self-test uses
from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    """The ``edgepack_release`` task: edgepack's release protocol on one host over Ansible's connection."""
    TRANSFERS_FILES = False
    _requires_connection = True
    _supports_check_mode = False   # --check must not deploy: Ansible skips the task instead

    def run(self, tmp=None, task_vars=None):
        """Run the task's ``op`` on this host (:func:`packager.fleet.transport.run_op`); a failed task result when
        edgepack cannot be imported on the controller."""
        result = super().run(tmp, task_vars)
        try:
            from packager.fleet.transport import run_op
        except ImportError as exc:
            result.update(failed=True, msg="edgepack is not importable on the Ansible controller "
                                           f"({exc}); install it there: pip install 'edgepack[fleet]'")
            return result
        result.update(run_op(self, dict(self._task.args), task_vars or {}))
        return result
