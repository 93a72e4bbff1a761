"""Readers for UCR time-series files and the signal datasets used for the paper's ECG experiments.

"Memorization Control in Diffusion Models from Denoising-centric Perspective" (https://arxiv.org/abs/2601.21348)
trains a 1D diffusion model on ECG5000 heartbeats (Chen & Keogh 2015, UCR time-series archive,
https://www.cs.ucr.edu/~eamonn/time_series_data_2018/). ECG5000 is not on the Hugging Face Hub, so it is read from
local UCR files, in any of the formats the archive and its mirrors use:

- `.txt`: the original UCR format, whitespace separated, first column = class label.
- `.tsv`: the 2018 UCR format, tab separated, first column = class label (`#` comment lines allowed).
- `.csv`: comma separated, first column = class label (an all-text first row is taken as a header).
- `.arff`: Weka ARFF as distributed by timeseriesclassification.com, read by `scipy.io.arff` (the class is the
  attribute named `target`/`class`/`label`, otherwise the last nominal or last attribute); our own scan of the file
  only adds line numbers to errors and refuses what scipy cannot read (multivariate, sparse).
- `.ts`: sktime's format (`@problemName ...`, `@data`, rows `v1,v2,...:label`; univariate only).

`#` and `%` lines are comments in every format; blank lines are skipped. Missing values (`NaN`, `?`), ragged rows,
non-numeric cells and empty files raise a `ValueError` naming the file and line.

Other signal datasets can come from the Hub or a local `datasets` folder (`save_to_disk` or parquet files) holding a
column of equal-length sequences; see `load_signal_dataset`.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "SIGNAL_DATASET_PRESETS",
    "UCR_EXTENSIONS",
    "UCRDataset",
    "load_signal_dataset",
    "load_ucr_dataset",
    "load_ucr_file",
]

# Preference when a directory holds the same split in several formats: the original UCR text first.
UCR_EXTENSIONS: tuple[str, ...] = (".txt", ".tsv", ".csv", ".ts", ".arff")
_SPLITS = ("train", "test", "all")
_LABEL_COLUMNS = ("label", "labels", "class", "target")
_DATASETS_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}

SIGNAL_DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "ecg5000": {
        "description": "ECG5000 heartbeats (UCR archive; Chen & Keogh 2015), z-normalised, 5 classes, 1 = normal.",
        "hub_id": None,  # no Hub copy exists: always local UCR files
        "source": "https://www.timeseriesclassification.com/description.php?Dataset=ECG5000",
        "file_prefix": "ECG5000",
        "length": 140,
        "num_channels": 1,
        "num_samples": {"train": 500, "test": 4500},
        "classes": None,  # every class unless `classes` is given (e.g. [1] for normal beats only)
        "example_data_dir": "../shared/data/ecg5000",
    },
}


@dataclass
class UCRDataset:
    """
    Rows of one or more UCR files.

    Args:
        values (`np.ndarray`):
            Float32 array of shape `(num_rows, length)`.
        labels (`np.ndarray`):
            Array of shape `(num_rows,)`: int64 when every label is an integer, float64 when numeric, else strings.
        files (`list[Path]`):
            The files the rows were read from, in order.
    """

    values: np.ndarray
    labels: np.ndarray
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def length(self) -> int:
        """Number of time steps per row."""
        return int(self.values.shape[1])


# ----------------------------------------------------------------------------------------------------------- parsing


def _error(path: Path, lineno: int, message: str) -> ValueError:
    return ValueError(f"{path}, line {lineno}: {message}")


def _parse_values(cells: list[str], path: Path, lineno: int, first_column: int = 1) -> np.ndarray:
    """Cells to float64, with an error naming the first cell that is not a finite number."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    for offset, cell in enumerate(cells):
        column = first_column + offset
        if cell.strip() in ("", "?"):
            raise _error(path, lineno, f"missing value {cell.strip()!r} in column {column}; rows must be complete")
        try:
            number = float(cell)
        except ValueError:
            raise _error(path, lineno, f"column {column} is {cell.strip()!r}, which is not a number") from None
        if not math.isfinite(number):
            raise _error(path, lineno, f"column {column} is {cell.strip()!r}; rows must hold finite values (no NaN)")
    raise AssertionError("unreachable: a cell failed to parse but none was found")  # pragma: no cover


