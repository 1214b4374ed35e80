"""A batch scanned in chunks (larger than memory) comes out as a batch scanned whole does."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from conftest import STRUCTURAL_BREAKS, make_frame
from conftest import signed_config as config_for

from poisonguard import REASONS, ROW_ID
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError
from poisonguard.ingest.source import UniformSample
from poisonguard.report.scan_report import read_report
from poisonguard.write.outputs import OutputPaths


def _outputs(out_dir, summary) -> tuple[pd.DataFrame, pd.DataFrame | None, OutputPaths]:
    paths = OutputPaths.for_batch(out_dir, summary.dataset, summary.batch_id)
    clean = pd.read_parquet(paths.clean) if paths.clean.exists() else None
    quarantine = pd.read_parquet(paths.quarantine) if paths.quarantine.exists() else None
    return clean, quarantine, paths


def test_chunked_scan_of_the_sample_quarantines_what_a_whole_scan_does(prefect_harness, tmp_path, sample_batch,
                                                                        sample_reference):
    from poisonguard.flows.scan import run_scan

    # The detectors that score rows one by one: a chunked scan fits those that judge rows against each
    # other on a sample of the batch instead (see test_whole_batch_checks_run_chunked_on_a_first_pass_sample).
    settings = dict(label_col="risk_grade", dataset="loans", reference=sample_reference,
                    suite_dir=tmp_path / "no-suites", detectors=("ecod", "iforest", "label_model"))
    whole = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "whole", **settings))
    chunked = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "chunked", chunk_rows=300, **settings))

    assert (chunked.rows_in, chunked.rows_clean, chunked.rows_quarantined) == (
        whole.rows_in, whole.rows_clean, whole.rows_quarantined)
    clean_w, held_w, _ = _outputs(tmp_path / "whole", whole)
    clean_c, held_c, paths = _outputs(tmp_path / "chunked", chunked)
    assert sorted(clean_c[ROW_ID]) == sorted(clean_w[ROW_ID])
    assert held_c[ROW_ID].tolist() == sorted(held_w[ROW_ID])  # chunks are written in file order
    assert held_c[REASONS].map(list).tolist() == held_w.sort_values(ROW_ID)[REASONS].map(list).tolist()
    assert set(clean_c[ROW_ID]).isdisjoint(held_c[ROW_ID])
    assert len(clean_c) + len(held_c) == 2000  # every row once
    whole_report, chunked_report = read_report(whole.report_path), read_report(chunked.report_path)
    assert chunked_report["reasons"] == whole_report["reasons"]
    assert chunked_report["calibration"] == whole_report["calibration"]
    assert [e["unexpected_count"] for e in chunked_report["schema"]["expectations"]] == [
        e["unexpected_count"] for e in whole_report["schema"]["expectations"]]
    assert paths.report.with_suffix(".html").exists()
    assert not list(paths.clean.parent.glob(".*.tmp"))  # no staged file left behind


def test_chunked_parquet_batch_keeps_its_column_types_and_conserves_rows(prefect_harness, tmp_path):
    from poisonguard.flows.scan import run_scan

    make_frame(600, seed=0).to_parquet(tmp_path / "ref.parquet", index=False)
    batch = make_frame(1000, seed=1)
    batch.loc[:9, "x2"] = np.linspace(30.0, 40.0, 10)
    batch.to_parquet(tmp_path / "batch.parquet", index=False)
    summary = run_scan(tmp_path / "batch.parquet", ScanConfig(
        label_col="label", reference=tmp_path / "ref.parquet", out_dir=tmp_path / "out", chunk_rows=128))
    clean, held, _ = _outputs(tmp_path / "out", summary)
    assert clean["count"].dtype == np.int64 and held["count"].dtype == np.int64
    assert sorted([*clean[ROW_ID], *held[ROW_ID]]) == list(range(1000))
    assert set(range(10)) <= set(held[ROW_ID])  # the planted outliers, spread over the first chunk


def typed(frame: pd.DataFrame, seed: int, columns: tuple[str, ...]) -> pd.DataFrame:
    """``frame`` with typed columns of its own, those named in ``columns``: a bool, a zoned timestamp, a date,
    a category, a decimal, a list of text, a nullable integer."""
    rng = np.random.default_rng(seed)
    n_rows = len(frame)
    made = {
        "active": rng.random(n_rows) < 0.5,
        "seen_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 900, n_rows), unit="h"),
        "day": (pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 90, n_rows), unit="D")).date,
        "tier": pd.Categorical(rng.choice(["gold", "silver"], n_rows)),
        "price": [Decimal(f"{cents / 100:.2f}") for cents in rng.integers(100, 9_999, n_rows)],
        "tags": [["a", "b"][: int(k)] for k in rng.integers(0, 3, n_rows)],
        "visits": pd.array(rng.integers(0, 50, n_rows), dtype="Int64"),
    }
    return frame.assign(**{column: made[column] for column in columns})


@pytest.mark.parametrize("chunk_rows", [None, 128])
def test_a_parquet_batch_keeps_its_bool_timestamp_date_and_category_types(tmp_path, chunk_rows):
    """The clean and quarantine files hold every column with the type the Parquet file gave it."""
    import pyarrow.parquet as pq

    from poisonguard.pipeline.steps import scan_file

    parquet_types = ("active", "seen_at", "day", "tier", "price", "tags")
    typed(make_frame(600, seed=0), 0, parquet_types).to_parquet(tmp_path / "ref.parquet", index=False)
    batch = typed(make_frame(1000, seed=1), 1, parquet_types)
    batch.loc[:9, "x2"] = np.linspace(30.0, 40.0, 10)
    batch.to_parquet(tmp_path / "batch.parquet", index=False)
    summary = scan_file(tmp_path / "batch.parquet", ScanConfig(
        label_col="label", reference=tmp_path / "ref.parquet", out_dir=tmp_path / "out", chunk_rows=chunk_rows))
    given = pq.read_schema(tmp_path / "batch.parquet")
    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    for written in (pq.read_schema(paths.clean), pq.read_schema(paths.quarantine)):
        for column in ("active", "seen_at", "day", "tier", "count", "price", "tags"):
            assert written.field(column).type == given.field(column).type, column
    clean, held = pd.read_parquet(paths.clean), pd.read_parquet(paths.quarantine)
    assert sorted([*clean[ROW_ID], *held[ROW_ID]]) == list(range(1000))
    expected = batch.set_index(pd.RangeIndex(1000)).loc[clean[ROW_ID], "seen_at"].to_numpy()
    assert (clean["seen_at"].to_numpy() == expected).all()


def test_whole_and_chunked_scans_of_a_csv_write_one_schema_typed_by_the_suite(tmp_path):
    """A CSV has no types: the suite, inferred once from the reference, types every chunk the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poisonguard.pipeline.steps import scan_file

    csv_types = ("active", "seen_at", "day", "visits")
    reference = typed(make_frame(600, seed=0), 0, csv_types)
    reference.loc[::50, "visits"] = pd.NA  # a CSV reader types this column float: it is still whole numbers
    reference.to_csv(tmp_path / "ref.csv", index=False)
    batch = typed(make_frame(1000, seed=1), 1, csv_types)
    batch.loc[[700, 701], "visits"] = pd.NA  # only the second chunk has empty cells
    batch.to_csv(tmp_path / "batch.csv", index=False)
    schemas = {}
    for chunk_rows in (None, 400):
        summary = scan_file(tmp_path / "batch.csv", ScanConfig(
            label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / f"out-{chunk_rows}",
            chunk_rows=chunk_rows))
        paths = OutputPaths.for_batch(tmp_path / f"out-{chunk_rows}", summary.dataset, summary.batch_id)
        schemas[chunk_rows] = pq.read_schema(paths.clean).remove_metadata()
        held = pq.read_schema(paths.quarantine).remove_metadata()
        assert [held.field(f.name) for f in schemas[chunk_rows] if f.name != "_batch_id"] == \
            [f for f in schemas[chunk_rows] if f.name != "_batch_id"]
    assert schemas[None] == schemas[400]
    written = schemas[None]
    assert written.field("count").type == pa.int64() and written.field("visits").type == pa.int64()
    assert written.field("x1").type == pa.float64() and written.field("active").type == pa.bool_()
    assert written.field("seen_at").type == pa.timestamp("ns", tz="UTC") and written.field("day").type == pa.date32()
    clean = pd.read_parquet(OutputPaths.for_batch(tmp_path / "out-None", summary.dataset, summary.batch_id).clean)
    given = batch.set_index(pd.RangeIndex(1000)).loc[clean[ROW_ID]]
    assert (clean["seen_at"].to_numpy() == given["seen_at"].to_numpy()).all()
    assert clean["visits"].astype("Int64").equals(given["visits"].reset_index(drop=True).astype("Int64"))


