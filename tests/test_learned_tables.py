"""The learned-deferral tables are derived data: rendering them again from the committed CSVs changes nothing."""

import shutil

from training.deferral import tables


def test_tables_rerender_the_committed_results(tmp_path):
    copy = tmp_path / "learned"
    shutil.copytree(tables.RESULTS, copy, ignore=shutil.ignore_patterns("*.png", "heads", "configs"))
    rendered = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.name.startswith(("lspec_", "online_table")))
    assert rendered  # the committed folder has tables to compare
    for rel in rendered:
        (copy / rel).unlink()
    assert tables.main([str(copy)]) == 0
    for rel in rendered:
        assert (copy / rel).read_text() == (tables.RESULTS / rel).read_text(), rel