def _parse_labels(tokens: list[str], line_numbers: list[int], path: Path) -> np.ndarray:
    """Labels as int64 when all are integers, float64 when all numeric, else as strings."""
    numbers = []
    for token in tokens:
        try:
            numbers.append(float(token))
        except ValueError:
            return np.array(tokens, dtype=np.str_)
    for number, lineno in zip(numbers, line_numbers):
        if not math.isfinite(number):
            raise _error(path, lineno, f"class label is {number}; labels must be finite")
    if all(number.is_integer() for number in numbers):
        return np.array(numbers, dtype=np.int64)
    return np.array(numbers, dtype=np.float64)


def _strip_quotes(token: str) -> str:
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def _data_lines(path: Path):
    """Yield (line number, stripped line) for lines that are not blank or comments."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith(("#", "%")):
                yield lineno, stripped


def _read_delimited(path: Path, delimiter: str | None, allow_header: bool):
    labels, rows, line_numbers = [], [], []
    for lineno, line in _data_lines(path):
        cells = line.split(delimiter)
        if allow_header and not rows and not labels and not any(_is_number(cell) for cell in cells):
            continue  # a header row such as "label,t0,t1,..."
        if len(cells) < 2:
            raise _error(path, lineno, f"expected a class label followed by values, got {len(cells)} cell(s)")
        labels.append(_strip_quotes(cells[0]))
        rows.append(_parse_values(cells[1:], path, lineno, first_column=2))
        line_numbers.append(lineno)
    return labels, rows, line_numbers


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


_ARFF_ATTRIBUTE = re.compile(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)$", re.IGNORECASE)


def _arff_layout(path: Path) -> tuple[list[tuple[str, str, list[str] | None]], list[tuple[int, str]]]:
    """Attribute declarations and the data lines with their line numbers.

    The part of ARFF that `scipy.io.arff` does not give: line numbers for error messages, and clear refusals of what
    it cannot read (relational/string/date attributes, sparse rows) or reads without complaint (no `@data`).
    """
    attributes: list[tuple[str, str, list[str] | None]] = []  # (name, kind, nominal values)
    data: list[tuple[int, str]] = []
    in_data = False
    for lineno, line in _data_lines(path):
        if in_data:
            if line.startswith("{"):
                raise _error(path, lineno, "sparse ARFF rows ({index value, ...}) are not supported")
            data.append((lineno, line))
            continue
        lowered = line.lower()
        if lowered.startswith("@attribute"):
            attributes.append(_arff_attribute(path, lineno, line))
        elif lowered.startswith("@data"):
            if not attributes:
                raise _error(path, lineno, "@data before any @attribute declaration")
            in_data = True
        elif not lowered.startswith("@relation"):
            raise _error(path, lineno, f"unexpected header line {line[:60]!r}; expected @relation/@attribute/@data")
    if not in_data and attributes:
        raise ValueError(f"{path}: no @data section; an ARFF file needs @attribute lines followed by @data")
    return attributes, data


def _arff_attribute(path: Path, lineno: int, line: str) -> tuple[str, str, list[str] | None]:
    match = _ARFF_ATTRIBUTE.match(line)
    if match is None:
        raise _error(path, lineno, f"cannot parse attribute declaration {line!r}")
    name, kind = _strip_quotes(match.group(1)), match.group(2).strip()
    if kind.startswith("{"):
        return name, "nominal", [_strip_quotes(value) for value in kind.strip("{}").split(",")]
    if kind.lower() in ("numeric", "real", "integer"):
        return name, "numeric", None
    raise _error(
        path,
        lineno,
        f"attribute {name!r} has type {kind!r}; only numeric and nominal attributes of univariate series are "
        "supported (relational = multivariate, string and date are not)",
    )


def _arff_row_error(path: Path, attributes: list, label_index: int, lineno: int, line: str) -> ValueError | None:
    """The first problem of one data line (ragged, undeclared class, missing or non-numeric value), if any."""
    cells = line.split(",")
    if len(cells) != len(attributes):
        return _error(
            path,
            lineno,
            f"{len(cells)} cells, but the header declares {len(attributes)} attributes; rows must not be ragged",
        )
    label, nominal = _strip_quotes(cells[label_index]), attributes[label_index][2]
    if nominal is not None and label not in nominal:
        return _error(path, lineno, f"class label {label!r} is not one of the declared values {nominal}")
    try:
        _parse_values(cells[:label_index] + cells[label_index + 1 :], path, lineno)
    except ValueError as error:
        return error
    return None


def _read_arff(path: Path):
    """ARFF through `scipy.io.arff.loadarff`; our own scan only places its errors (and NaN/`?` values) on a line."""
    import scipy.io.arff

    attributes, data = _arff_layout(path)
    if not data:
        return [], [], []
    label_index = _arff_label_index(attributes)
    # `#` lines are comments in every format we read, but not for scipy: blank them (line numbers stay put).
    with open(path, encoding="utf-8") as handle:
        text = "".join("\n" if line.lstrip().startswith("#") else line for line in handle)
    try:
        table, meta = scipy.io.arff.loadarff(io.StringIO(text))
    except (ValueError, IndexError) as error:
        for lineno, line in data:
            located = _arff_row_error(path, attributes, label_index, lineno, line)
            if located is not None:
                raise located from error
        raise ValueError(f"{path}: scipy.io.arff cannot read it ({error})") from error
    names = meta.names()
    column = table[names[label_index]]
    labels = [v.decode() if isinstance(v, bytes) else repr(float(v)) for v in column.tolist()]
    values = np.column_stack([table[name] for i, name in enumerate(names) if i != label_index]).astype(np.float64)
    for row in np.flatnonzero(~np.isfinite(values).all(axis=1)):
        lineno, line = data[row]
        raise _arff_row_error(path, attributes, label_index, lineno, line) or _error(path, lineno, "non-finite value")
    return labels, list(values), [lineno for lineno, _ in data]


def _arff_label_index(attributes: list[tuple[str, str, list[str] | None]]) -> int:
    for index, (name, _, _) in enumerate(attributes):
        if name.lower() in ("target", "class", "label", "classattribute"):
            return index
    nominal = [index for index, (_, kind, _) in enumerate(attributes) if kind == "nominal"]
    return nominal[-1] if nominal else len(attributes) - 1


def _read_ts(path: Path):
    labels, rows, line_numbers = [], [], []
    in_data = False
    class_labels: list[str] | None = None
    for lineno, line in _data_lines(path):
        if not in_data:
            if not line.startswith("@"):
                raise _error(path, lineno, f"expected a @tag header line or @data, got {line[:60]!r}")
            tag, _, rest = line.partition(" ")
            tag, words = tag.lower(), rest.split()
            if tag == "@data":
                in_data = True
            elif tag == "@classlabel":
                if not words or words[0].lower() != "true":
                    raise _error(path, lineno, "@classLabel false: unlabelled .ts files are not supported")
                class_labels = words[1:] or None
            elif tag == "@timestamps" and words and words[0].lower() == "true":
                raise _error(path, lineno, "@timeStamps true is not supported; rows must be plain values")
            elif tag == "@univariate" and words and words[0].lower() == "false":
                raise _error(path, lineno, "multivariate .ts files are not supported; expected @univariate true")
            continue
        series, separator, label = line.rpartition(":")
        if not separator:
            raise _error(path, lineno, "expected 'v1,v2,...:label' (no ':' before the class label)")
        if ":" in series:
            raise _error(path, lineno, "several ':'-separated dimensions; only univariate series are supported")
        label = _strip_quotes(label)
        if class_labels is not None and label not in class_labels:
            raise _error(path, lineno, f"class label {label!r} is not one of the declared labels {class_labels}")
        labels.append(label)
        rows.append(_parse_values(series.split(","), path, lineno))
        line_numbers.append(lineno)
    if not in_data and (rows or labels):  # pragma: no cover - rows only exist after @data
        raise ValueError(f"{path}: no @data line")
    return labels, rows, line_numbers


def load_ucr_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """
    Read one UCR time-series file (`.txt`, `.tsv`, `.csv`, `.arff` or `.ts`), as distributed by the UCR archive
    (Dau et al. 2019, https://www.cs.ucr.edu/~eamonn/time_series_data_2018/) and timeseriesclassification.com.

    Args:
        path (`str` or `Path`):
            The file; its extension selects the format.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `labels` of shape `(N,)` (int64 when every label is an integer) and
        `values` of shape `(N, L)`, float32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UCR file not found: {path}")
    try:
        return _load_ucr_file(path)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); UCR files are plain "
            "ASCII/UTF-8 text: convert it (e.g. iconv -f latin1 -t utf-8) or check that it is the right file"
        ) from None


