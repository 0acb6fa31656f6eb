"""ArrayDataset, split_train_val and omit_classes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdkit.data import ArrayDataset, omit_classes, split_train_val
from kdkit.errors import DataError


def _ds(labels, name="toy") -> ArrayDataset:
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    # image i is filled with i % 256 in its first pixel so samples can be traced after splitting
    images = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return ArrayDataset(images, labels, [f"c{i}" for i in range(10)], name)


def _ids(ds: ArrayDataset) -> np.ndarray:
    return ds.images[:, 0, 0, 0].astype(int) + 256 * ds.images[:, 0, 0, 1].astype(int)


def test_array_dataset_normalises_and_validates():
    ds = ArrayDataset(np.zeros((3, 1, 2, 2), np.uint8)[:, :, ::-1], [1, 2, 3], ["a", "b", "c", "d"], "x")
    assert (
        ds.images.flags.c_contiguous and ds.labels.dtype == np.int64 and len(ds) == 3 and ds.num_classes == 4
    )
    with pytest.raises(DataError, match="uint8 array"):
        ArrayDataset(np.zeros((3, 1, 2, 2), np.float32), [0, 0, 0], ["a"], "x")
    with pytest.raises(DataError, match="expected 3 labels"):
        ArrayDataset(np.zeros((3, 1, 2, 2), np.uint8), [0, 0], ["a"], "x")


def test_subset_copies_and_names():
    ds = _ds(np.arange(10) % 3)
    sub = ds.subset(np.array([7, 2, 2]), name="picked")
    assert _ids(sub).tolist() == [7, 2, 2] and sub.labels.tolist() == [1, 2, 2] and sub.name == "picked"
    assert sub.classes == ds.classes and sub.images.flags.c_contiguous
    sub.images[0] = 99
    assert _ids(ds)[7] == 7  # a copy, not a view
    assert len(ds.subset(ds.labels == 0)) == 4 and ds.subset(np.array([])).images.shape == (0, 1, 2, 2)
    assert ds.subset(np.array([1])).name == "toy[subset]"


def test_split_sizes_disjoint_deterministic_stratified():
    labels = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 10])  # 550 samples
    ds = _ds(labels)
    train, val = split_train_val(ds, 55, seed=3)
    assert len(train) == 495 and len(val) == 55
    ti, vi = _ids(train), _ids(val)
    assert not set(ti) & set(vi) and sorted([*ti, *vi]) == list(range(550))
    # stratified: 10% of every class
    assert np.bincount(val.labels, minlength=10).tolist() == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    # labels still follow their images
    np.testing.assert_array_equal(val.labels, labels[vi])
    again_t, again_v = split_train_val(ds, 55, seed=3)
    np.testing.assert_array_equal(_ids(again_v), vi)
    np.testing.assert_array_equal(_ids(again_t), ti)
    other = split_train_val(ds, 55, seed=4)[1]
    assert set(_ids(other)) != set(vi)
    assert train.name == "toy:train" and val.name == "toy:val"
    assert train.classes == ds.classes == val.classes


def test_split_fraction_zero_and_errors():
    ds = _ds(np.arange(200) % 10)
    train, val = split_train_val(ds, 0.1, seed=0)
    assert len(val) == 20 and np.bincount(val.labels).tolist() == [2] * 10
    train, val = split_train_val(ds, 0, seed=0)
    assert len(val) == 0 and len(train) == 200 and val.images.shape == (0, 1, 2, 2)
    assert len(split_train_val(ds, 0.0, seed=0)[1]) == 0
    for bad in (-1, 201, 1.0, -0.1, True, "10"):
        with pytest.raises(DataError, match="val_size"):
            split_train_val(ds, bad, seed=0)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=10).filter(lambda c: sum(c) > 0),
    frac=st.floats(0.0, 0.99),
    seed=st.integers(0, 1000),
)
def test_split_property(counts, frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    ds = _ds(labels)
    train, val = split_train_val(ds, frac, seed)
    n_val = round(frac * len(labels))
    assert len(val) == n_val and len(train) + len(val) == len(labels)
    assert sorted([*_ids(train), *_ids(val)]) == list(range(len(labels)))
    per_class = np.bincount(val.labels, minlength=len(counts))
    exact = np.array(counts) * n_val / len(labels)
    assert np.all(np.abs(per_class - exact) < 1)  # proportional to class size, rounding only


def test_omit_classes():
    ds = _ds(np.arange(30) % 10)
    out = omit_classes(ds, [3, 7])
    assert len(out) == 24 and not np.isin(out.labels, [3, 7]).any()
    assert out.classes == ds.classes  # labels keep their meaning
    np.testing.assert_array_equal(out.labels, ds.labels[_ids(out)])
    assert out.name == "toy-omit3,7"
    assert len(omit_classes(ds, [])) == 30
    with pytest.raises(DataError, match=r"class ids \[10\] out of range"):
        omit_classes(ds, [10])
