"""Issue 21 part 5: two at once. Two builds to the same -o run one after the other (the second told who holds
it), and both bundles are whole; two processes preparing one runtime environment do not remove each other's."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from packager.contain import lifecycle

ROOT = Path(__file__).resolve().parent.parent


def test_exclusive_makes_the_second_wait_and_says_who(tmp_path):
    lock = tmp_path / "x.lock"
    said, order = [], []

    def second():
        with lifecycle.exclusive(lock, "writing dist/x", said.append):
            order.append("second")
    with lifecycle.exclusive(lock, "writing dist/x"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]
    assert said and said[0].startswith("waiting: edgepack pid") and "writing dist/x" in said[0]


def test_two_builds_to_one_output_both_succeed_whole(zoo, tmp_path):
    from packager.api import lock_path
    out = tmp_path / "dist" / "same"
    cmd = [sys.executable, "-m", "packager.cli", "build", str(zoo["keras3_h5"]), "-q", "float32", "--runtime",
           "ai-edge-litert", "-o", str(out), "--no-cache"]
    with lifecycle.exclusive(lock_path(out), "holding it for the test"):   # a third writer holds -o first
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(2)]
        time.sleep(20)                                 # both convert, then wait for -o
        assert all(p.poll() is None for p in procs)
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-800:] for r in results]
    assert all("waiting: edgepack pid" in err for _, err in results)       # each said who held it
    manifest = json.loads((out / "manifest.json").read_text())
    from packager.bundle.files import check_files
    assert check_files(out, manifest) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["same", "same.tar.gz"]
