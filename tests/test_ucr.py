"""Tests of the UCR readers and `load_signal_dataset` (real ECG5000 files and small synthetic ones)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_memctl.data.ucr import (
    SIGNAL_DATASET_PRESETS,
    UCRDataset,
    load_signal_dataset,
    load_ucr_dataset,
    load_ucr_file,
)

# ---------------------------------------------------------------------------------------------- real ECG5000 files


@pytest.fixture(scope="module")
def ecg_dir(shared_data) -> Path:
    return shared_data / "ecg5000"


@pytest.fixture(scope="module")
def ecg_train_txt(ecg_dir):
    return load_ucr_file(ecg_dir / "ECG5000_TRAIN.txt")


def test_ecg5000_train_txt_shape_counts_and_first_row(ecg_train_txt, ecg_dir):
    labels, values = ecg_train_txt
    assert values.shape == (500, 140) and values.dtype == np.float32
    assert labels.dtype == np.int64
    classes, counts = np.unique(labels, return_counts=True)
    assert classes.tolist() == [1, 2, 3, 4, 5]
    assert counts.tolist() == [292, 177, 10, 19, 2]
    # First row read independently from the raw text.
    first = (ecg_dir / "ECG5000_TRAIN.txt").read_text().split("\n", 1)[0].split()
    assert labels[0] == int(float(first[0]))
    np.testing.assert_array_equal(values[0], np.array([float(v) for v in first[1:]], dtype=np.float32))
    # Rows are z-normalised.
    np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(values.std(axis=1), 1.0, atol=1e-2)


@pytest.mark.parametrize("name", ["ECG5000_TRAIN.arff", "ECG5000_TRAIN.ts"])
def test_ecg5000_formats_agree_exactly(ecg_dir, ecg_train_txt, name):
    labels, values = load_ucr_file(ecg_dir / name)
    np.testing.assert_array_equal(labels, ecg_train_txt[0])
    np.testing.assert_array_equal(values, ecg_train_txt[1])


def test_ecg5000_reconstructed_test_tsv(ecg_dir):
    labels, values = load_ucr_file(ecg_dir / "ECG5000_TEST_reconstructed.tsv")
    assert values.shape == (4500, 140)
    assert (labels == 1).sum() == 2627 and (labels == -1).sum() == 1873
    assert (labels[:2627] == 1).all() and (labels[2627:] == -1).all()


def test_ecg5000_directory_splits(ecg_dir, ecg_train_txt):
    train = load_ucr_dataset(ecg_dir, split="train")
    assert isinstance(train, UCRDataset) and len(train) == 500 and train.length == 140
    assert [f.name for f in train.files] == ["ECG5000_TRAIN.txt"]
    np.testing.assert_array_equal(train.values, ecg_train_txt[1])

    test = load_ucr_dataset(ecg_dir, split="test")
    assert [f.name for f in test.files] == ["ECG5000_TEST_reconstructed.tsv"] and len(test) == 4500

    everything = load_ucr_dataset(str(ecg_dir), split="all")
    assert everything.values.shape == (5000, 140)
    np.testing.assert_array_equal(everything.values[:500], train.values)
    np.testing.assert_array_equal(everything.values[500:], test.values)
    # Class 1 over all 5000 rows: 2919 (the data README's published count).
    assert (everything.labels == 1).sum() == 2919


def test_ecg5000_class_filter(ecg_dir):
    normal = load_ucr_dataset(ecg_dir, classes=[1])
    assert len(normal) == 292 and (normal.labels == 1).all()
    rare = load_ucr_dataset(ecg_dir, classes=["3", 5])  # strings and ints both match integer labels
    assert len(rare) == 12 and set(rare.labels.tolist()) == {3, 5}
    assert len(load_ucr_dataset(ecg_dir, split="all", classes=[1])) == 292 + 2627
    assert len(load_ucr_dataset(ecg_dir, split="test", classes=[-1])) == 1873
    with pytest.raises(ValueError, match=r"class 2 does not occur.*labels present: \[-1, 1\]"):
        load_ucr_dataset(ecg_dir, split="test", classes=[2])
    with pytest.raises(ValueError, match="at least one label"):
        load_ucr_dataset(ecg_dir, classes=[])


def test_load_signal_dataset_ecg5000_preset(ecg_dir, ecg_train_txt):
    assert "ecg5000" in SIGNAL_DATASET_PRESETS
    signals = load_signal_dataset("ecg5000", ecg_dir)
    assert signals.shape == (500, 1, 140) and signals.dtype == torch.float32
    np.testing.assert_array_equal(signals[:, 0].numpy(), ecg_train_txt[1])
    normal = load_signal_dataset("ECG5000", data_dir=ecg_dir, split="all", classes=[1], max_train_samples=3000)
    assert normal.shape == (2919, 1, 140)
    assert load_signal_dataset("ecg5000", ecg_dir, max_train_samples=7).shape == (7, 1, 140)
    # A path as dataset_name or data_dir works as well.
    assert load_signal_dataset(str(ecg_dir / "ECG5000_TRAIN.ts")).shape == (500, 1, 140)
    assert load_signal_dataset(data_dir=ecg_dir, split="test").shape == (4500, 1, 140)


def test_ecg5000_preset_without_data_dir_explains_how_to_pass_it():
    with pytest.raises(FileNotFoundError, match=r"no Hugging Face Hub copy.*--data_dir \.\./shared/data/ecg5000"):
        load_signal_dataset("ecg5000")


# ---------------------------------------------------------------------------------------------- synthetic files

LABELS = [1, 2, 1]
VALUES = [[0.5, -1.0, 2.25, 3.0], [1e-3, 0.0, -4.5, 7.0], [-0.25, 0.125, 6.0, -2.0]]


def _row_text(values, sep):
    return sep.join(repr(v) for v in values)


def _write_formats(directory: Path, stem: str = "TOY") -> dict[str, Path]:
    """The same 3 x 4 toy data in every supported format."""
    txt = "\n".join(f"  {lab:.7e}  " + _row_text(v, "  ") for lab, v in zip(LABELS, VALUES)) + "\n"
    tsv = "# a comment\n" + "\n".join(f"{lab}\t" + _row_text(v, "\t") for lab, v in zip(LABELS, VALUES)) + "\n"
    csv = "label,t0,t1,t2,t3\n" + "\n".join(f"{lab}," + _row_text(v, ",") for lab, v in zip(LABELS, VALUES))
    arff = (
        "% comment\n@relation TOY\n"
        + "".join(f"@attribute att{i} numeric\n" for i in range(4))
        + "@attribute target {1,2}\n\n@data\n"
        + "\n".join(_row_text(v, ",") + f",{lab}" for lab, v in zip(LABELS, VALUES))
        + "\n"
    )
    ts = (
        "#comment\n@problemName TOY\n@timeStamps false\n@univariate true\n@equalLength true\n@seriesLength 4\n"
        "@classLabel true 1 2\n@data\n" + "\n".join(_row_text(v, ",") + f":{lab}" for lab, v in zip(LABELS, VALUES))
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext, text in {"txt": txt, "tsv": tsv, "csv": csv, "arff": arff, "ts": ts}.items():
        paths[ext] = directory / f"{stem}_{ext}.{ext}"
        paths[ext].write_text(text)
    return paths


@pytest.mark.parametrize("ext", ["txt", "tsv", "csv", "arff", "ts"])
def test_every_format_reads_the_toy_data(tmp_path, ext):
    labels, values = load_ucr_file(_write_formats(tmp_path)[ext])
    assert labels.tolist() == LABELS and labels.dtype == np.int64
    np.testing.assert_array_equal(values, np.array(VALUES, dtype=np.float32))


def test_string_and_float_labels(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("a,1,2\nb,3,4\na,5,6\n")
    labels, _ = load_ucr_file(path)
    assert labels.tolist() == ["a", "b", "a"]
    assert len(load_ucr_dataset(path, classes=["a"])) == 2
    path.write_text("0.5,1,2\n1.5,3,4\n")
    labels, _ = load_ucr_file(path)
    assert labels.dtype == np.float64 and labels.tolist() == [0.5, 1.5]


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("r.txt", "1 0.1 0.2 0.3\n2 0.1 0.2\n", r"line 2: 2 values, but line 1 has 3"),
        ("r.tsv", "# c\n1\t0.1\t0.2\n2\t0.1\t0.2\t0.3\n", r"line 3: 3 values, but line 2 has 2"),
        ("r.csv", "1,0.1,0.2\n\n1,0.5\n", r"line 3: 1 values"),
        ("n.txt", "1 0.1 NaN 0.3\n", r"line 1: column 3 is 'NaN'.*finite"),
        ("n.csv", "1,0.1,0.2\n1,0.1,,0.3\n", r"line 2: missing value '' in column 3"),
        ("x.tsv", "1\t0.1\tabc\n", r"line 1: column 3 is 'abc', which is not a number"),
        ("l.txt", "nan 0.1 0.2\n", r"line 1: class label is nan"),
        ("one.txt", "1\n", r"line 1: expected a class label followed by values"),
        ("e.txt", "", r"holds no data rows"),
        ("e.tsv", "# only a comment\n\n", r"holds no data rows"),
        (
            "r.arff",
            "@relation a\n@attribute a numeric\n@attribute b numeric\n@attribute target {1,2}\n@data\n"
            "0.1,0.2,1\n0.1,1\n",
            r"line 7: 2 cells, but the header declares 3 attributes",
        ),
        (
            "q.arff",
            "@relation a\n@attribute a numeric\n@attribute target {1,2}\n@data\n?,1\n",
            r"line 5: missing value '\?'",
        ),
        (
            "c.arff",
            "@relation a\n@attribute a numeric\n@attribute target {1,2}\n@data\n0.5,3\n",
            r"line 5: class label '3' is not one of the declared values",
        ),
        ("m.arff", "@relation a\n@attribute s relational\n@end s\n", r"line 2: .*relational = multivariate"),
        ("d.arff", "@relation a\n@attribute a numeric\n@attribute target {1,2}\n", r"no @data section"),
        ("s.arff", "@relation a\n@attribute a numeric\n@attribute t {1}\n@data\n{0 1.0}\n", r"line 5: sparse"),
        ("r.ts", "@classLabel true 1 2\n@data\n0.1,0.2:1\n0.1:2\n", r"line 4: 1 values, but line 3 has 2"),
        ("m.ts", "@classLabel true 1\n@data\n0.1,0.2:0.3,0.4:1\n", r"line 3: several ':'-separated dimensions"),
        ("u.ts", "@classLabel false\n@data\n0.1,0.2\n", r"line 1: @classLabel false"),
        ("q.ts", "@classLabel true 1\n@data\n0.1,?:1\n", r"line 3: missing value '\?' in column 2"),
        ("c.ts", "@classLabel true 1 2\n@data\n0.1,0.2:7\n", r"line 3: class label '7' is not one of"),
        ("nolabel.ts", "@data\n0.1,0.2\n", r"line 2: expected 'v1,v2,...:label'"),
        ("h.ts", "0.1,0.2:1\n", r"line 1: expected a @tag header line"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, pattern):
    path = _bad(tmp_path, name, text)
    with pytest.raises(ValueError, match=pattern) as info:
        load_ucr_file(path)
    assert str(path) in str(info.value)


def test_unknown_extension_and_missing_file(tmp_path):
    path = _bad(tmp_path, "data.xlsx", "1 2 3\n")
    with pytest.raises(ValueError, match=r"unknown UCR file extension '\.xlsx'.*\.txt"):
        load_ucr_file(path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_ucr_file(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_ucr_dataset(tmp_path / "nope")


def test_directory_splits_and_errors(tmp_path):
    paths = _write_formats(tmp_path / "src")
    data = tmp_path / "TOY"
    data.mkdir()
    (data / "TOY_TRAIN.arff").write_text(paths["arff"].read_text())
    (data / "TOY_TRAIN.txt").write_text(paths["txt"].read_text())  # preferred over .arff
    (data / "TOY_TEST.ts").write_text(paths["ts"].read_text())
    (data / "notes.md").write_text("ignored")
    train = load_ucr_dataset(data)
    assert [f.name for f in train.files] == ["TOY_TRAIN.txt"]
    both = load_ucr_dataset(data, split="all", classes=[2])
    assert [f.name for f in both.files] == ["TOY_TRAIN.txt", "TOY_TEST.ts"]
    assert len(both) == 2 and both.labels.tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test', 'all'\]; got 'valid'"):
        load_ucr_dataset(data, split="valid")

    (data / "TOY_TEST.ts").unlink()
    with pytest.raises(FileNotFoundError, match=r"no test file `<NAME>_TEST\*"):
        load_ucr_dataset(data, split="test")

    (data / "TOY_TEST.csv").write_text("1,0.1,0.2\n")
    with pytest.raises(ValueError, match="length 2, but .* has 4"):
        load_ucr_dataset(data, split="all")

    (data / "OTHER_TRAIN.txt").write_text("1 0.1\n")
    with pytest.raises(ValueError, match=r"several datasets \['OTHER', 'TOY'\]"):
        load_ucr_dataset(data)


# ---------------------------------------------------------------------------------------------- datasets sources


def _hf_dataset(rows, labels):
    import datasets

    return datasets.Dataset.from_dict({"signal": rows, "label": labels, "name": [f"r{i}" for i in range(len(rows))]})


def test_local_parquet_file_with_auto_detected_column(tmp_path):
    rows = np.arange(24, dtype=np.float32).reshape(4, 6) / 7.0
    path = tmp_path / "signals.parquet"
    _hf_dataset(rows.tolist(), [0, 1, 0, 1]).to_parquet(str(path))
    signals = load_signal_dataset(str(path))
    assert signals.shape == (4, 1, 6) and signals.dtype == torch.float32
    np.testing.assert_array_equal(signals[:, 0].numpy(), rows)
    only_ones = load_signal_dataset(data_dir=path, classes=[1], max_train_samples=1)
    np.testing.assert_array_equal(only_ones[:, 0].numpy(), rows[[1]])
    with pytest.raises(ValueError, match=r"sequence_column 'wave' is not a column.*\['signal', 'label', 'name'\]"):
        load_signal_dataset(str(path), sequence_column="wave")


def test_save_to_disk_folder_with_splits(tmp_path):
    import datasets

    train = _hf_dataset([[0.0, 1.0, 2.0]] * 3, [1, 1, 2])
    test = _hf_dataset([[5.0, 6.0, 7.0]] * 2, [1, 2])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "ds"))
    assert load_signal_dataset(str(tmp_path / "ds")).shape == (3, 1, 3)
    test_signals = load_signal_dataset(data_dir=tmp_path / "ds", split="test")
    assert test_signals.shape == (2, 1, 3) and float(test_signals[0, 0, 0]) == 5.0
    assert load_signal_dataset(str(tmp_path / "ds"), split="all", classes=[2]).shape == (2, 1, 3)
    with pytest.raises(ValueError, match=r"split 'valid' is not in .*available splits: \['test', 'train'\]"):
        load_signal_dataset(str(tmp_path / "ds"), split="valid")


def test_multichannel_rows_give_n_c_l(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"x": [[[1.0, 2.0], [3.0, 4.0]]] * 2})
    ds.save_to_disk(str(tmp_path / "mc"))
    assert load_signal_dataset(str(tmp_path / "mc")).shape == (2, 2, 2)


@pytest.mark.parametrize(
    ("columns", "kwargs", "pattern"),
    [
        ({"s": [[1.0, 2.0], [1.0]]}, {}, r"row 1 of column 's'.*has shape \(1, 1\), but row 0 has \(1, 2\)"),
        ({"s": [[1.0, 2.0], [1.0, float("nan")]]}, {}, r"row 1 of column 's'.*NaN"),
        ({"a": [[1.0]], "b": [[2.0]]}, {}, r"list-valued columns \['a', 'b'\].*pass sequence_column"),
        ({"a": [[1.0]]}, {"classes": [1]}, r"needs a label column"),
        ({"a": [[1.0]], "label": [0]}, {"classes": [3]}, r"class 3 does not occur.*labels present: \[0\]"),
        ({"a": [[1.0]]}, {"split": "test"}, r"single unnamed split"),
    ],
)
def test_bad_datasets_sources(tmp_path, columns, kwargs, pattern):
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=pattern):
        load_signal_dataset(str(tmp_path / "bad"), **kwargs)


def test_load_signal_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="pass dataset_name"):
        load_signal_dataset()
    with pytest.raises(ValueError, match="max_train_samples must be a positive integer"):
        load_signal_dataset("ecg5000", tmp_path, max_train_samples=0)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_signal_dataset(data_dir=tmp_path / "missing_dir")
    with pytest.raises(FileNotFoundError, match="nothere.parquet"):
        load_signal_dataset("./nothere.parquet")
    with pytest.raises(ValueError, match="not both"):
        load_signal_dataset("user/some-dataset", data_dir=tmp_path)
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"unknown signal file extension '\.xlsx'"):
        load_signal_dataset(str(tmp_path / "a.xlsx"))


def test_arff_through_scipy_keeps_quoted_labels_comments_and_line_numbers(tmp_path):
    header = "@relation a\n@attribute 'first value' numeric\n@attribute b real\n@attribute target {'x y',z}\n@data\n"
    path = _bad(tmp_path, "ok.arff", header + "# a comment\n0.5, -1,'x y'\n% another\n2,3e-2,z\n")
    labels, values = load_ucr_file(path)
    assert labels.tolist() == ["x y", "z"]
    np.testing.assert_array_equal(values, np.array([[0.5, -1.0], [2.0, 0.03]], dtype=np.float32))
    # scipy reads NaN without complaint; the reader names the line and column.
    path = _bad(tmp_path, "nan.arff", header + "0.5,1,z\n\n1,NaN,z\n")
    with pytest.raises(ValueError, match=r"nan.arff, line 8: column 2 is 'NaN'"):
        load_ucr_file(path)
