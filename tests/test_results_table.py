"""`benchmarks/results.py`'s README table: rows not re-measured keep their earlier line."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

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
