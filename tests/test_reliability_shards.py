"""Shard sets are never lost, torn or silently partial (issue 18, items 1, 2 and 10).

- An output whose shard set overlaps the inputs being read is refused before anything is
  written (`pseudo-label --output X/train --data "X/train-*"`).
- The commit of a shard set survives a SIGKILL between any two of its renames: the next reader
  or writer finishes it or rolls it back, never reading a torn set. The kill is real: a child
  process runs `write_dataset` and dies inside `os.replace` / `os.remove`.
- A commit is live while its writer holds the set's `flock` (`NAME.commit.lock`), whatever PID
  or host its journal records: a live writer paused mid-rename is never touched, a killed
  writer's journal from "another host" is recovered at once. Without `flock`, PIDs decide.
- A dead writer's backup that is a file's only copy is put back, never deleted; other debris
  goes only once a new commit has landed.
- Readers refuse a set that does not match its manifest (a missing shard, a leftover shard of
  another shard count, a changed byte, a wrong record count), and `read_examples` (evaluate,
  tune-crf, predict ...) checks as training does, saying how to read a subset on purpose. A
  JSON that is not a manifest (COCO's `train.json`) is ignored, by the class checks too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import apps, cli
from keras_dense.data import BadInputError, read_examples
from keras_dense.data.schema import Record
from keras_dense.data.tfrecord_files import check_files, resolve_files
from keras_dense.data.writer import write_dataset
from keras_dense.utils.model_card import write_model_card

CLASSES = ["background", "thing"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path / "cache"))


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _record(tag: str, i: int) -> Record:
    rgb = np.full((8, 12, 3), (37 * i) % 256, np.uint8)
    mask = np.zeros((8, 12), np.uint8)
    mask[: i % 8] = 1
    return Record(
        source_id=f"{tag}{i}",
        image_bytes=_png(rgb),
        image_format="png",
        height=8,
        width=12,
        mask_png=_png(mask),
    )


def write_set(output, n: int, num_shards: int, tag: str = "a", **kwargs) -> dict:
    return write_dataset(
        str(output),
        list(range(n)),
        lambda i: _record(tag, i),
        num_shards=num_shards,
        classes=CLASSES,
        progress=False,
        **kwargs,
    )


def ids(pattern) -> list[str]:
    return sorted(example["source_id"] for example in read_examples(str(pattern)))


def ids_unchecked(pattern) -> list[str]:
    return sorted(example["source_id"] for example in read_examples(str(pattern), verify=False))


def snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def by_hand(path, n: int, tag: str = "h") -> None:
    """A shard written the way another tool writes OD-API records (no manifest)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(n):
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[_png(np.zeros((8, 12, 3), np.uint8))])
                ),
                "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
                "image/source_id": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[f"{tag}{i}".encode()])
                ),
                "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[8])),
                "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[12])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


# ------------------------------------------------------------ item 1: output onto its input


def test_output_overlapping_its_input_is_refused_before_anything_is_written(tmp_path):
    write_set(tmp_path / "train", 6, 2)
    before = snapshot(tmp_path)
    cases = [
        (2, str(tmp_path / "train-*")),  # the same shards
        (3, str(tmp_path / "train-*")),  # another shard count: the old shards would be removed
        (1, str(tmp_path / "train-00001-of-00002.tfrecord")),  # one shard of the set
        (2, str(tmp_path / "train.json")),  # the manifest it would replace
    ]
    for num_shards, pattern in cases:
        with pytest.raises(ValueError, match=r"is also an input") as err:
            write_set(tmp_path / "train", 4, num_shards, "b", read_from=resolve_files(pattern))
        assert str(tmp_path / "train") in str(err.value)
        assert snapshot(tmp_path) == before, pattern
    # The same input through another spelling of the path (a symlinked folder) is caught too.
    os.symlink(tmp_path, tmp_path / "alias")
    with pytest.raises(ValueError, match=r"is also an input"):
        files = resolve_files(str(tmp_path / "alias" / "train-*"))
        write_set(tmp_path / "train", 4, 2, "b", read_from=files)
    assert snapshot(tmp_path) == before
    # Another name in the same folder is fine, and so is a name that only shares a prefix.
    write_set(tmp_path / "train_pseudo", 4, 2, "b", read_from=resolve_files(str(tmp_path / "t*")))
    write_set(tmp_path / "tra", 4, 1, "b", read_from=resolve_files(str(tmp_path / "train-*")))
    assert ids(tmp_path / "train-*.tfrecord") == [f"a{i}" for i in range(6)]


