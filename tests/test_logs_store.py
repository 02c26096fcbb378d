"""Log storage (specref.logs.store): atomic sharded storage and its misuse.

Round trip, resume, crash injection and corruption; a second writer while the first runs (two processes),
outputs that are files, unique temp names, non-finite values, and a damaged shard that once aborted the
process at exit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from specref.logs import LogFormatError, LogLayout, LogWriter, open_logs, read_logs, store
from specref.logs.store import LogBusyError
from specref.logs.synthetic import synthetic_logs, write_summary

ROOT = Path(__file__).resolve().parents[1]

# The first writer: logs examples 0..11 in shards of 2, pausing after example 3 until the test says go.
_FIRST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from specref.logs.schema import columns
    from specref.logs.store import LogWriter
    from specref.logs.synthetic import synthetic_logs

    out, flag = sys.argv[1], Path(sys.argv[2])
    s, layout = synthetic_logs(12, positions=3, vocab=12, top_k=4, seed=2, alphas=(0.0, 0.5))
    names = [c.name for c in columns(layout) if c.name not in ("example_index", "example_id")]
    with LogWriter(out, layout, source={{"job": "first"}}, examples_per_shard=2) as w:
        for ex in range(12):
            sel = (s["example_index"] == ex).nonzero().squeeze(-1)
            w.add_example(ex, f"syn{{ex}}", {{n: s[n][sel] for n in names}})
            if ex == 3:
                print("ready", flush=True)
                while not flag.exists():
                    time.sleep(0.02)
        w.finish()
    """
)