def test_chunked_scan_without_a_reference_fits_on_a_first_pass_sample(prefect_harness, tmp_path):
    from poisonguard.expectations.suite import infer_suite, save_suite
    from poisonguard.flows.scan import run_scan

    save_suite(infer_suite(make_frame(600, seed=0), "batch", "label", 0.1), tmp_path / "suites" / "batch.json")
    batch = make_frame(1500, seed=1)
    batch.loc[:9, "x1"] = np.linspace(-4.0, -3.0, 10) * 0  # ordinary values: must stay clean
    batch.loc[100:109, "x2"] = 4.5  # inside the stored range, far out for the detectors
    batch.to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", suite_dir=tmp_path / "suites", out_dir=tmp_path / "out",
                        chunk_rows=200, max_reference_rows=500)
    summary = run_scan(tmp_path / "batch.csv", config)
    clean, held, _ = _outputs(tmp_path / "out", summary)
    assert len(clean) + len(held) == 1500
    assert set(range(100, 110)) <= set(held[ROW_ID])
    calibration = read_report(summary.report_path)["calibration"]
    assert calibration["mode"] == "batch" and calibration["fit_rows"] == 500
    assert "sample" in calibration["rule"]
    assert calibration["false_quarantine_estimate"]["detectors"]  # the estimate is set on the sample too
    assert any("estimated false quarantine" in warning for warning in summary.warnings)  # the CLI prints it