def _load_ucr_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".tsv", ".csv"):
        delimiter = {".txt": None, ".tsv": "\t", ".csv": ","}[suffix]
        labels, rows, line_numbers = _read_delimited(path, delimiter, allow_header=suffix != ".txt")
    elif suffix == ".arff":
        labels, rows, line_numbers = _read_arff(path)
    elif suffix == ".ts":
        labels, rows, line_numbers = _read_ts(path)
    else:
        raise ValueError(f"unknown UCR file extension {path.suffix!r} of {path}; valid: {list(UCR_EXTENSIONS)}")
    if not rows:
        raise ValueError(f"{path} holds no data rows")
    length = rows[0].shape[0]
    for row, lineno in zip(rows, line_numbers):
        if row.shape[0] != length:
            raise _error(
                path,
                lineno,
                f"{row.shape[0]} values, but line {line_numbers[0]} has {length}; rows must all have the same length",
            )
    return _parse_labels(labels, line_numbers, path), np.stack(rows).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------- datasets


_SPLIT_FILE = re.compile(r"^(?P<name>.+?)_(?P<split>train|test)(?P<rest>[^.]*)\.(?P<ext>txt|tsv|csv|arff|ts)$", re.I)


def _split_files(directory: Path) -> dict[str, list[Path]]:
    """Map "train" / "test" to the UCR files `<NAME>_TRAIN*.ext` / `<NAME>_TEST*.ext` in `directory`, best first."""
    found: dict[str, list[tuple[tuple, Path]]] = {"train": [], "test": []}
    names = set()
    for path in sorted(directory.iterdir()):
        match = _SPLIT_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        names.add(match.group("name"))
        # Prefer the exact `<NAME>_TRAIN.ext` over variants such as `<NAME>_TEST_reconstructed.tsv`, then by format.
        rank = (match.group("rest") != "", UCR_EXTENSIONS.index("." + match.group("ext").lower()), path.name)
        found[match.group("split").lower()].append((rank, path))
    if len(names) > 1:
        raise ValueError(
            f"{directory} holds UCR files of several datasets {sorted(names)}; pass the path of one file instead"
        )
    return {split: [path for _, path in sorted(entries)] for split, entries in found.items()}


