"""Turn a batch's columns into a finite numeric matrix the detectors can score.

Numeric columns: infinities become missing, missing values are imputed with the median and flagged in an
indicator column, then standardised. Categorical columns: missing values become their own category, then
one-hot encoded; categories never seen when fitting encode as all zeros. Free-text columns and the label
are left out. Built from scikit-learn's transformers rather than by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from poisonguard import ROW_ID
from poisonguard.values import as_text

# Standardised values beyond this are clipped: a cell of 1e308 must not overflow to inf in a detector.
FEATURE_CLIP = 1e6
MAX_ONE_HOT_CATEGORIES = 30


def infer_kinds(frame: pd.DataFrame, label_col: str | None) -> dict[str, str]:
    """Column kinds for a frame that has no suite: numeric dtypes are numeric, everything else categorical."""
    kinds = {}
    for column in frame.columns:
        if column in (ROW_ID, label_col):
            continue
        series = frame[column]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        kinds[column] = "numeric" if numeric else "categorical"
    return kinds


class FeatureEncoder:
    """Fit on trusted rows, then encode any frame with the same columns into a float64 matrix."""

    def __init__(self, kinds: dict[str, str], label_col: str | None = None) -> None:
        self.kinds = kinds
        self.label_col = label_col

    def fit(self, frame: pd.DataFrame) -> FeatureEncoder:
        numeric = [c for c, k in self.kinds.items() if k == "numeric" and c != self.label_col]
        categorical = [c for c, k in self.kinds.items() if k == "categorical" and c != self.label_col]
        transformers = []
        if numeric:
            transformers.append(
                (
                    "numeric",
                    make_pipeline(
                        FunctionTransformer(_finite_or_nan, feature_names_out="one-to-one"),
                        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                        StandardScaler(),
                    ),
                    numeric,
                )
            )
        if categorical:
            transformers.append(
                (
                    "categorical",
                    make_pipeline(
                        FunctionTransformer(_text_or_missing, feature_names_out="one-to-one"),
                        OneHotEncoder(
                            handle_unknown="infrequent_if_exist",
                            max_categories=MAX_ONE_HOT_CATEGORIES,
                            sparse_output=False,
                        ),
                    ),
                    categorical,
                )
            )
        if not transformers:
            raise ValueError("no numeric or categorical feature columns to score")
        self.transformer_ = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
        self.transformer_.fit(frame)
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        matrix = np.asarray(self.transformer_.transform(frame), dtype="float64")
        np.nan_to_num(matrix, copy=False, nan=0.0, posinf=FEATURE_CLIP, neginf=-FEATURE_CLIP)
        return np.clip(matrix, -FEATURE_CLIP, FEATURE_CLIP, out=matrix)


def _finite_or_nan(block: pd.DataFrame) -> np.ndarray:
    values = np.asarray(block, dtype="float64")
    return np.where(np.isfinite(values), values, np.nan)


def _text_or_missing(block: pd.DataFrame) -> np.ndarray:
    return np.column_stack([as_text(block[c]).fillna("<missing>").to_numpy(dtype=object) for c in block.columns])