def _expected():
    s, layout = synthetic_logs(12, positions=3, vocab=12, top_k=4, seed=2, alphas=(0.0, 0.5))
    return s, layout


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, capsys):
    from specref.cli import main

    out, flag = tmp_path / "logs", tmp_path / "go"
    script = tmp_path / "first.py"
    script.write_text(_FIRST.format(root=str(ROOT)))
    first = subprocess.Popen([sys.executable, str(script), str(out), str(flag)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        listed = (out / "manifest.json").read_bytes()
        # The same job, the same job with overwrite, and the `specref log` command are all refused ...
        s, layout = _expected()
        for kw in ({}, {"overwrite": True}):
            with pytest.raises(LogBusyError, match="another process is writing logs to"):
                LogWriter(out, layout, source={"job": "first"}, examples_per_shard=2, **kw)
        rc = main(["log", "--pair", "arith-llama", "--split", "validation", "--max-examples", "2",
                   "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "another process is writing logs to" in err and "Traceback" not in err
        assert len([ln for ln in err.splitlines() if "error" in ln]) == 1
        # ... without touching what the first one wrote.
        assert (out / "manifest.json").read_bytes() == listed
    finally:
        flag.touch()
        first.wait(timeout=60)
    assert first.returncode == 0
    logs = read_logs(out)
    assert open_logs(out).finished
    # Every example exactly once, rows equal to what was written: nothing lost or duplicated.
    assert logs["example_index"].tolist() == s["example_index"].tolist()
    for name in ("position", "q_max", "tail_excess", "token_v3_rej"):
        assert np.array_equal(logs[name].numpy(), s[name].numpy()), name


def test_a_file_as_the_output_folder_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("keep")
    s, layout = _expected()
    with pytest.raises(ValueError, match="exists and is not a folder"):
        LogWriter(f, layout)
    assert f.read_text() == "keep"


def test_temp_files_have_unique_names_inside_the_folder(tmp_path, monkeypatch):
    seen = []
    real = store._commit

    def spy(tmp, path):
        seen.append((Path(tmp), Path(path)))
        real(tmp, path)

    monkeypatch.setattr(store, "_commit", spy)
    s, layout = _expected()
    write_summary(tmp_path / "a", s, layout, examples_per_shard=4)
    assert len(seen) >= 4
    temps = [t for t, _ in seen]
    assert len(set(temps)) == len(temps)
    for tmp, final in seen:
        assert tmp.parent == final.parent == tmp_path / "a"
        assert tmp.name.startswith(f".{final.name}.tmp-") and tmp.name != f".{final.name}.tmp"
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp" in p.name]
    # Ordinary permissions (not mkstemp's owner-only 0o600): logs are shared between users and jobs.
    umask = os.umask(0o022)
    os.umask(umask)
    for _, final in seen:
        assert final.stat().st_mode & 0o777 == 0o666 & ~umask


def _rewrite_shard(d: Path, shard: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    blob = sink.getvalue().to_pybytes()
    (d / shard).write_bytes(blob)
    m = json.loads((d / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == shard:
            e.update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_by_the_reader(tmp_path, capsys, value):
    from specref.cli import main

    s, layout = _expected()
    d = write_summary(tmp_path / "logs", s, layout, examples_per_shard=4)
    table = pq.read_table(d / "shard-000001.parquet")
    q_max = table.column("q_max").to_numpy().copy()
    q_max[2] = value
    table = table.set_column(table.schema.get_field_index("q_max"), "q_max", pa.array(q_max, pa.float32()))
    _rewrite_shard(d, "shard-000001.parquet", table.cast(store.arrow_schema(layout)))
    with pytest.raises(LogFormatError, match="column 'q_max' holds 1 non-finite"):
        open_logs(d)
    out = tmp_path / "eval"
    assert main(["evaluate", "--logs", str(d), "--out", str(out)]) == 2
    assert "shard-000001.parquet" in capsys.readouterr().err and not out.exists()


def _damage_a_column(d: Path, column: str) -> None:
    """Scramble one column chunk's pages inside a shard, keeping the footer readable: the error comes while
    columns are being decoded."""
    shard = d / "shard-000001.parquet"
    blob = bytearray(shard.read_bytes())
    meta = pq.ParquetFile(pa.BufferReader(bytes(blob))).metadata
    chunk = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                 if meta.row_group(0).column(i).path_in_schema.startswith(column))
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    for i in range(start + 8, start + size - 4):
        blob[i] = (blob[i] * 7 + 13) % 256
    shard.write_bytes(bytes(blob))
    m = json.loads((d / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == shard.name:
            e.update(bytes=len(blob), sha256=hashlib.sha256(bytes(blob)).hexdigest())
    (d / "manifest.json").write_text(json.dumps(m))


def test_the_writer_refuses_non_finite_rows(tmp_path):
    from specref.logs.schema import columns

    s, layout = _expected()
    names = [c.name for c in columns(layout) if c.name not in ("example_index", "example_id")]
    sel = (s["example_index"] == 0).nonzero().squeeze(-1)
    rows = {n: s[n][sel].clone() for n in names}
    rows["tv"][1] = float("nan")
    with LogWriter(tmp_path / "logs", layout) as w:
        with pytest.raises(ValueError, match="example 0: column 'tv' has non-finite values"):
            w.add_example(0, "syn0", rows)
    assert open_logs(tmp_path / "logs").num_rows == 0


def test_a_shard_with_another_schema_is_a_one_line_error(tmp_path):
    s, layout = _expected()
    d = write_summary(tmp_path / "logs", s, layout, examples_per_shard=4)
    table = pq.read_table(d / "shard-000001.parquet")
    table = table.set_column(table.schema.get_field_index("q_max"), "q_max", table.column("q_max").cast(pa.float64()))
    _rewrite_shard(d, "shard-000001.parquet", table.cast(store.arrow_schema(layout).set(
        store.arrow_schema(layout).get_field_index("q_max"), pa.field("q_max", pa.float64(), nullable=False))))
    with pytest.raises(LogFormatError, match="column 'q_max' is double not null, expected float not null") as err:
        open_logs(d)
    assert "\n" not in str(err.value)


def test_reading_never_uses_arrows_thread_pool(tmp_path, monkeypatch):
    calls = []
    real = pq.ParquetFile.read

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("use_threads", True))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    s, layout = _expected()
    open_logs(write_summary(tmp_path / "logs", s, layout, examples_per_shard=2))
    assert calls and not any(calls)


def test_a_damaged_shard_is_a_clear_error_and_never_aborts_the_process(tmp_path):
    """With Arrow's threaded decoding, a column failing mid-read left the other columns' work running, and a
    process exiting then was killed by SIGABRT about half the time (torch loaded). Several fresh processes in
    parallel must all exit with the one-line error."""
    s, layout = synthetic_logs(40, positions=20, vocab=64, top_k=32, seed=0)
    d = write_summary(tmp_path / "logs", s, layout, examples_per_shard=10)
    _damage_a_column(d, "q_topk_ids")
    argv = ["evaluate", "--logs", str(d), "--out", str(tmp_path / "o")]
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); from specref.cli import main; "
            f"sys.exit(main({argv!r}))")
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert rc == 2, (rc, err[-500:])
        assert err.strip().splitlines()[-1].startswith("specref evaluate: error: shard ")
        assert "shard-000001.parquet is not a readable Parquet file" in err
    assert time.monotonic() - start < 60
    assert not (tmp_path / "o").exists()


# ---- round trip, resume after a crash, corruption --------------------------------------------------------------------


def _synthetic(n_examples=12, seed=3):
    return synthetic_logs(n_examples, positions=5, vocab=12, top_k=4, seed=seed, alphas=(0.0, 0.5))


def test_round_trip_is_bit_exact(tmp_path):
    s, layout = _synthetic()
    write_summary(tmp_path / "logs", s, layout, examples_per_shard=5)
    logs = open_logs(tmp_path / "logs")
    assert logs.finished and logs.layout == layout and logs.num_rows == 60
    back = logs.to_torch()
    for name, value in s.items():
        if name == "example_id":
            assert back[name] == value
        else:
            assert torch.equal(back[name].to(value.dtype), value), name
    manifest = json.loads((tmp_path / "logs" / "manifest.json").read_text())
    assert [sh["examples"] for sh in manifest["shards"]] == [[[0, 5]], [[5, 10]], [[10, 12]]]
    assert sum(sh["rows"] for sh in manifest["shards"]) == 60


def test_writer_skips_completed_examples_and_refuses_other_jobs(tmp_path):
    s, layout = _synthetic()
    d = tmp_path / "logs"
    with LogWriter(d, layout, source={"job": 1}, examples_per_shard=4) as w:
        w.add_example(0, "a", _rows(s, 0))
        w.add_example(1, "b", _rows(s, 1))
    with LogWriter(d, layout, source={"job": 1}, examples_per_shard=4) as w:
        assert w.pending(range(4)) == [2, 3]
        with pytest.raises(ValueError, match="already logged"):
            w.add_example(1, "b", _rows(s, 1))
        with pytest.raises(LogBusyError, match="another process"):
            LogWriter(d, layout, source={"job": 1})
    with pytest.raises(ValueError, match="different job"):
        LogWriter(d, layout, source={"job": 2})
    other = LogLayout(top_k=3, vocab_size=12, tail_points=33)
    with pytest.raises(ValueError, match="different job"):
        LogWriter(d, other, source={"job": 1})
    with pytest.raises(ValueError, match="missing column"):
        with LogWriter(d, layout, source={"job": 1}) as w:
            w.add_example(5, "x", {"position": np.zeros(2)})
    assert open_logs(d).num_rows == 10


def _rows(s, ex):
    from specref.logs.schema import columns

    sel = (s["example_index"] == ex).nonzero().squeeze(-1)
    return {c.name: s[c.name][sel] for c in columns(_synthetic()[1]) if c.name not in ("example_index", "example_id")}


# A writer job the crash tests run in a subprocess (numpy + pyarrow only, so it starts fast). ``MODE`` picks
# where it SIGKILLs itself; "slow" is killed by the test from outside at an arbitrary point.
_JOB = textwrap.dedent(
    """
    import os, signal, sys, tempfile, time
    import numpy as np
    sys.path.insert(0, {root!r})
    from specref.logs import store
    from specref.logs.schema import LogLayout

    mode, out, data = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    layout = LogLayout(top_k=4, vocab_size=12, tail_points=33, alphas=(0.0, 0.5))
    names = [n for n in data.files if n != "example_index"]
    calls = {{"shard": 0}}
    real_commit, real_write = store._commit, store._write_file

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def commit(tmp, path):
        is_shard = path.name.startswith("shard-")
        calls["shard"] += is_shard
        if mode == "before_rename" and is_shard and calls["shard"] == 2:
            die()
        if mode == "before_manifest" and not is_shard and calls["shard"] == 2:
            die()
        real_commit(tmp, path)
        if mode == "after_rename" and is_shard and calls["shard"] == 2:
            die()

    def write(path, data):
        if mode == "partial" and path.name.startswith("shard-") and calls["shard"] == 1:
            fd, _ = tempfile.mkstemp(prefix=f".{{path.name}}.tmp-", dir=path.parent)
            with open(fd, "wb") as h:
                h.write(data[: len(data) // 2])
                h.flush()
                os.fsync(h.fileno())
            die()
        real_write(path, data)

    store._commit, store._write_file = commit, write
    with store.LogWriter(out, layout, source={{"job": "crash"}}, examples_per_shard=4) as w:
        for ex in w.pending(range(12)):
            sel = data["example_index"] == ex
            w.add_example(ex, f"syn{{ex}}", {{n: data[n][sel] for n in names}})
            if mode == "slow":
                print(ex, flush=True)
                time.sleep(0.05)
        w.finish()
    """
)


@pytest.fixture(scope="module")
def job_rows(tmp_path_factory):
    s, layout = _synthetic()
    path = tmp_path_factory.mktemp("rows") / "rows.npz"
    arrays = {name: v.numpy() for name, v in s.items() if name != "example_id"}
    np.savez(path, **arrays)
    return path


def _resume(d):
    s, layout = _synthetic()
    with LogWriter(d, layout, source={"job": "crash"}, examples_per_shard=4) as w:
        for ex in w.pending(range(12)):
            w.add_example(ex, f"syn{ex}", _rows(s, ex))
        w.finish()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean") / "logs"
    _resume(d)
    return d


@pytest.mark.parametrize("mode", ["before_rename", "after_rename", "before_manifest", "partial", "slow"])
def test_killed_writer_resumes_without_lost_or_duplicated_rows(tmp_path, mode, uninterrupted, job_rows):
    script = tmp_path / "job.py"
    script.write_text(_JOB.format(root=str(ROOT)))
    d = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, str(script), mode, str(d), str(job_rows)], stdout=subprocess.PIPE,
                            text=True)
    if mode == "slow":  # kill from outside at an arbitrary point after the first shard
        for line in proc.stdout:
            if int(line) >= 6:
                break
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        partial = open_logs(d)  # a crashed job's logs stay readable: the listed shards only
    assert not partial.finished and 0 < partial.num_rows < 60
    _resume(d)
    assert not [p for p in d.iterdir() if ".tmp-" in p.name]
    got, want = read_logs(d), read_logs(uninterrupted)
    for name in want:
        assert (got[name] == want[name]) if name == "example_id" else torch.equal(got[name], want[name]), name
    shards = lambda x: json.loads((x / "manifest.json").read_text())["shards"]  # noqa: E731
    assert shards(d) == shards(uninterrupted)  # same shard files, byte for byte


def _corrupt_copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_logs_are_clear_errors(tmp_path, uninterrupted):
    first = "shard-000000.parquet"
    d = _corrupt_copy(uninterrupted, tmp_path / "truncated")
    data = (d / first).read_bytes()
    (d / first).write_bytes(data[: len(data) - 100])
    with pytest.raises(LogFormatError, match="truncated"):
        open_logs(d)
    d = _corrupt_copy(uninterrupted, tmp_path / "flipped")
    blob = bytearray((d / first).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / first).write_bytes(bytes(blob))
    with pytest.raises(LogFormatError, match="corrupt"):
        open_logs(d)
    d = _corrupt_copy(uninterrupted, tmp_path / "missing")
    (d / first).unlink()
    with pytest.raises(LogFormatError, match="missing"):
        open_logs(d)
    d = _corrupt_copy(uninterrupted, tmp_path / "manifest")
    (d / "manifest.json").write_text('{"format": "specref-logs", "version": 1, "shards": [')
    with pytest.raises(LogFormatError, match="not valid JSON"):
        open_logs(d)
    with pytest.raises(LogFormatError, match="no manifest"):
        open_logs(tmp_path)
    # A shard that checksums fine but disagrees with the manifest (rewritten by something else).
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    for case in ("rows", "schema"):
        d = _corrupt_copy(uninterrupted, tmp_path / case)
        table = pq.read_table(d / first)
        table = table.slice(0, 3) if case == "rows" else table.drop_columns(["tv"])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        blob = sink.getvalue().to_pybytes()
        (d / first).write_bytes(blob)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["shards"][0].update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
        (d / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(LogFormatError, match="rows" if case == "rows" else "schema"):
            open_logs(d)
