"""The stat cache (packager.statcache): a file's sha256 is remembered by its stat and never trusted when the stat
differs; a write in the same clock tick as the read is never remembered; bundle archives are checked without
reading when nothing moved, and read again when anything did."""
import hashlib
import os
import time

import pytest

from packager import statcache
from packager.bundle.files import archive_matches, sha256_tree, write_archive

pytestmark = pytest.mark.fast


@pytest.fixture(autouse=True)
def _cache_on(monkeypatch):
    monkeypatch.delenv("EDGEPACK_NO_CACHE", raising=False)


def _age(path, seconds=10):
    """Make ``path`` look written ``seconds`` ago (as a model saved before the build is); its ctime is now, so
    wait out the racy-write margin too."""
    t = time.time_ns() - seconds * 1_000_000_000
    os.utime(path, ns=(t, t))
    time.sleep(2 * statcache.RACY_NS / 1e9)


def _reads(monkeypatch) -> list:
    """Paths statcache opens to hash."""
    opened = []
    real = open

    def spy(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)
    monkeypatch.setattr("builtins.open", spy)
    return opened


def test_unchanged_file_is_not_read_again_and_a_same_size_edit_is(tmp_path, monkeypatch):
    f = tmp_path / "model.keras"
    f.write_bytes(b"a" * 1000)
    _age(f)
    assert statcache.sha256_file(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    statcache.save()
    statcache._state = None                       # a new process: read from the cache file
    opened = _reads(monkeypatch)
    assert statcache.sha256_file(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert str(f) not in opened
    # Same size, mtime put back exactly as it was: the ctime moved, so it is read again.
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert statcache.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert str(f) in opened


def test_a_file_written_just_before_its_read_is_not_remembered(tmp_path):
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"x" * 10)                      # mtime = now: a write in the same tick could follow unseen
    statcache.sha256_file(f)
    assert statcache.known(f) is None
    _age(f)
    statcache.sha256_file(f)
    assert statcache.known(f) == hashlib.sha256(b"x" * 10).hexdigest()


def test_no_cache_reads_everything(tmp_path, monkeypatch):
    f = tmp_path / "m.bin"
    f.write_bytes(b"y" * 10)
    _age(f)
    statcache.sha256_file(f)
    monkeypatch.setenv("EDGEPACK_NO_CACHE", "1")
    assert statcache.known(f) is None


def test_tree_digest_is_the_bundle_files_one(tmp_path):
    d = tmp_path / "saved_model"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"pb")
    (d / "variables" / "v.data").write_bytes(b"data")
    for p in d.rglob("*"):
        _age(p)
    assert statcache.sha256_tree(d) == sha256_tree(d)
    assert statcache.sha256_tree(d) == sha256_tree(d)      # remembered: the same digest


def _bundle(tmp_path):
    b = tmp_path / "out" / "bundle"
    (b / "samples").mkdir(parents=True)
    (b / "model.tflite").write_bytes(b"m" * 5000)
    (b / "README.md").write_text("readme\n")
    (b / "samples" / "x.npz").write_bytes(b"s" * 100)
    for p in b.rglob("*"):
        if p.is_file():
            _age(p)
    return b


def test_archive_check_reads_nothing_when_nothing_moved_and_everything_when_a_file_did(tmp_path, monkeypatch):
    b = _bundle(tmp_path)
    archive = write_archive(b)
    statcache.save()
    statcache._state = None
    from packager.bundle import files
    reads, real = [], files._tar_bytes
    monkeypatch.setattr(files, "_tar_bytes", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert archive_matches(b, archive)
    assert reads == []
    # The same size, a later mtime: read again, and the archive no longer describes the bundle.
    (b / "README.md").write_text("READMe\n")
    assert not archive_matches(b, archive)
    assert reads == [b]
    # Put back: matches again (read, not trusted from the cache).
    (b / "README.md").write_text("readme\n")
    assert archive_matches(b, archive)
    # An extra file in the bundle: another tree.
    _age(b / "README.md")
    (b / "extra.txt").write_text("x")
    _age(b / "extra.txt")
    assert not archive_matches(b, archive)
    (b / "extra.txt").unlink()
    assert archive_matches(b, archive)
    # A replaced archive (another tail) is caught from its trailer alone.
    data = archive.read_bytes()
    archive.write_bytes(data[:-8] + bytes(8))
    assert not archive_matches(b, archive)


def test_an_archive_written_right_after_its_files_is_remembered(tmp_path):
    """A build writes manifest.json just before the archive: write_archive waits out the timestamps' granularity
    (milliseconds) so that the unchanged rebuild right after reads nothing."""
    b = _bundle(tmp_path)
    (b / "manifest.json").write_text("{}\n")       # written now
    write_archive(b)
    known = statcache.known_tree(b)
    assert known is not None and known[1] is not None
