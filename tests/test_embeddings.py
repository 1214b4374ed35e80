"""A precomputed embedding held in one column of lists (Parquet list column, JSON arrays)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from poisonguard import ROW_ID
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError, InputError
from poisonguard.expectations.suite import infer_suite, load_suite, save_suite, suite_embeddings, suite_kinds
from poisonguard.expectations.validate import SchemaValidator, validate_batch
from poisonguard.flows.scan import run_scan
from poisonguard.provenance.ledger import content_sha256, row_hashes
from poisonguard.review.export import export_csv
from poisonguard.score.rows import score_rows
from poisonguard.write.outputs import OutputPaths

WIDTH = 12


def labelled_embeddings(n_rows: int, n_poison: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Two classes apart in a 12-wide embedding, an ordinary ``amount`` column, and ``n_poison`` rows of
    class b relabelled a whose embedding carries a trigger in dimension 3 (the raw column carries none)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["a", "b"], n_rows)
    embedding = rng.normal(size=(n_rows, WIDTH)) + (labels == "b")[:, None] * 1.5
    poison = rng.choice(np.flatnonzero(labels == "b"), n_poison, replace=False)
    embedding[poison, 3] += 6.0
    labels[poison] = "a"
    frame = pd.DataFrame({"amount": rng.normal(size=n_rows), "label": labels})
    frame["emb"] = list(embedding)
    mask = np.zeros(n_rows, dtype=bool)
    mask[poison] = True
    return frame, mask


def with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{ROW_ID: np.arange(len(frame))})


def test_a_list_column_embedding_scores_exactly_like_the_same_embedding_in_columns():
    frame, mask = labelled_embeddings(600, 30, seed=0)
    as_columns = frame.drop(columns="emb").join(
        pd.DataFrame(np.stack(frame["emb"]), columns=[f"emb_{i}" for i in range(WIDTH)])
    )
    by_list = score_rows(with_ids(frame), None, {"amount": "numeric"}, "label",
                         ScanConfig(label_col="label", detectors=("spectral",), embedding_column="emb"))
    by_prefix = score_rows(with_ids(as_columns), None, {"amount": "numeric"}, "label",
                           ScanConfig(label_col="label", detectors=("spectral",), embedding_prefix="emb_"))
    scores = by_list.scores["spectral"]
    np.testing.assert_allclose(scores, by_prefix.scores["spectral"])
    assert mask[np.argsort(-scores)[: mask.sum()]].mean() >= 0.9


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("file_format", ["parquet", "jsonl"])
def test_a_scan_reads_the_embedding_column_finds_the_trigger_and_keeps_every_value(tmp_path, file_format):
    reference, _ = labelled_embeddings(1500, 0, seed=1)
    batch, mask = labelled_embeddings(1000, 50, seed=2)
    reference.to_parquet(tmp_path / "ref.parquet")
    path = tmp_path / f"batch.{file_format}"
    if file_format == "parquet":
        batch.to_parquet(path)
    else:
        batch.to_json(path, orient="records", lines=True, double_precision=15)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.parquet", out_dir=tmp_path / "out",
                        detectors=("spectral", "robust_spectral"), embedding_column="emb")
    summary = run_scan(path, config)

    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    clean, held = pd.read_parquet(paths.clean), pd.read_parquet(paths.quarantine)
    both = pd.concat([clean, held[clean.columns]]).sort_values(ROW_ID)
    assert both[ROW_ID].tolist() == list(range(1000))
    # pandas' exact float parser as the oracle: the values as the file spells them
    as_read = pd.read_parquet(path) if file_format == "parquet" else pd.read_json(path, lines=True, precise_float=True)
    np.testing.assert_array_equal(np.stack(both["emb"]), np.stack(as_read["emb"]))
    found = mask[held[ROW_ID].to_numpy()].sum()
    assert found >= 0.9 * mask.sum()
    assert len(held) - found <= 0.02 * (~mask).sum()


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("option", ["embedding_column", "embedding_prefix"])
def test_a_chunked_scan_reads_the_embedding_too(tmp_path, option):
    reference, _ = labelled_embeddings(1500, 0, seed=1)
    batch, mask = labelled_embeddings(1000, 50, seed=2)
    if option == "embedding_prefix":  # the same embedding, one column per dimension
        reference, batch = (
            frame.drop(columns="emb").join(pd.DataFrame(np.stack(frame["emb"]), columns=[f"emb_{i}" for i in range(WIDTH)]))
            for frame in (reference, batch)
        )
    reference.to_parquet(tmp_path / "ref.parquet")
    batch.to_parquet(tmp_path / "batch.parquet")
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.parquet", out_dir=tmp_path / "out",
                        detectors=("spectral",), chunk_rows=300, **{option: "emb" if option == "embedding_column" else "emb_"})
    summary = run_scan(tmp_path / "batch.parquet", config)

    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    clean, held = pd.read_parquet(paths.clean), pd.read_parquet(paths.quarantine)
    assert sorted(clean[ROW_ID].tolist() + held[ROW_ID].tolist()) == list(range(1000))
    found = mask[held[ROW_ID].to_numpy()].sum()
    assert found >= 0.9 * mask.sum()
    assert len(held) - found <= 0.02 * (~mask).sum()


def test_the_suite_records_the_embedding_length_and_keeps_it_through_json(tmp_path):
    reference, _ = labelled_embeddings(200, 0, seed=3)
    suite = infer_suite(reference, "emb", "label")
    loaded = load_suite(save_suite(suite, tmp_path / "emb.json"))
    assert suite_kinds(loaded) == {"amount": "numeric", "label": "categorical", "emb": "embedding"}
    assert suite_embeddings(loaded) == {"emb": WIDTH}


def test_bad_embedding_cells_fail_only_their_rows_and_another_length_rejects_the_batch():
    reference, _ = labelled_embeddings(200, 0, seed=3)
    suite = infer_suite(reference, "emb", "label")
    validator = SchemaValidator()

    batch = with_ids(labelled_embeddings(100, 0, seed=4)[0]).astype({"emb": object})
    batch.at[3, "emb"] = np.ones(WIDTH - 1)
    batch.at[5, "emb"] = np.full(WIDTH, np.inf)
    batch.at[7, "emb"] = "not a list"
    batch.at[9, "emb"] = None
    outcome = validate_batch(batch, suite, "label", validator)
    assert not outcome.rejected
    assert outcome.row_reasons["schema:type:emb"].tolist() == [3, 5, 7]
    assert outcome.row_reasons["schema:not_null:emb"].tolist() == [9]
    assert outcome.raw_values[7] == {"emb": "not a list"}

    wider = batch.assign(emb=[np.ones(WIDTH + 4)] * len(batch))
    rejected = validate_batch(wider, suite, "label", validator)
    assert [f.code for f in rejected.structural] == ["structural:type:emb"]
    assert f"lists of {WIDTH} finite numbers" in rejected.structural[0].message
    assert f"a list of {WIDTH + 4} values" in rejected.structural[0].message


def test_list_cells_pad_cut_and_blank_what_is_not_a_finite_number():
    from poisonguard.cells import list_cells

    column = pd.Series([[1, 2], [1, "x"], None, np.array([1.0, np.inf]), [1, 2, 3], "text", []], dtype=object)
    cells = list_cells(column)
    assert cells.valid.tolist() == [True, False, False, True, True, False, True]
    assert cells.modal_length() == 2
    np.testing.assert_array_equal(
        cells.matrix(2),
        [[1, 2], [np.nan, np.nan], [np.nan, np.nan], [1, np.nan], [1, 2], [np.nan, np.nan], [np.nan, np.nan]],
    )
    whole = list_cells(pd.Series([np.arange(3.0), None, np.arange(3.0) + 1], dtype=object))
    np.testing.assert_array_equal(whole.matrix(3), [[0, 1, 2], [np.nan] * 3, [1, 2, 3]])


def test_the_content_digest_reads_list_values_whatever_the_format_order_or_chunking():
    frame, _ = labelled_embeddings(300, 0, seed=5)
    as_python_lists = frame.assign(emb=[cell.tolist() for cell in frame["emb"]])
    assert content_sha256(frame) == content_sha256(as_python_lists) == content_sha256(frame.iloc[::-1])
    chunked = np.concatenate([row_hashes(frame.iloc[:100]), row_hashes(frame.iloc[100:])])
    assert (chunked == row_hashes(frame)).all()
    changed = frame.copy()
    changed.at[10, "emb"] = frame.at[10, "emb"] + 1e-9
    assert content_sha256(changed) != content_sha256(frame)


@pytest.mark.usefixtures("prefect_harness")
def test_a_column_that_holds_no_lists_cannot_be_the_embedding(tmp_path):
    frame, _ = labelled_embeddings(100, 0, seed=6)
    frame.assign(emb=frame["emb"].map(lambda cell: str(cell.tolist()))).to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", out_dir=tmp_path / "out", embedding_column="emb")
    with pytest.raises(InputError, match=r"batch\.csv: column 'emb' holds text values, not lists of numbers.*a CSV file cannot hold lists"):
        run_scan(tmp_path / "batch.csv", config)
    with pytest.raises(InputError, match="no column is named 'vectors'; columns are: amount, label, emb"):
        run_scan(tmp_path / "batch.csv", config.with_overrides(embedding_column="vectors"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="either --embedding-prefix or --embedding-column"):
        ScanConfig(embedding_column="emb", embedding_prefix="emb_")


def test_exported_embeddings_are_json_arrays_at_full_precision(tmp_path):
    frame, _ = labelled_embeddings(5, 0, seed=7)
    exported = pd.read_csv(export_csv(frame, tmp_path / "rows.csv"))
    np.testing.assert_array_equal(np.stack(exported["emb"].map(json.loads)), np.stack(frame["emb"]))