def _is_ucr_directory(directory: Path) -> bool:
    return any(_SPLIT_FILE.match(path.name) for path in directory.iterdir())


def _normalise_classes(classes, labels: np.ndarray, source: str) -> list:
    if isinstance(classes, (str, int, float)):
        classes = [classes]
    classes = list(classes)
    present = np.unique(labels).tolist()
    if not classes:
        raise ValueError(f"classes must list at least one label, or be None for all; labels in {source}: {present}")
    wanted = []
    for value in classes:
        if labels.dtype.kind in "if":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"class {value!r} is not a label of {source}; labels present: {present}") from None
            wanted.append(number)
        else:
            wanted.append(str(value))
    for value, original in zip(wanted, classes):
        if not np.any(labels == value):
            raise ValueError(f"class {original!r} does not occur in {source}; labels present: {present}")
    return wanted


def _select_classes(labels: np.ndarray, classes, source: str) -> np.ndarray:
    """Boolean mask of the rows whose label is in `classes`."""
    wanted = _normalise_classes(classes, labels, source)
    return np.isin(labels, np.array(wanted, dtype=labels.dtype if labels.dtype.kind == "U" else np.float64))


def load_ucr_dataset(
    path: str | Path,
    split: Literal["train", "test", "all"] = "train",
    classes: list[int | str] | None = None,
) -> UCRDataset:
    """
    Load a UCR dataset from one file or from a directory holding `<NAME>_TRAIN.*` and `<NAME>_TEST.*`.

    Args:
        path (`str` or `Path`):
            A UCR file (then `split` is not used: the file is read as is) or a directory. In a directory, files such as
            `ECG5000_TRAIN.txt` and `ECG5000_TEST_reconstructed.tsv` are found; when one split exists in several
            formats, the exact `<NAME>_<SPLIT>` name wins, then the format order of `UCR_EXTENSIONS`.
        split (`str`, *optional*, defaults to `"train"`):
            `"train"`, `"test"` or `"all"` (train rows, then test rows).
        classes (`list`, *optional*):
            Keep only rows with these labels, e.g. `[1]` for ECG5000's normal beats (in the reconstructed ECG5000 test
            file the labels are 1 and -1). Each listed class must occur.

    Returns:
        [`UCRDataset`]: values `(N, L)` float32, labels `(N,)`, and the files read.
    """
    path = Path(path)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}; got {split!r}")
    if not path.exists():
        raise FileNotFoundError(f"UCR data not found: {path} (expected a UCR file or a directory of them)")
    if path.is_file():
        files = [path]
    else:
        by_split = _split_files(path)
        files = []
        for name in ("train", "test") if split == "all" else (split,):
            if not by_split[name]:
                present = sorted(p.name for p in path.iterdir())
                raise FileNotFoundError(
                    f"no {name} file `<NAME>_{name.upper()}*{{{','.join(UCR_EXTENSIONS)}}}` in {path}; "
                    f"it holds: {present[:20]}"
                )
            files.append(by_split[name][0])

    labels, values = [], []
    for file in files:
        file_labels, file_values = load_ucr_file(file)
        if values and file_values.shape[1] != values[0].shape[1]:
            raise ValueError(
                f"{file} has rows of length {file_values.shape[1]}, but {files[0]} has {values[0].shape[1]}; "
                "split='all' needs equal lengths"
            )
        labels.append(file_labels)
        values.append(file_values)
    all_labels = np.concatenate(labels) if len(labels) > 1 else labels[0]
    all_values = np.concatenate(values) if len(values) > 1 else values[0]
    if classes is not None:
        mask = _select_classes(all_labels, classes, ", ".join(str(f) for f in files))
        all_labels, all_values = all_labels[mask], all_values[mask]
    return UCRDataset(values=all_values, labels=all_labels, files=files)