def test_pseudo_label_onto_its_own_input_is_refused(tmp_path, capsys):
    write_set(tmp_path / "train", 3, 1)
    keras.utils.set_random_seed(0)
    model = apps.wsl_classifier(num_classes=1, pooling="gap")
    path = str(tmp_path / "models" / "cls.keras")
    os.makedirs(os.path.dirname(path))
    model.save(path)
    write_model_card(
        path, {"task": "classification", "normalization": "caffe", "classes": ["thing"]}
    )
    before = snapshot(tmp_path)
    args = ["pseudo-label", "--model", path, "--data", str(tmp_path / "train-*")]
    assert cli.main([*args, "--output", str(tmp_path / "train")]) == 2
    err = capsys.readouterr().err
    assert "train-00000-of-00001.tfrecord is also an input" in err, err
    assert snapshot(tmp_path) == before
    assert ids(tmp_path / "train-*.tfrecord") == ["a0", "a1", "a2"]  # ground truth intact


# ------------------------------------------------------------ item 2: a SIGKILL mid-commit

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import cv2
    import numpy as np
    from keras_dense.data.schema import Record
    from keras_dense.data.writer import write_dataset

    def png(a):
        return cv2.imencode(".png", a)[1].tobytes()

    def record(tag, i):
        mask = np.zeros((8, 12), np.uint8)
        mask[: i % 8] = 1
        return Record(source_id=f"{tag}{i}", image_bytes=png(np.full((8, 12, 3), 37 * i % 256,
                      np.uint8)), image_format="png", height=8, width=12, mask_png=png(mask))

    def write(output, n, shards, tag):
        write_dataset(output, list(range(n)), lambda i: record(tag, i), num_shards=shards,
                      classes=["background", "thing"], progress=False)

    def killed_at(job):
        directory, k = os.path.abspath(job["dir"]), job["k"]
        events = [0]
        real_replace, real_remove = os.replace, os.remove

        def event(path):
            path = os.path.abspath(str(path))
            if os.path.dirname(path) != directory or ".commit." in path:
                return  # the journal's and the lock's bookkeeping are not the set's renames
            if events[0] == k and "go" in job:  # pause (a live writer), until told to go on
                open(job["paused"], "w").close()
                while not os.path.exists(job["go"]):
                    time.sleep(0.02)
            elif events[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            events[0] += 1

        def replace(src, dst):
            event(dst)
            return real_replace(src, dst)

        def remove(path):
            if os.path.exists(path):
                event(path)
            return real_remove(path)

        os.replace, os.remove, os.unlink = replace, remove, remove
        write(os.path.join(directory, "train"), job["n"], job["shards"], "b")

    def race(job):
        for i in range(job["rounds"]):
            write(os.path.join(job["dir"], "train"), job["n"], job["shards"], job["tag"])

    results = []
    for job in json.loads(sys.argv[1]):
        pids = []
        for task in job.get("racers", [job]):
            pid = os.fork()
            if pid == 0:
                try:
                    (race if "rounds" in task else killed_at)(task)
                    os._exit(0)
                except BaseException:
                    import traceback; traceback.print_exc()
                    os._exit(3)
            pids.append(pid)
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
        results.append([{"pid": pid, "killed": os.WIFSIGNALED(s), "code": os.WEXITSTATUS(s)
                         if os.WIFEXITED(s) else None} for pid, s in zip(pids, statuses)])
    print("RESULTS " + json.dumps(results))
    """
)


def start_child(folder, jobs) -> subprocess.Popen:
    script = folder / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def child_results(child: subprocess.Popen, timeout=240) -> list:
    out, err = child.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("RESULTS ")]
    assert child.returncode == 0 and lines, out + err
    return json.loads(lines[-1][len("RESULTS ") :])


def run_child(folder, jobs, timeout=240) -> list:
    return child_results(start_child(folder, jobs), timeout)


def dead_pid() -> int:
    """The PID of a process that has ended."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _consistent(directory, allowed: dict[str, list[str]]) -> str:
    """Which of the allowed sets the folder holds; asserts it is whole and matches its manifest."""
    pattern = str(directory / "train-*.tfrecord")
    got = ids(pattern)
    names = [k for k, want in allowed.items() if got == want]
    assert names, f"a torn set: {got}"
    manifest = json.loads((directory / "train.json").read_text())
    listed = sorted(s["file"] for s in manifest["shards"])
    assert listed == sorted(os.path.basename(p) for p in glob.glob(pattern))
    assert manifest["num_images"] == len(got)
    check_files(glob.glob(pattern), use_cache=False)
    debris = [p.name for p in directory.iterdir() if ".tmp-" in p.name or "commit" in p.name]
    assert not debris, debris
    return names[0]


def _expect_recovery_warning(call, had_journal: bool):
    if not had_journal:
        return call()
    with pytest.warns(UserWarning, match=r"train\.commit\.json.*interrupted") as record:
        out = call()
    assert any("PID" in str(w.message) for w in record)
    return out


# (old shard count, new shard count): new names differ from the old (the old are retired),
# and new names equal the old (each old file is backed up, then replaced).
LAYOUTS = {"3->2": (3, 2), "2->2": (2, 2)}
KILL_POINTS = range(0, 12)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Folders where `write_dataset` of set "b" over set "a" was SIGKILLed at each point."""
    root = tmp_path_factory.mktemp("killed")
    jobs, folders = [], {}
    for layout, (old, new) in LAYOUTS.items():
        for k in KILL_POINTS:
            folder = root / f"{layout.replace('->', '_')}_{k}"
            folder.mkdir()
            write_set(folder / "train", 6, old, "a")
            jobs.append({"dir": str(folder), "k": k, "n": 4, "shards": new})
            folders[layout, k] = folder
    results = run_child(root, jobs)
    outcome = {key: result[0] for key, result in zip(folders, results)}
    for key, result in outcome.items():
        assert result["killed"] or result["code"] == 0, (key, result)
    return folders, outcome


ALL_A = [f"a{i}" for i in range(6)]
ALL_B = [f"b{i}" for i in range(4)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigkill_between_renames_is_recovered_by_the_next_reader(killed, layout, tmp_path):
    folders, outcome = killed
    seen = []
    for k in KILL_POINTS:
        copy = tmp_path / f"reader_{k}"
        shutil.copytree(folders[layout, k], copy)
        had_journal = (copy / "train.commit.json").exists()
        which = _expect_recovery_warning(
            lambda copy=copy: _consistent(copy, {"old": ALL_A, "new": ALL_B}), had_journal
        )
        seen.append((k, outcome[layout, k]["killed"], had_journal, which))
    # The kill points reach before, inside and after the renames.
    assert seen[0][1] and seen[0][2], seen  # k=0: journal written, nothing renamed yet
    assert sum(journal for _, _, journal, _ in seen) >= 4, seen
    assert not seen[-1][1] and seen[-1][3] == "new", seen  # past the last event: completed


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigkill_between_renames_is_recovered_by_the_next_writer(killed, layout, tmp_path):
    folders, _ = killed
    for k in KILL_POINTS:
        copy = tmp_path / f"writer_{k}"
        shutil.copytree(folders[layout, k], copy)
        had_journal = (copy / "train.commit.json").exists()
        _expect_recovery_warning(
            lambda copy=copy: write_set(copy / "train", 5, 1, "c"), had_journal
        )
        assert _consistent(copy, {"c": [f"c{i}" for i in range(5)]}) == "c"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_interrupted_commit_with_a_lost_new_file_rolls_back(killed, layout, tmp_path):
    """When a new file is gone (deleted by hand), the commit cannot finish: the old set returns."""
    folders, _ = killed
    rolled_back = 0
    for k in KILL_POINTS:
        copy = tmp_path / f"lost_{k}"
        shutil.copytree(folders[layout, k], copy)
        if not (copy / "train.commit.json").exists():
            continue
        pending = [
            p
            for p in sorted(copy.iterdir())
            if re.search(r"\.tmp-\d+$", p.name) and ".old." not in p.name and "commit" not in p.name
        ]
        if not pending:
            continue
        pending[0].unlink()
        with pytest.warns(UserWarning, match=r"rolled back"):
            assert _consistent(copy, {"old": ALL_A}) == "old"
        rolled_back += 1
    assert rolled_back >= 2


def test_a_live_writer_paused_in_its_renames_is_never_touched(tmp_path, monkeypatch):
    """Liveness is the commit lock the writer holds, not the PID or host in its journal.

    A writer paused between two renames (one shard moved to its backup, its new file not yet
    in place) while its journal names a dead PID of this host (another PID namespace), then
    another host (a container renamed): readers and writers wait for it, touch nothing, and
    it finishes its commit normally.
    """
    from keras_dense.data import shard_commit

    folder = tmp_path / "set"
    folder.mkdir()
    write_set(folder / "train", 6, 2, "a")
    paused, go = tmp_path / "paused", tmp_path / "go"
    job = {"dir": str(folder), "k": 1, "n": 4, "shards": 2, "paused": str(paused), "go": str(go)}
    child = start_child(tmp_path, [job])
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        assert not (folder / "train-00000-of-00002.tfrecord").exists()  # torn right now
        journal = folder / "train.commit.json"
        content = json.loads(journal.read_text())
        monkeypatch.setattr(shard_commit, "COMMIT_WAIT_S", 0.3)
        for who in (
            {"pid": dead_pid(), "host": socket.gethostname(), "start": None},
            {"pid": content["pid"], "host": "another-host.example", "start": None},
        ):
            journal.write_text(json.dumps({**content, **who}))
            before = snapshot(folder)
            with pytest.raises(BadInputError, match=r"train\.commit\.json.*committing") as err:
                list(read_examples(str(folder / "train-*.tfrecord")))
            assert f"PID {who['pid']}" in str(err.value) and "wait" in str(err.value)
            with pytest.raises(RuntimeError, match=r"committing"):
                write_set(folder / "train", 5, 1, "c")
            assert snapshot(folder) == before  # nothing renamed, restored or removed
    finally:
        go.touch()
    ((result,),) = child_results(child)
    assert not result["killed"] and result["code"] == 0, result
    assert _consistent(folder, {"new": ALL_B}) == "new"


def test_a_killed_writers_journal_from_another_host_is_recovered_at_once(
    killed, tmp_path, monkeypatch
):
    """A container restarted after a SIGKILL has another host name; its PID 1 is alive here.

    Neither matters: nobody holds the commit lock, so the writer is dead.
    """
    from keras_dense.data import shard_commit

    folders, _ = killed
    monkeypatch.setattr(shard_commit, "COMMIT_WAIT_S", 3.0)  # the old code waited, then failed
    calls = {
        "reader": lambda copy: _consistent(copy, {"old": ALL_A, "new": ALL_B}),
        "writer": lambda copy: write_set(copy / "train", 5, 1, "c"),
    }
    for name, call in calls.items():
        copy = tmp_path / name
        shutil.copytree(folders["3->2", 3], copy)
        journal = copy / "train.commit.json"
        content = json.loads(journal.read_text())
        journal.write_text(json.dumps({**content, "pid": 1, "host": "restarted-container"}))
        t0 = time.monotonic()
        with pytest.warns(UserWarning, match=r"interrupted.*restarted-container"):
            call(copy)
        assert time.monotonic() - t0 < 2.0, name
        assert not journal.exists() and not (copy / "train.commit.lock").exists()
    assert _consistent(tmp_path / "writer", {"c": [f"c{i}" for i in range(5)]}) == "c"


def test_a_stale_lock_file_without_a_journal_blocks_nothing(tmp_path):
    """A writer killed after removing its journal, before removing its lock file."""
    write_set(tmp_path / "train", 3, 1)
    (tmp_path / "train.commit.lock").write_text("12345 elsewhere\n")
    assert ids(tmp_path / "train-*.tfrecord") == ["a0", "a1", "a2"]
    write_set(tmp_path / "train", 2, 1, "b")
    assert _consistent(tmp_path, {"b": ["b0", "b1"]}) == "b"


def test_without_flock_a_journal_is_judged_by_its_writers_pid(killed, tmp_path, monkeypatch):
    """Where the file system has no `flock` (ENOLCK), liveness falls back to PID, host and
    start time: a live PID's journal is waited for and left alone, a dead one's recovered."""
    import errno

    from keras_dense.data import shard_commit
    from keras_dense.utils import file_lock
    from keras_dense.utils.files import process_start_time

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(file_lock, "_flock", no_flock)
    folders, _ = killed
    copy = tmp_path / "live"
    shutil.copytree(folders["3->2", 3], copy)
    (copy / "train.commit.lock").unlink()  # no writer ever held a lock on this file system
    journal = copy / "train.commit.json"
    content = json.loads(journal.read_text())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start_time(sleeper.pid)
        journal.write_text(
            json.dumps(
                {**content, "pid": sleeper.pid, "host": socket.gethostname(), "start": start}
            )
        )
        before = snapshot(copy)
        monkeypatch.setattr(shard_commit, "COMMIT_WAIT_S", 0.3)
        with pytest.raises(BadInputError, match=rf"PID {sleeper.pid}.*train\.commit\.json"):
            list(read_examples(str(copy / "train-*.tfrecord")))
        with pytest.raises(RuntimeError, match=rf"PID {sleeper.pid}"):
            write_set(copy / "train", 5, 1, "c")
        assert snapshot(copy) == before  # nothing renamed, restored or removed
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.warns(UserWarning, match="interrupted"):
        assert _consistent(copy, {"old": ALL_A, "new": ALL_B})
    write_set(copy / "train", 5, 1, "c")  # and a writer commits without the lock
    assert _consistent(copy, {"c": [f"c{i}" for i in range(5)]}) == "c"


def test_the_commit_lock_file_never_has_two_holders(tmp_path, monkeypatch):
    """The holder removes the file as it lets go; one who locked the removed file retries."""
    from keras_dense.utils import file_lock

    path = tmp_path / "train.commit.lock"
    first, second = file_lock.FileLock(str(path)), file_lock.FileLock(str(path))
    assert first.try_acquire("PID 1 on a") and not second.try_acquire()
    assert first.note() == "PID 1 on a"
    real, raced = file_lock._flock, []

    def racing(fd, operation):
        if not raced:  # the first lets go between the second's open and its flock
            raced.append(fd)
            first.release()
        real(fd, operation)

    monkeypatch.setattr(file_lock, "_flock", racing)
    assert second.try_acquire() and path.exists()
    assert not file_lock.FileLock(str(path)).try_acquire()  # the file at the path is held
    second.release()
    assert not path.exists()


def test_writer_waits_for_a_live_commit_then_goes_on(tmp_path):
    """Another commit holds the lock for 0.5 s (a thread: `flock` is per open file)."""
    import fcntl

    write_set(tmp_path / "train", 6, 2)
    lock = tmp_path / "train.commit.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release():
        os.remove(lock)
        os.close(fd)

    threading.Timer(0.5, release).start()
    t0 = time.monotonic()
    write_set(tmp_path / "train", 4, 2, "b")
    assert time.monotonic() - t0 >= 0.4
    assert _consistent(tmp_path, {"new": ALL_B}) == "new"


def test_concurrent_writers_never_tear_a_set(tmp_path):
    """Two processes rewrite one name 10 times each, with other shard counts and contents."""
    folder = tmp_path / "set"
    folder.mkdir()
    write_set(folder / "train", 6, 3, "a")
    racers = [
        {"dir": str(folder), "rounds": 10, "n": 4, "shards": 2, "tag": "b"},
        {"dir": str(folder), "rounds": 10, "n": 5, "shards": 3, "tag": "c"},
    ]
    (result,) = run_child(tmp_path, [{"racers": racers}])
    assert all(r["code"] == 0 for r in result), result
    _consistent(folder, {"b": ALL_B, "c": [f"c{i}" for i in range(5)]})


def test_stale_backups_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    write_set(tmp_path / "train", 3, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            tmp_path / f"train-00000-of-00001.tfrecord.old.tmp-{dead.pid}",
            tmp_path / f"train.json.old.tmp-{dead.pid}",
        ]
        busy = tmp_path / f"train-00000-of-00001.tfrecord.old.tmp-{live.pid}"
        other = tmp_path / f"train-b-00000-of-00001.tfrecord.tmp-{dead.pid}"  # another name's
        for path in [*stale, busy, other]:
            path.write_bytes(b"x" * 10)
        write_set(tmp_path / "train", 3, 1, "b")
        assert not any(p.exists() for p in stale)
        assert busy.exists() and other.exists()
    finally:
        live.kill()
        live.wait()


def _failing_conversion(output) -> None:
    def bad(i):
        raise BadInputError(f"input{i}.png", "not an image")

    with pytest.raises(BadInputError, match="input0.png"):
        write_dataset(str(output), [0, 1], bad, classes=CLASSES, progress=False)


def test_a_dead_writers_backup_that_is_the_last_copy_is_restored_not_deleted(tmp_path):
    """A backup whose target is gone is the only copy of that shard: a conversion, even one
    that fails, puts it back (naming both) instead of deleting it as debris."""
    write_set(tmp_path / "train", 6, 2)
    shard = tmp_path / "train-00001-of-00002.tfrecord"
    original = shard.read_bytes()
    backup = tmp_path / f"train-00001-of-00002.tfrecord.old.tmp-{dead_pid()}"
    shard.rename(backup)
    with pytest.raises(BadInputError, match="missing") as err:
        list(read_examples(str(tmp_path / "train-*.tfrecord")))
    assert backup.name in str(err.value), err.value  # the reader points at the backup
    with pytest.warns(UserWarning, match=rf"{re.escape(backup.name)}.*restored.*{shard.name}"):
        _failing_conversion(tmp_path / "train")
    assert shard.read_bytes() == original and not backup.exists()
    assert ids(tmp_path / "train-*.tfrecord") == ALL_A


def test_debris_is_removed_only_after_the_new_commit_has_landed(tmp_path):
    write_set(tmp_path / "train", 3, 1)
    dead = dead_pid()
    debris = [
        tmp_path / f"train-00000-of-00001.tfrecord.old.tmp-{dead}",
        tmp_path / f"train.json.old.tmp-{dead}",
        tmp_path / f"train-00000-of-00002.tfrecord.tmp-{dead}",
    ]
    for path in debris:
        path.write_bytes(b"x" * 10)
    _failing_conversion(tmp_path / "train")
    assert all(p.exists() for p in debris)  # nothing new landed: nothing removed
    assert ids(tmp_path / "train-*.tfrecord") == ["a0", "a1", "a2"]
    write_set(tmp_path / "train", 2, 1, "b")
    assert not any(p.exists() for p in debris)
    assert _consistent(tmp_path, {"b": ["b0", "b1"]}) == "b"


# ------------------------------------------------ readers refuse a set unlike its manifest


def test_missing_shard_is_refused_naming_it_and_the_manifest(tmp_path):
    write_set(tmp_path / "val", 20, 4)
    assert len(ids(tmp_path / "val-*.tfrecord")) == 20
    missing = tmp_path / "val-00002-of-00004.tfrecord"
    missing.unlink()
    with pytest.raises(BadInputError) as err:
        list(read_examples(str(tmp_path / "val-*.tfrecord")))
    assert str(missing) in str(err.value) and "val.json" in str(err.value)
    assert "missing" in str(err.value)
    with pytest.raises(BadInputError, match="val-00002-of-00004.tfrecord"):
        check_files(resolve_files(str(tmp_path / "val-*.tfrecord")))


def test_a_subset_of_an_intact_set_may_be_read(tmp_path):
    write_set(tmp_path / "val", 8, 4)
    one = ids(tmp_path / "val-00001-of-00004.tfrecord")
    assert one == ["a1", "a5"]


def test_leftover_shard_of_another_count_is_refused(tmp_path):
    write_set(tmp_path / "val", 8, 4)
    write_set(tmp_path / "other", 3, 1)
    leftover = tmp_path / "val-00000-of-00003.tfrecord"
    shutil.copy(tmp_path / "other-00000-of-00001.tfrecord", leftover)
    with pytest.raises(BadInputError, match=r"val-00000-of-00003\.tfrecord.*not listed.*val\.json"):
        list(read_examples(str(tmp_path / "val-*.tfrecord")))
    # Even when the pattern selects only the intact shards, the set on disk is damaged.
    with pytest.raises(BadInputError, match=r"val-00000-of-00003\.tfrecord"):
        list(read_examples(str(tmp_path / "val-*-of-00004.tfrecord")))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = apps.unet(
        num_classes=2, input_shape=(None, None, 3), padding="same", filters=4, depth=2
    )
    path = str(tmp_path_factory.mktemp("segmenter") / "model.keras")
    model.save(path)
    write_model_card(path, {"task": "segmentation", "normalization": "caffe", "classes": CLASSES})
    return path


def test_evaluate_refuses_a_set_with_a_missing_shard(tmp_path, segmenter, capsys):
    """The report's "evaluate quietly scored 393 of 400 images", in small."""
    write_set(tmp_path / "val", 8, 4)
    args = ["evaluate", "--model", segmenter, "--data", str(tmp_path / "val-*.tfrecord")]
    assert cli.main([*args, "--output", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["images"] == 8
    (tmp_path / "val-00003-of-00004.tfrecord").unlink()
    capsys.readouterr()
    assert cli.main([*args, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "val-00003-of-00004.tfrecord" in err and "val.json" in err, err


def test_evaluate_refuses_a_shard_changed_after_conversion(tmp_path, segmenter, capsys):
    """A shard replaced by a valid one of another conversion (same record count)."""
    write_set(tmp_path / "val", 8, 2)
    write_set(tmp_path / "other", 8, 2, "z")
    args = ["evaluate", "--model", segmenter, "--data", str(tmp_path / "val-*.tfrecord")]
    assert cli.main([*args, "--output", str(tmp_path / "ok")]) == 0  # verified and cached
    shard = tmp_path / "val-00001-of-00002.tfrecord"
    shutil.copy(tmp_path / "other-00001-of-00002.tfrecord", shard)
    capsys.readouterr()
    assert cli.main([*args, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "val-00001-of-00002.tfrecord" in err and "SHA-256" in err, err


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: an independent reference for the TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = _crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def test_read_examples_checks_checksums_and_record_counts(tmp_path):
    write_set(tmp_path / "val", 6, 2)
    pattern = str(tmp_path / "val-*.tfrecord")
    shard = tmp_path / "val-00000-of-00002.tfrecord"
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    payload = data[12 : 12 + length]
    assert payload.count(b"\n\x02a0") == 1  # image/source_id "a0"
    payload = payload.replace(b"\n\x02a0", b"\n\x02z0")  # one byte, framing and CRCs valid
    shard.write_bytes(data[:12] + payload + _masked_crc(payload) + data[16 + length :])
    assert os.path.getsize(shard) == len(data)
    with pytest.raises(BadInputError, match=r"val-00000-of-00002\.tfrecord.*SHA-256"):
        list(read_examples(pattern))
    assert "z0" in ids_unchecked(pattern)  # asked for: no check, the altered record is read

    write_set(tmp_path / "cnt", 6, 2)
    manifest = tmp_path / "cnt.json"
    content = json.loads(manifest.read_text())
    content["shards"][1]["records"] += 1
    content["num_images"] += 1  # consistent in itself, unlike the shard on disk
    content["shards"][1]["sha256"] = None  # a manifest without digests: the count still counts
    manifest.write_text(json.dumps(content))
    with pytest.raises(BadInputError, match=r"cnt-00001-of-00002\.tfrecord.*holds 3 records.*4"):
        list(read_examples(str(tmp_path / "cnt-*.tfrecord")))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("shards"), r"no 'shards' list"),
        (lambda m: m.update(shards=m["shards"] + m["shards"][:1]), r"lists .*00000.* twice"),
        (lambda m: m["shards"][0].pop("file"), r"shard entry 0"),
        (lambda m: m.update(num_images=m["num_images"] + 1), r"num_images 7.*6"),
        (lambda m: m["shards"][0].update(file="val-00000-of-00003.tfrecord"), r"among 2 shards"),
    ],
)
def test_damaged_manifest_is_refused(tmp_path, edit, message):
    write_set(tmp_path / "val", 6, 2)
    manifest = tmp_path / "val.json"
    content = json.loads(manifest.read_text())
    edit(content)
    manifest.write_text(json.dumps(content))
    with pytest.raises(BadInputError, match=message) as err:
        list(read_examples(str(tmp_path / "val-*.tfrecord")))
    assert str(manifest) in str(err.value)


def test_shards_of_other_tools_beside_an_unrelated_json_are_read(tmp_path):
    """Model Garden shards with a COCO annotation file of the same stem are not a manifest."""
    for i in range(2):
        by_hand(tmp_path / f"train-{i:05d}-of-00002.tfrecord", 3, tag=f"s{i}_")
    (tmp_path / "train.json").write_text(json.dumps({"images": [], "annotations": []}))
    assert len(ids(tmp_path / "train-*.tfrecord")) == 6


def segmentation_by_hand(path, n: int, tag: str) -> None:
    """Segmentation records as the Model Garden's scripts write them (no manifest)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(n):
            mask = np.zeros((8, 12), np.uint8)
            mask[:, : 1 + i] = 1

            def data(value: bytes) -> tf.train.Feature:
                return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

            def number(value: int) -> tf.train.Feature:
                return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

            feature = {
                "image/encoded": data(_png(np.full((8, 12, 3), 40 * i, np.uint8))),
                "image/format": data(b"png"),
                "image/source_id": data(f"{tag}{i}".encode()),
                "image/height": number(8),
                "image/width": number(12),
                "image/segmentation/class/encoded": data(_png(mask)),
                "image/segmentation/class/format": data(b"png"),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


COCO_JSON = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}


def test_class_checks_ignore_a_json_that_is_not_a_manifest(tmp_path, segmenter, capsys):
    """Model Garden shards next to the COCO `val.json` they were made from: the class checks
    of evaluate and of training read no class list from it (the shards have no manifest)."""
    from keras_dense.data.class_lists import shard_manifests
    from keras_dense.tasks import get_task
    from keras_dense.tasks.recipe_data import data_classes
    from keras_dense.training.recipe import validate

    for i in range(2):
        segmentation_by_hand(tmp_path / f"val-{i:05d}-of-00002.tfrecord", 3, f"s{i}_")
    (tmp_path / "val.json").write_text(json.dumps(COCO_JSON))
    pattern = str(tmp_path / "val-*.tfrecord")
    assert shard_manifests(pattern) == {}
    args = ["evaluate", "--model", segmenter, "--data", pattern, "--output", str(tmp_path / "e")]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["images"] == 6
    recipe = validate(
        {
            "model": {"builder": "unet", "kwargs": {"padding": "same", "filters": 4, "depth": 2}},
            "data": {"train": pattern, "validation": pattern, "crop_size": 8, "classes": CLASSES},
            "training": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 1},
            "optimizer": {"name": "sgd", "learning_rate": 0.01},
            "schedule": {"name": "poly"},
        }
    )
    assert data_classes(recipe["data"], get_task("segmentation")) == CLASSES


def test_one_shard_copied_with_its_manifest_says_how_to_read_it(tmp_path, segmenter, capsys):
    """The refusal stays (the set is incomplete), and says how to read the shard on purpose."""
    write_set(tmp_path / "val", 8, 4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "val-00001-of-00004.tfrecord", elsewhere)
    shutil.copy(tmp_path / "val.json", elsewhere)
    pattern = str(elsewhere / "val-*.tfrecord")
    args = ["evaluate", "--model", segmenter, "--data", pattern]
    assert cli.main([*args, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    manifest = str(elsewhere / "val.json")
    assert "lists 4 shards and 3 of them" in err and manifest in err, err
    assert "copy the whole set" in err and f"move {manifest} out of this folder" in err, err
    (elsewhere / "val.json").rename(tmp_path / "val-of-the-whole-set.json")  # as it says
    assert cli.main([*args, "--output", str(tmp_path / "ok")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["images"] == 2


def test_a_reused_pid_is_not_taken_for_the_writer():
    from keras_dense.utils.files import identity_alive, process_identity

    me = process_identity()
    assert identity_alive(me)
    if me["start"] is None:
        pytest.skip("no /proc on this system")
    assert not identity_alive({**me, "start": me["start"] + 1})  # same PID, another process
    assert identity_alive({**me, "host": me["host"] + "-elsewhere", "pid": 0})  # not ours to judge


_SERIALIZE_ONE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from keras_dense.data.schema import Record, serialize_record

    record = Record(
        source_id="a", image_bytes=b"\\x89PNG", image_format="png", height=2, width=3,
        channels=3, mask_png=b"mask", boxes=np.array([[0.1, 0.2, 0.3, 0.4]], np.float32),
        labels=np.array([1]), label_texts=np.array(["cat"]), difficult=np.array([0]),
        is_crowd=np.array([0]), image_labels=np.array([1]),
    )
    sys.stdout.write(serialize_record(record).hex())
    """
)


def test_a_record_serializes_to_the_same_bytes_in_every_process():
    """The feature map's order must not follow the process's hash seed: shards written by
    other processes (Beam workers, a rerun) must be byte-identical."""
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(
            [sys.executable, "-c", _SERIALIZE_ONE], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.add(proc.stdout)
    assert len(outputs) == 1
