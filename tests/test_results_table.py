"""`benchmarks/results.py`'s README table: rows not re-measured keep their earlier line."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_results_module():
    name = "benchmark_results"
    if name not in sys.modules:  # its dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "results.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def measured_shapes_row() -> dict:
    """A shapes row as `run_row` records it: 2 seeds, plain / CRF / TTA scores."""
    run = {"metrics": {"plain": 0.8, "crf": 0.9, "tta": 0.85}, "seconds": {"train": 100.0}}
    second = {"metrics": {"plain": 0.9, "crf": 0.8, "tta": 0.95}, "seconds": {"train": 300.0}}
    return {
        "data": "shapes data",
        "recipes": {"scratch": "apps/shapes_demo.toml"},
        "metric": "mean_iou",
        "seeds": [0, 1],
        "main_variant": "scratch",
        "runs": {"scratch": [run, second]},
        "paper": "none",
        "commands": ["keras-dense train apps/shapes_demo.toml --set seed=0"],
        "machine": "test machine",
    }


def test_a_fresh_checkout_keeps_the_rows_it_did_not_re_measure():
    results = load_results_module()
    earlier = results.table(
        {"shapes": measured_shapes_row()}, "earlier machine", earlier=""
    ).replace("0.850 ± 0.050", "0.123 ± 0.001")  # the earlier measurement differed
    pets_line = "| `apps/deeplab_v1_pets.toml` | pets | mean_iou | 2 | 0.4 | 0.7 | — | — | t | — |"
    pets_commands = ["keras-dense train apps/deeplab_v1_pets.toml --set seed=0"]
    lines = earlier.splitlines()
    lines.insert(lines.index("|---|---|---|---|---|---|---|---|---|---|") + 2, pets_line)
    details = lines.index("</details>")
    lines[details:details] = ["pets:", "", "```bash", *pets_commands, "```", ""]
    failed_line = "| isbi | ISBI data | | | failed | | | | | |"
    lines.insert(lines.index(pets_line), failed_line)
    # Hand-written notes with an older table of their own: never read as rows.
    stale = "| `apps/fast_rcnn_bccd.toml` | BCCD | map | 0.243 | — | — | 341 s | — |"
    lines.insert(lines.index(results.END), f"{results.NOTES}\nOlder rows:\n\n{stale}\n")
    earlier = "\n".join(lines)

    kept = results.earlier_rows(earlier)
    assert kept["pets"] == (pets_line, pets_commands)
    assert kept["shapes"][0].startswith("| `apps/shapes_demo.toml` |")
    assert kept["isbi"] == (failed_line, [])
    assert "bccd_fast" not in kept

    # Nothing re-measured: the table comes back unchanged (the notes are write_readme's to
    # keep), row order from `rows()`.
    table = earlier[: earlier.index(results.NOTES)].rstrip()
    assert results.table({}, "now", earlier) == table + "\n" + results.END
    # Shapes re-measured: its line and commands are the new ones, pets keeps its own.
    again = results.table({"shapes": measured_shapes_row()}, "now", earlier)
    assert "0.850 ± 0.050" in again and "0.123" not in again
    assert pets_line in again.splitlines()
    assert again.index("shapes:") < again.index("pets:")
    assert again.index("| `apps/shapes_demo.toml`") < again.index(pets_line)
    assert pets_commands[0] in again


def fake_run(value: float, seconds: float, seed: int) -> dict:
    """A `run_variant` result with one score."""
    command = f"keras-dense train apps/shapes_demo.toml --set seed={seed}"
    return {"metrics": {"plain": value}, "seconds": {"train": seconds}, "commands": [command]}


def test_runs_recorded_in_separate_sessions_make_one_row(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["shapes"]
    setup = results.setup_commands("scratch", ["keras-dense convert shapes --seed 0"])
    # Two sessions: seed 1 recorded first, then seed 0; a row is rebuilt from both files.
    results.save_record(row, "scratch", 1, {**fake_run(0.7, 300.0, 1), "setup_commands": []})
    results.save_record(row, "scratch", 0, {**fake_run(0.9, 100.0, 0), "setup_commands": setup})
    result = results.row_from_records(row)
    assert result["seeds"] == [0, 1]
    cells = results.row_cells(result, "unused")
    values = [0.9, 0.7]
    expected = f"{sum(values) / 2:.3f} ± {(max(values) - min(values)) / 2:.3f}"
    assert cells[4] == expected == "0.800 ± 0.100"
    assert "train from scratch 200 s" in cells[-2]  # the median of 100 and 300
    # The commands shown are the lowest seed's, its set-up first.
    assert result["commands"] == [*setup, fake_run(0.9, 100.0, 0)["commands"][0]]


def test_a_record_of_another_configuration_is_stale(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["shapes"]
    for seed, value in ((0, 0.9), (1, 0.1)):
        run = {**fake_run(value, 100.0, seed), "setup_commands": []}
        results.save_record(row, "scratch", seed, run)
    path = results.record_path("shapes", "scratch", 1)
    record = json.loads(path.read_text())
    record["configuration"] = "another budget"
    path.write_text(json.dumps(record))
    result = results.row_from_records(row)
    assert result["seeds"] == [0]
    assert results.row_cells(result, "unused")[4] == "0.900 (1 seed)"
    assert result["stale_records"] == [os.path.relpath(path, REPO)]


def test_a_broken_record_is_named(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["shapes"]
    path = results.record_path("shapes", "scratch", 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"seed": 0, "metrics": {"plain": 0.5}}))
    with pytest.raises(ValueError, match=rf"{path}: not a run record.*configuration"):
        results.row_from_records(row)
    path.write_text("{")
    with pytest.raises(ValueError, match=rf"{path}: not JSON"):
        results.row_from_records(row)


def test_missing_runs_only_the_runs_without_a_record(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["pets"]
    monkeypatch.setattr(row, "converts", lambda folder, seed: [["convert", "--output", folder]])
    prepared = []  # the Pets photos' downscaling, here a no-op (no data sets needed)
    monkeypatch.setattr(row, "prepare", lambda: prepared.append(True))
    cli = []  # no weight file here: `pretrained hed-vgg16` is run (faked) too
    monkeypatch.setattr(results, "run_cli", lambda argv: cli.append(argv[0]))
    ran = []

    def run_variant(row_, key, seed, extra, share_gpu=False):
        ran.append((seed, key))
        return fake_run(0.5 + seed / 10, 10.0, seed)

    monkeypatch.setattr(results, "run_variant", run_variant)
    earlier = {**fake_run(0.4, 10.0, 0), "setup_commands": []}
    results.save_record(row, "pretrained", 0, earlier)
    monkeypatch.setattr(results, "PRETRAINED", "no/such/weights.h5")
    result = results.run_row(row, [0, 1], reuse=True, missing=True)
    assert sorted(ran) == [(0, "scratch"), (1, "pretrained"), (1, "scratch")]
    assert cli.count("convert") == 1  # one data set for every seed of this row
    assert prepared == [True]
    assert result["seeds"] == [0, 1]
    cells = results.row_cells(result, "unused")
    assert cells[4:6] == ["0.550 ± 0.050", "0.500 ± 0.100"]  # scratch 0.5 / 0.6, pets 0.4 / 0.6
    # --variants: only the named variant runs.
    ran.clear()
    results.run_row(row, [2], reuse=True, variants=["scratch"])
    assert ran == [(2, "scratch")]


def test_a_row_whose_records_are_all_stale_is_marked_stale(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["shapes"]
    results.save_record(row, "scratch", 0, {**fake_run(0.9, 1.0, 0), "setup_commands": []})
    path = results.record_path("shapes", "scratch", 0)
    path.write_text(path.read_text().replace(results.configuration(row, "scratch"), "old"))
    result = results.row_from_records(row)
    assert "runs" not in result and result["stale_records"] == [os.path.relpath(path, REPO)]
    line = next(
        x for x in results.table({"shapes": result}, "m").splitlines() if "shapes_demo" in x
    )
    assert "stale: 1 records of an earlier configuration" in line and "0.900" not in line


def test_a_run_whose_evaluation_failed_leaves_no_record(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["shapes"]
    monkeypatch.setattr(results, "run_cli", lambda argv: 0.0)
    for metrics in ({"plain": {"error": "out of memory"}}, {"plain": 0.5, "crf": {"error": "oom"}}):
        failed = {"metrics": metrics, "seconds": {"train": 1.0}, "commands": []}
        monkeypatch.setattr(results, "run_variant", lambda *a, f=failed, **k: dict(f))
        with pytest.raises(RuntimeError, match="evaluation failed.*(out of memory|oom)"):
            results.run_row(row, [0], reuse=True)
        assert not results.record_path("shapes", "scratch", 0).exists()


def test_a_readme_row_older_than_the_records_stays_when_its_re_run_fails(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    monkeypatch.setattr(results, "WORK", str(tmp_path / "work"))
    line = "| `apps/unet_vgg16_isbi.toml` | isbi | mean_iou | 2 | 0.7 | 0.6 | — | — | t | — |"
    block = f"{results.START}\n{line}\n\nisbi:\n\n```bash\nkeras-dense x\n```\n{results.END}"
    monkeypatch.setattr(results, "readme_block", lambda: block)
    written = []
    monkeypatch.setattr(results, "write_readme", written.append)

    def no_data(*args, **kwargs):
        raise RuntimeError("keras-dense convert pairs failed: no such folder")

    monkeypatch.setattr(results, "run_row", no_data)
    argv = ["results.py", "--rows", "isbi", "--seeds", "0", "1", "0", "--write-readme"]
    monkeypatch.setattr(sys, "argv", argv)
    results.main()
    assert line in written[0].splitlines() and "keras-dense x" in written[0]
    assert "failed" not in written[0]


def test_a_readme_row_stays_until_the_records_cover_it(tmp_path, monkeypatch, capsys):
    """A row measured before records (or at an earlier budget) is re-measured run by run."""
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    monkeypatch.setattr(results, "WORK", str(tmp_path / "work"))
    line = "| `apps/unet_vgg16_isbi.toml` | isbi | mean_iou | 2 | 0.7 | 0.6 | — | — | t | — |"
    block = f"{results.START}\n{line}\n\nisbi:\n\n```bash\nkeras-dense x\n```\n{results.END}"
    monkeypatch.setattr(results, "readme_block", lambda: block)
    written = []
    monkeypatch.setattr(results, "write_readme", written.append)
    values = {(0, "pretrained"): 0.81, (1, "pretrained"): 0.79, (0, "scratch"): 0.5}

    def run_row(row_, seeds, jobs, reuse, variants, missing):
        for seed in seeds:  # record what this session runs, as `run_row` does
            for key in variants:
                run = {**fake_run(values[seed, key], 10.0, seed), "setup_commands": []}
                results.save_record(row_, key, seed, run)
        return results.row_from_records(row_)

    monkeypatch.setattr(results, "run_row", run_row)
    # A record of an earlier budget: stale, it neither counts nor lifts the line's protection.
    row = results.rows()["isbi"]
    results.save_record(row, "scratch", 1, {**fake_run(0.1, 1.0, 1), "setup_commands": []})
    path = results.record_path("isbi", "scratch", 1)
    path.write_text(path.read_text().replace(results.configuration(row, "scratch"), "old"))

    def session(*argv: str) -> str:
        written.clear()
        monkeypatch.setattr(sys, "argv", ["results.py", "--rows", "isbi", *argv, "--write-readme"])
        results.main()
        return written[0]

    # One session: the pretrained variant at 2 seeds. The scratch column still has none, so the
    # old line stays, marked, with its commands; what is missing is printed.
    table = session("--seeds", "0", "1", "--variants", "pretrained")
    kept = next(x for x in table.splitlines() if "unet_vgg16_isbi" in x)
    assert kept.split("|")[4].strip() == "2 (an earlier configuration, being re-measured)"
    assert kept.split("|")[5:7] == line.split("|")[5:7] and "keras-dense x" in table
    err = capsys.readouterr().err
    assert "scratch 0 of 2 seeds" in err and "--rows isbi --seeds 0 1 --missing" in err
    assert "pretrained" not in err.split("isbi:")[1].split("(e.g.")[0]
    # The next: one scratch seed. Still short of the line's 2 seeds.
    assert "0.7 | 0.6" in session("--seeds", "0", "--variants", "scratch")
    assert "scratch 1 of 2 seeds (recorded: [0])" in capsys.readouterr().err
    # Covered (scratch seed 1 too): the records replace the line, all sessions' runs averaged.
    values[1, "scratch"] = 0.6
    table = session("--seeds", "1", "--variants", "scratch")
    new_line = next(x for x in table.splitlines() if "unet_vgg16_isbi" in x)
    cells = [c.strip() for c in new_line.split("|")]
    assert cells[4:7] == ["2", "0.550 ± 0.050", "0.800 ± 0.010"]
    assert "keras-dense x" not in table and "being re-measured" not in table


def test_each_column_of_a_line_needs_the_seeds_it_shows(tmp_path, monkeypatch):
    results = load_results_module()
    monkeypatch.setattr(results, "RECORDS", tmp_path)
    row = results.rows()["bccd_fpn"]
    runs = {(0, "pretrained"): 0.83, (1, "pretrained"): 0.84, (0, "scratch"): 0.5}
    for (seed, key), value in runs.items():
        results.save_record(row, key, seed, {**fake_run(value, 1.0, seed), "setup_commands": []})
    done = results.load_records(row)[0]
    # A line made from these records: 2 seeds, scratch "(1 seed)". Its own records cover it.
    line = "| " + " | ".join(results.row_cells(results.row_from_records(row), "m")) + " |"
    assert line.split("|")[4:7] == [" 2 ", " 0.500 (1 seed) ", " 0.835 ± 0.005 "]
    assert results.covers(line, done, row)
    # A line with an empty scratch column needs nothing from it; the trunk column needs 2 seeds.
    trunk_only = "| `r` | d | map | 2 | — | 0.8 ± 0.01 | — | — | t | p |"
    assert results.covers(trunk_only, done, row)
    first = {k: v for k, v in done.items() if k != (1, "pretrained")}
    assert not results.covers(trunk_only, first, row)
    said = results.pending_runs(row, first, trunk_only)
    assert "pretrained 1 of 2 seeds (recorded: [0])" in said and "scratch" not in said
    # The mirror: scratch filled at 2 seeds, one scratch record is not enough.
    scratch_only = "| `r` | d | map | 2 | 0.5 ± 0.01 | — | — | — | t | p |"
    assert not results.covers(scratch_only, done, row)
    assert "scratch 1 of 2 seeds (recorded: [0])" in results.pending_runs(row, done, scratch_only)


def test_the_machine_cell_tells_apart_cpus_with_one_masked_name(tmp_path):
    results = load_results_module()
    import common  # benchmarks/, on the path once results.py is loaded

    flags = "fpu sse2 avx fma avx2 {}"
    blocks = [
        f"processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
        f"model name\t: AMD EPYC\nflags\t\t: {flags.format(extra)}\n"
        for i, (model, extra) in enumerate([(17, "avx512f avx512_bf16"), (1, "")])
    ]
    genoa, milan = tmp_path / "genoa", tmp_path / "milan"
    genoa.write_text("\n".join(blocks))  # the first processor's block is the one read
    milan.write_text(blocks[1])
    assert common.cpu(str(genoa)) == {
        "name": "AMD EPYC",
        "family_model": "family 25 model 17",
        "vector": ["avx512_bf16", "avx512f", "avx2", "avx"],
    }
    assert common.cpu(str(milan))["vector"] == ["avx2", "avx"]
    assert common.cpu(str(tmp_path / "absent"))["vector"] == []

    def cell(cpuinfo: pathlib.Path) -> str:
        found = common.cpu(str(cpuinfo))
        env = {"cpu": found["name"], "cpu_family_model": found["family_model"]}
        env |= {"cpu_vector_extensions": found["vector"], "cpu_count": 2, "tensorflow": "2.21.0"}
        return results.describe_machine(env)

    assert cell(genoa) == "AMD EPYC (family 25 model 17, AVX512_BF16), 2 cores, TF 2.21.0"
    assert cell(milan) == "AMD EPYC (family 25 model 1, AVX2), 2 cores, TF 2.21.0"
    # A record written before these fields existed reads as it always did.
    old = {"cpu": "AMD EPYC", "cpu_count": 2, "tensorflow": "2.21.0"}
    assert results.describe_machine(old) == "AMD EPYC, 2 cores, TF 2.21.0"