def _looks_like_path(name: str) -> bool:
    known_suffixes = (*UCR_EXTENSIONS, *_DATASETS_FILE_BUILDERS)
    return name.startswith((".", "/", "~")) or "\\" in name or Path(name).suffix.lower() in known_suffixes


def load_signal_dataset(
    dataset_name: str | None = None,
    data_dir: str | Path | None = None,
    *,
    split: str = "train",
    classes: list[int | str] | None = None,
    sequence_column: str | None = None,
    max_train_samples: int | None = None,
    config_name: str | None = None,
) -> torch.Tensor:
    """
    Load a signal dataset as one float32 tensor of shape `(N, 1, L)`, used as given (no rescaling).

    Sources, in the order they are tried:

    1. `dataset_name` naming a preset of `SIGNAL_DATASET_PRESETS` (`"ecg5000"`): local UCR files in `data_dir`
       (no Hub copy of ECG5000 exists).
    2. A local path (`dataset_name` or `data_dir`): a UCR file, a directory of UCR files, a `datasets` folder written
       by `save_to_disk`, a parquet/arrow/json file, or a directory of such files.
    3. Otherwise `dataset_name` is a Hub dataset id, loaded with `datasets.load_dataset`.

    For `datasets` sources the signals come from `sequence_column` (auto-detected when exactly one column holds lists);
    rows holding `(C, L)` nested lists give a `(N, C, L)` tensor.

    Args:
        dataset_name (`str`, *optional*):
            A preset name, a local path or a Hub dataset id.
        data_dir (`str` or `Path`, *optional*):
            Local data: the UCR directory for a preset, or any local source when `dataset_name` is `None`.
        split (`str`, *optional*, defaults to `"train"`):
            `"train"`, `"test"` or `"all"`; for `datasets` sources also any split name the dataset has.
        classes (`list`, *optional*):
            Keep only rows with these labels (UCR labels; for `datasets` sources, the values or class names of a
            `label`/`labels`/`class`/`target` column).
        sequence_column (`str`, *optional*):
            Column holding the signals of a `datasets` source.
        max_train_samples (`int`, *optional*):
            Keep only the first this many rows (after the class filter), as in diffusers' training scripts.
        config_name (`str`, *optional*):
            The configuration of a Hub dataset or of a local dataset folder in Hub format (`--dataset_config_name`).

    Returns:
        `torch.Tensor`: float32 signals of shape `(N, 1, L)` (or `(N, C, L)` for multichannel `datasets` rows).
    """
    if max_train_samples is not None and (
        isinstance(max_train_samples, bool) or not isinstance(max_train_samples, int) or max_train_samples < 1
    ):
        raise ValueError(f"max_train_samples must be a positive integer or None; got {max_train_samples!r}")
    if dataset_name is None and data_dir is None:
        raise ValueError(
            f"pass dataset_name (a preset {sorted(SIGNAL_DATASET_PRESETS)}, a local path or a Hub id) or data_dir"
        )

    preset_key = dataset_name.lower() if isinstance(dataset_name, str) else None
    path = Path(dataset_name if dataset_name is not None else data_dir).expanduser()
    hub_format = not path.exists() or (path.is_dir() and not _is_ucr_directory(path) and not _is_saved_dataset(path))
    if config_name is not None and (preset_key in SIGNAL_DATASET_PRESETS or not hub_format):
        raise ValueError(
            f"--dataset_config_name {config_name!r}: {str(dataset_name or data_dir)!r} has no configurations (only "
            "Hub datasets and local dataset folders in Hub format have them)"
        )
    if preset_key in SIGNAL_DATASET_PRESETS:
        preset = SIGNAL_DATASET_PRESETS[preset_key]
        if data_dir is None:
            raise FileNotFoundError(
                f"dataset {dataset_name!r} has no Hugging Face Hub copy; it is read from local UCR files "
                f"({preset['file_prefix']}_TRAIN.txt/.tsv/.arff/.ts, {preset['file_prefix']}_TEST*...). Pass their "
                f"directory, e.g. `--dataset_name {preset_key} --data_dir {preset['example_data_dir']}` (get the files "
                f"from {preset['source']})"
            )
        chosen = classes if classes is not None else preset["classes"]
        values = load_ucr_dataset(data_dir, split=split, classes=chosen).values[:, None, :]
    else:
        if dataset_name is not None and data_dir is not None:
            raise ValueError(
                f"dataset_name={dataset_name!r} is not a preset {sorted(SIGNAL_DATASET_PRESETS)}; pass either a path "
                f"or Hub id as dataset_name, or a local path as data_dir={str(data_dir)!r}, not both"
            )
        source = dataset_name if dataset_name is not None else data_dir
        path = Path(source).expanduser()
        if path.exists():
            values = _load_local_signals(path, split, classes, sequence_column, config_name)
        elif data_dir is not None or _looks_like_path(str(source)):
            raise FileNotFoundError(f"signal data not found: {path}")
        else:
            import datasets

            values = _signals_from_datasets(
                datasets.load_dataset(str(source), config_name), str(source), split, classes, sequence_column
            )

    if max_train_samples is not None:
        values = values[:max_train_samples]
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_local_signals(
    path: Path, split: str, classes, sequence_column: str | None, config_name: str | None = None
) -> np.ndarray:
    import datasets

    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in UCR_EXTENSIONS:
            return load_ucr_dataset(path, split=split, classes=classes).values[:, None, :]
        if suffix in _DATASETS_FILE_BUILDERS:
            loaded = datasets.load_dataset(_DATASETS_FILE_BUILDERS[suffix], data_files=str(path))
            return _signals_from_datasets(loaded, str(path), split, classes, sequence_column, single_file=True)
        raise ValueError(
            f"unknown signal file extension {path.suffix!r} of {path}; valid: UCR {list(UCR_EXTENSIONS)} or "
            f"datasets files {sorted(_DATASETS_FILE_BUILDERS)}"
        )
    if _is_ucr_directory(path):
        return load_ucr_dataset(path, split=split, classes=classes).values[:, None, :]
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(str(path), config_name)
    return _signals_from_datasets(loaded, str(path), split, classes, sequence_column)