@pytest.mark.parametrize(("change", "code"), STRUCTURAL_BREAKS)
def test_structural_failures_reject_a_chunked_batch_whole(prefect_harness, tmp_path, change, code):
    from poisonguard.flows.scan import run_scan

    make_frame(300, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    change(make_frame(500, seed=2)).to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out", chunk_rows=64)
    summary = run_scan(tmp_path / "batch.csv", config)
    assert summary.status == "rejected" and summary.rows_quarantined == 500 and summary.rows_clean == 0
    _, _, paths = _outputs(tmp_path / "out", summary)
    assert (paths.rejected / "batch.csv").read_bytes() == (tmp_path / "batch.csv").read_bytes()
    assert code in [f["code"] for f in json.loads((paths.rejected / "reason.json").read_text())["failures"]]
    assert not paths.clean.exists() and not paths.quarantine.exists()


def test_a_type_break_in_a_late_chunk_leaves_no_partial_output(prefect_harness, tmp_path):
    from poisonguard.flows.scan import run_scan

    make_frame(300, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    batch = make_frame(600, seed=2).astype({"x1": object})
    # The last chunk's x1 is text: its type is broken there (the rule that over half of a column's cells
    # fail to parse is applied chunk by chunk), after five chunks were already staged.
    batch.loc[500:, "x1"] = "broken"
    batch.to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out", chunk_rows=100)
    summary = run_scan(tmp_path / "batch.csv", config)
    assert summary.status == "rejected"
    _, _, paths = _outputs(tmp_path / "out", summary)
    assert not paths.clean.exists() and not paths.quarantine.exists()
    for folder in (paths.clean.parent, paths.quarantine.parent):
        assert not list(folder.glob(".*.tmp"))  # the staged row groups are gone


def test_chunked_mode_refuses_what_scores_only_its_own_rows(tmp_path, sample_batch, sample_reference):
    from poisonguard.ingest.read import describe_batch
    from poisonguard.ingest.source import BatchSource
    from poisonguard.pipeline.plan import plan_scan
    from poisonguard.score.scorers import fit_scorer

    with pytest.raises(ConfigError, match="chunk_rows"):
        ScanConfig(chunk_rows=0)
    config = ScanConfig(label_col="risk_grade", reference=sample_reference, chunk_rows=500,
                        detectors=("ecod", "confident_learning"), suite_dir=tmp_path)
    batch = describe_batch(sample_batch, "loans")
    scan_plan = plan_scan(batch, config)
    with pytest.raises(ConfigError, match="confident_learning"):
        fit_scorer(BatchSource(batch, config.io.chunk_rows), scan_plan, config)


@pytest.mark.parametrize("with_reference", [True, False])
def test_whole_batch_checks_run_chunked_on_a_first_pass_sample(prefect_harness, tmp_path, with_reference):
    from poisonguard.flows.scan import run_scan

    reference = make_frame(800, seed=0)
    reference.to_csv(tmp_path / "ref.csv", index=False)
    batch = make_frame(1200, seed=1)
    flipped = np.arange(0, 1200, 30)  # 40 rows, spread over every chunk
    batch.loc[flipped, "label"] = np.where(batch.loc[flipped, "label"] == "yes", "no", "yes")
    batch.to_csv(tmp_path / "batch.csv", index=False)
    settings = dict(label_col="label", detectors=("knn_label", "spectral"),
                    reference=tmp_path / "ref.csv" if with_reference else None)
    if not with_reference:
        from poisonguard.expectations.suite import infer_suite, save_suite

        save_suite(infer_suite(reference, "batch", "label", 0.1), tmp_path / "suites" / "batch.json")
        settings["suite_dir"] = tmp_path / "suites"
    whole = run_scan(tmp_path / "batch.csv", ScanConfig(out_dir=tmp_path / "whole", **settings))
    # The first pass keeps a sample of 800 of the 1,200 rows; the reference (800 rows) is used whole in both
    # scans, so the two differ only in how the batch is read.
    chunked = run_scan(tmp_path / "batch.csv", ScanConfig(out_dir=tmp_path / "chunked", chunk_rows=250,
                                                          max_reference_rows=800, **settings))
    recalls = []
    for out, summary in ((tmp_path / "whole", whole), (tmp_path / "chunked", chunked)):
        clean, held, _ = _outputs(out, summary)
        held_ids = set(held[ROW_ID]) if held is not None else set()
        assert len(clean) + len(held_ids) == 1200 and set(clean[ROW_ID]).isdisjoint(held_ids)
        recalls.append(np.isin(flipped, list(held_ids)).mean())
    assert recalls[1] >= 0.8 and recalls[1] >= recalls[0] - 0.15  # the sample's estimate holds up
    assert set(read_report(chunked.report_path)["detectors"]) == {"knn_label", "spectral"}


def test_uniform_sample_keeps_at_most_its_size_and_covers_the_stream():
    sample = UniformSample(1000, seed=0)
    for start in range(0, 20_000, 3000):
        sample.offer(pd.DataFrame({"i": np.arange(start, min(start + 3000, 20_000))}))
    kept = sample.frame["i"].to_numpy()
    assert len(kept) == 1000 and len(set(kept)) == 1000
    # Each fifth of the stream holds about a fifth of the sample.
    counts = np.bincount(kept // 4000, minlength=5)
    assert counts.min() > 150 and counts.max() < 250


@pytest.mark.usefixtures("prefect_harness")
def test_a_signed_batch_scanned_in_chunks_is_verified_and_its_replay_writes_nothing(tmp_path, signed):
    from poisonguard.flows.scan import run_scan
    from poisonguard.provenance.ledger import Ledger

    batch, trust = signed
    config = config_for(tmp_path, trust, chunk_rows=25)
    first = run_scan(batch, config)
    assert first.provenance["status"] == "verified" and first.rows_in == 80
    clean, held, paths = _outputs(config.io.out_dir, first)
    assert len(clean) + (len(held) if held is not None else 0) == 80
    written = {p: p.read_bytes() for p in (paths.clean, paths.report)}

    again = run_scan(batch, config)
    assert again.status == "replay" and again.reasons == {"provenance:replay": 80}
    assert {p: p.read_bytes() for p in written} == written
    whole = [e for e in Ledger(config.ledger_path).entries()]
    assert [e.outcome for e in whole] == [first.status, "replay"]
    assert whole[0].content_sha256 == first_content_digest(batch)  # the same digest a whole scan records


@pytest.mark.usefixtures("prefect_harness")
def test_a_tampered_batch_scanned_in_chunks_is_quarantined_whole(tmp_path, signed):
    from poisonguard.flows.scan import run_scan

    batch, trust = signed
    batch.write_bytes(batch.read_bytes().replace(b"red", b"rez", 1))
    summary = run_scan(batch, config_for(tmp_path, trust, chunk_rows=25))
    assert summary.status == "rejected" and summary.rows_quarantined == 80 and summary.rows_clean == 0
    clean, held, _ = _outputs(tmp_path / "out", summary)
    assert clean is None and sorted(held[ROW_ID]) == list(range(80))
    assert all("provenance:sha256_mismatch" in list(r) for r in held[REASONS])


def first_content_digest(path) -> str:
    from poisonguard.ingest.read import read_batch
    from poisonguard.provenance.ledger import content_sha256

    return content_sha256(read_batch(path).frame)


@pytest.mark.parametrize("with_reference", [True, False])
def test_a_trigger_word_is_found_in_a_batch_read_in_chunks(prefect_harness, tmp_path, with_reference):
    from benchmarks.attacks import support_tickets, text_trigger
    from poisonguard.flows.scan import run_scan

    poisoned = text_trigger(support_tickets(0, 3_000), 0.05, "message", "asap", "billing", 0)
    poisoned.frame.to_csv(tmp_path / "batch.csv", index=False)
    support_tickets(1, 3_000).to_csv(tmp_path / "ref.csv", index=False)
    settings = dict(label_col="label", reference=tmp_path / "ref.csv" if with_reference else None,
                    suite_dir=tmp_path / "suites")
    if not with_reference:  # a chunked scan holds every chunk to a stored schema
        from poisonguard.expectations.suite import infer_suite, save_suite

        save_suite(infer_suite(support_tickets(1, 3_000), "batch", "label", 0.1), tmp_path / "suites" / "batch.json")
    summary = run_scan(tmp_path / "batch.csv", ScanConfig(out_dir=tmp_path / "out", chunk_rows=700, **settings))
    clean, held, _ = _outputs(tmp_path / "out", summary)
    held_ids = set(held[ROW_ID])
    assert len(clean) + len(held_ids) == 3_000
    poisoned_ids = np.flatnonzero(poisoned.mask)
    assert np.isin(poisoned_ids, list(held_ids)).mean() >= 0.9
    assert "trigger_tokens" in read_report(summary.report_path)["detectors"]


def test_a_batch_read_in_chunks_tells_its_progress_after_each_chunk(tmp_path, caplog):
    from poisonguard.pipeline.steps import scan_file

    make_frame(600, seed=0).to_parquet(tmp_path / "ref.parquet", index=False)
    make_frame(1000, seed=1).to_parquet(tmp_path / "batch.parquet", index=False)
    with caplog.at_level("INFO", logger="poisonguard.progress"):
        scan_file(tmp_path / "batch.parquet", ScanConfig(label_col="label", reference=tmp_path / "ref.parquet",
                                                         out_dir=tmp_path / "out", chunk_rows=400))
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scanned")]
    assert [message.split(" rows")[0] for message in told] == [
        "scanned 400 of 1,000", "scanned 800 of 1,000", "scanned 1,000 of 1,000"]
    assert all("rows/s, about" in message for message in told)
