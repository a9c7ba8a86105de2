"""Read user data files (CSV, NPZ) into arrays; every problem is a `DataError` naming file, row and column.

Missing values (empty cells, `nan`, `inf`) are not errors: they become non-finite floats, because
NaN in the data is exactly what the diagnoser is there to report. Targets come back raw (float64 or,
for text class labels, str) so the caller can infer the task and encode the labels in one place.
"""

from __future__ import annotations

import csv
import itertools
import zipfile
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nandoctor.errors import DataError, did_you_mean

Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def check_file(path: Path, key: str, file: str | None) -> None:
    if not path.exists():
        raise DataError(f"data file not found: {path}", file=file, path=key,
                        hint="a relative path is read from the config file's directory")
    if not path.is_file():
        raise DataError(f"{path} is not a file", file=file, path=key)


# ---- CSV -------------------------------------------------------------------------------------

def load_csv(path: Path, target: str | int | None, task: str | None, *, file: str | None = None) -> Arrays:
    """X float64 (n, d), y float64 or str (n,), feature names. Header row detected, target default last.

    Rows are parsed as they are read into one flat float buffer: a list of rows of cell strings would
    take ~15x the file's size in memory (a 200k-row file peaked at 560 MiB that way)."""
    check_file(path, "data.csv", file)

    def fail(message: str, key: str = "data.csv", hint: str | None = None) -> DataError:
        return DataError(f"{path}: {message}", file=file, path=key, hint=hint)

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return _parse_csv(_rows(csv.reader(fh)), target, task, fail)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise fail(f"cannot read the file as CSV ({exc})") from None