def _signals_from_datasets(
    loaded, source: str, split: str, classes, sequence_column: str | None, single_file: bool = False
) -> np.ndarray:
    """Signals of one split of a `datasets.Dataset` / `DatasetDict` as a float32 `(N, C, L)` array."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if split == "all":
            dataset = datasets.concatenate_datasets([loaded[name] for name in loaded])
        elif single_file and len(loaded) == 1:
            dataset = next(iter(loaded.values()))  # one data file: the split name "train" is datasets' default
        elif split in loaded:
            dataset = loaded[split]
        else:
            raise ValueError(f"split {split!r} is not in {source}; available splits: {sorted(loaded)} or 'all'")
    else:
        if split not in ("train", "all"):
            raise ValueError(f"{source} holds a single unnamed split; use split='train' or 'all', not {split!r}")
        dataset = loaded

    features = dataset.features
    if sequence_column is None:
        candidates = [
            name
            for name, feature in features.items()
            if type(feature).__name__ in ("List", "LargeList", "Sequence", "Array2D")
        ]
        if len(candidates) != 1:
            raise ValueError(
                f"cannot pick the signal column of {source}: list-valued columns {candidates} among "
                f"{list(features)}; pass sequence_column"
            )
        sequence_column = candidates[0]
    elif sequence_column not in features:
        raise ValueError(f"sequence_column {sequence_column!r} is not a column of {source}; columns: {list(features)}")

    if classes is not None:
        label_column = next((name for name in _LABEL_COLUMNS if name in features), None)
        if label_column is None:
            raise ValueError(
                f"classes={classes!r} needs a label column ({', '.join(_LABEL_COLUMNS)}) in {source}; "
                f"columns: {list(features)}"
            )
        label_feature = features[label_column]
        raw = list(dataset[label_column])
        if type(label_feature).__name__ == "ClassLabel":
            classes = [
                label_feature.str2int(value) if isinstance(value, str) and not _is_number(value) else value
                for value in ([classes] if isinstance(classes, (str, int)) else classes)
            ]
        labels = np.array(raw)
        keep = np.flatnonzero(_select_classes(labels, classes, f"column {label_column!r} of {source}"))
        dataset = dataset.select(keep)

    rows = dataset[sequence_column]
    if len(rows) == 0:
        raise ValueError(f"{source} (split {split!r}) holds no rows")
    signals = []
    for index, row in enumerate(rows):
        try:
            array = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"row {index} of column {sequence_column!r} in {source} is not a numeric (ragged-free) list: {error}"
            ) from None
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] == 0:
            raise ValueError(
                f"row {index} of column {sequence_column!r} in {source} has shape {array.shape}; expected (L,) or (C, L)"
            )
        if signals and array.shape != signals[0].shape:
            raise ValueError(
                f"row {index} of column {sequence_column!r} in {source} has shape {array.shape}, but row 0 has "
                f"{signals[0].shape}; signals must all have the same length"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"row {index} of column {sequence_column!r} in {source} holds NaN or infinite values")
        signals.append(array)
    return np.stack(signals)