def _rows(reader) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells), blank lines skipped."""
    for row in reader:
        if len(row) <= 1 and not "".join(row).strip():
            continue
        yield reader.line_num, [cell.strip() for cell in row]


def _parse_csv(rows: Iterator[tuple[int, list[str]]], target, task, fail) -> Arrays:
    first = next(rows, None)
    if first is None:
        raise fail("the file is empty")
    second = next(rows, None)
    first_line, width = first[0], len(first[1])
    header = _has_header([first[1]] if second is None else [first[1], second[1]])
    names = [c or f"x{j}" for j, c in enumerate(first[1])] if header else [f"x{j}" for j in range(width)]
    data = itertools.chain([first] if not header else [], [second] if second else [], rows)
    t = None
    features, X, labels, n = [], array("d"), [], 0
    for line, row in data:
        if len(row) != width:
            raise fail(f"row {line} has {len(row)} columns, expected {width} (as in row {first_line})")
        if t is None:
            if width < 2:
                raise fail("only one column: need at least one feature column besides the target",
                           hint=_separator_hint(row[0]))
            t = _target_index(target, names, header, fail)
            features = [j for j in range(width) if j != t]
        try:
            X.extend([float(row[j] or "nan") for j in features])
        except ValueError:
            j = next(j for j in features if not _is_number(row[j]))
            raise _not_a_number(fail, line, row[j], j, names, header, None) from None
        labels.append((line, row[t]))
        n += 1
    if not n:
        raise fail("no data rows" + (" below the header" if header else ""))
    X = np.frombuffer(X, dtype=np.float64).reshape(n, len(features))
    if task == "regression" or all(_is_number(cell) for _, cell in labels):
        hint = "a regression target must be a number" if task == "regression" else None
        y = np.empty(n)
        for i, (line, cell) in enumerate(labels):
            try:
                y[i] = float(cell or "nan")
            except ValueError:
                raise _not_a_number(fail, line, cell, t, names, header, hint) from None
    else:
        y = np.array([cell for _, cell in labels], dtype=str)  # text class labels
    return X, y, tuple(names[j] for j in features)


def _not_a_number(fail, line: int, cell: str, j: int, names: list[str], header: bool, hint: str | None):
    where = f"column '{names[j]}' (index {j})" if header else f"column index {j}"
    hint = hint or _separator_hint(cell) or "leave a cell empty or write nan for a missing value"
    return fail(f"row {line}, {where}: '{cell}' is not a number", hint=hint)


def _is_number(cell: str) -> bool:
    try:
        float(cell or "nan")
    except ValueError:
        return False
    return True


def _has_header(rows: list[list[str]]) -> bool:
    """A first row with text where the next row has numbers is a header.

    Comparing with the second row keeps a headerless file with text class labels from losing its
    first row; any other first row with a non-numeric cell is a header.
    """
    text = [not _is_number(c) for c in rows[0]]
    if len(rows) == 1 or not any(text):
        return any(text)
    return any(t and _is_number(c) for t, c in zip(text, rows[1], strict=True))


def _target_index(target: str | int | None, names: list[str], header: bool, fail) -> int:
    width = len(names)
    if target is None:
        return width - 1
    if isinstance(target, int):
        if not -width <= target < width:
            raise fail(f"target column index {target} is out of range: the file has {width} columns",
                       "data.target")
        return target % width
    if not header:
        raise fail(f"no column named '{target}': the file has no header row", "data.target",
                   "give target as a column index (0-based), or add a header row")
    if names.count(target) > 1:
        raise fail(f"column name '{target}' appears {names.count(target)} times", "data.target",
                   "give target as a column index (0-based)")
    if target not in names:
        raise fail(f"no column named '{target}'", "data.target",
                   did_you_mean(target, names) or f"columns: {', '.join(names)}")
    return names.index(target)


def _separator_hint(cell: str) -> str | None:
    sep = next((s for s in (";", "\t") if s in cell), None)
    return sep and f"the file seems to use {sep!r} between values; nandoctor reads comma-separated files"


# ---- NPZ -------------------------------------------------------------------------------------

def _is_npy(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(6) == b"\x93NUMPY"


def load_npz(path: Path, *, file: str | None = None) -> Arrays:
    """X float64 (n, d), y float64 (n,) / (n, k) or str (n,), feature names (array `feature_names` if any)."""
    check_file(path, "data.npz", file)

    def fail(message: str, hint: str | None = None) -> DataError:
        return DataError(f"{path}: {message}", file=file, path="data.npz", hint=hint)

    try:
        if not zipfile.is_zipfile(path) and not _is_npy(path):
            # np.load calls any other file "pickled data" and advises allow_pickle, which we never want
            raise ValueError("not a zip archive")
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise fail(f"cannot read the file as an .npz archive ({exc})",
                   "save it with np.savez(path, X=X, y=y)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail("holds a single array, not an .npz archive with arrays X and y",
                   "save it with np.savez(path, X=X, y=y)")
    with archive:
        for key in ("X", "y"):
            if key not in archive.files:
                raise fail(f"no array named '{key}'",
                           f"arrays in the file: {', '.join(archive.files) or 'none'}; names are case-sensitive")
        arrays = {}
        for key in ("X", "y", "feature_names"):
            if key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError:
                    raise fail(f"array '{key}' holds Python objects, which can only be loaded with pickle; "
                               "nandoctor never unpickles data files",
                               "save plain numeric arrays, e.g. X.astype(float)") from None
    return _check_npz(arrays, fail)


def _check_npz(arrays: dict[str, np.ndarray], fail) -> Arrays:
    X, y = arrays["X"], arrays["y"]
    if X.dtype.kind not in "biuf":
        raise fail(f"X must be numeric, got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[1] == 0:
        raise fail(f"X must be 2-D (samples x features), got shape {X.shape}",
                   "for a single feature save X.reshape(-1, 1)" if X.ndim == 1 else None)
    if y.dtype.kind not in "biufU":
        raise fail(f"y must hold numbers or text labels, got dtype {y.dtype}")
    if y.ndim not in (1, 2):
        raise fail(f"y must be 1-D (labels) or 2-D (regression targets), got shape {y.shape}")
    if len(X) != len(y):
        raise fail(f"X has {len(X)} rows but y has {len(y)}")
    if len(X) == 0:
        raise fail("no data rows")
    names = tuple(f"x{j}" for j in range(X.shape[1]))
    if "feature_names" in arrays:
        given = arrays["feature_names"]
        if given.dtype.kind != "U" or given.shape != (X.shape[1],):
            raise fail(f"feature_names must be {X.shape[1]} strings, one per column of X")
        names = tuple(str(n) for n in given)
    y = y if y.dtype.kind == "U" else y.astype(np.float64)
    return X.astype(np.float64), y, names
