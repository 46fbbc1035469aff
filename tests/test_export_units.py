"""Units of the export: split parsing, hashing and grouping, stratified group splits,
balancing, augmentation, resizing, pixel statistics and the checksum manifest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from alearn.exceptions import ConfigError, UnknownNameError
from alearn.export import splits as splits_module
from alearn.export.balance import apply_ops, augment_ops, balance_train, class_weights
from alearn.export.dataset import class_dirs
from alearn.export.files import atomic_folder, write_checksums
from alearn.export.images import PixelStats, fit_image
from alearn.export.splits import (
    near_duplicate_groups,
    parse_split,
    phash,
    split_shortfalls,
    stratified_group_split,
)

# --- --split ----------------------------------------------------------------------------


def test_parse_split_accepts_three_shares_summing_to_one():
    assert parse_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert parse_split([0.7, 0.3, 0]) == (0.7, 0.3, 0.0)


@pytest.mark.parametrize("text", ["0.8,0.1", "0.8,0.3,0.1", "a,b,c", "1.2,-0.1,-0.1",
                                  "0,0.5,0.5", "nan,0.5,0.5", ""])
def test_parse_split_rejects_bad_input_naming_the_argument(text):
    with pytest.raises(ConfigError, match="^split "):
        parse_split(text)


# --- hashing and near-duplicate groups ----------------------------------------------------


def _noise_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_phash_is_stable_under_small_noise_and_not_under_change():
    img = _noise_image(0)
    a = np.asarray(img, dtype=np.int16)
    noisy = np.clip(a + np.random.default_rng(1).integers(-2, 3, a.shape), 0, 255)
    h = phash(img)
    assert bin(h ^ phash(Image.fromarray(noisy.astype(np.uint8)))).count("1") <= 4
    assert bin(h ^ phash(img.resize((96, 80)))).count("1") <= 4  # rescaled copy
    assert bin(h ^ phash(ImageOps.mirror(img))).count("1") > 12
    assert bin(h ^ phash(_noise_image(2))).count("1") > 12
    assert 0 <= h < 2**64
    # a flat background still gives a balanced hash (half the bits set)
    flat = Image.new("L", (28, 28), 0)
    flat.paste(255, (10, 4, 18, 24))
    assert 24 <= bin(phash(flat)).count("1") <= 40


def test_phash_matches_scipy_dct():
    from scipy.fft import dctn

    img = _noise_image(5, (50, 30))
    a = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=float)
    low = dctn(a, type=2, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low)
    assert phash(img) == sum(1 << i for i, b in enumerate(bits) if b)


def _brute_groups(hashes: list[int], d: int) -> list[int]:
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if bin(hashes[i] ^ hashes[j]).count("1") <= d:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(0, 8), n=st.integers(1, 40))
def test_near_duplicate_groups_match_brute_force(seed, d, n):
    rng = np.random.default_rng(seed)
    hashes: list[int] = []
    for _ in range(n):
        if hashes and rng.random() < 0.5:  # a perturbed copy of an earlier hash
            h = hashes[rng.integers(len(hashes))]
            for bit in rng.choice(64, size=rng.integers(0, 2 * d + 2), replace=False):
                h ^= 1 << int(bit)
        else:
            h = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        hashes.append(h)
    assert near_duplicate_groups(hashes, max_distance=d).tolist() == _brute_groups(hashes, d)


def test_near_duplicate_groups_rejects_a_silly_distance():
    with pytest.raises(ConfigError):
        near_duplicate_groups([1, 2], max_distance=40)


# --- stratified group split ----------------------------------------------------------------


def test_singletons_get_exact_shares_per_class():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    split = stratified_group_split(labels, np.arange(60), (0.8, 0.1, 0.1), n_classes=3, seed=3)
    for c, n in enumerate((10, 20, 30)):
        assert np.bincount(split[labels == c], minlength=3).tolist() == [
            round(n * 0.8), round(n * 0.1), round(n * 0.1)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(1, 120), k=st.integers(2, 4))
def test_groups_never_span_splits_and_zero_shares_stay_empty(seed, n, k):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    groups = rng.integers(0, max(1, n // 2), n)
    split = stratified_group_split(labels, groups, (0.7, 0.3, 0.0), n_classes=k, seed=seed)
    assert (split >= 0).all() and not (split == 2).any()
    for g in np.unique(groups):
        assert len(np.unique(split[groups == g])) == 1
    again = stratified_group_split(labels, groups, (0.7, 0.3, 0.0), n_classes=k, seed=seed)
    assert np.array_equal(split, again)


def test_large_random_split_is_close_to_the_target_shares():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    groups = rng.integers(0, 3000, 4000)  # some groups of 2-4
    split = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=4, seed=0)
    for c in range(4):
        share = np.bincount(split[labels == c], minlength=3) / (labels == c).sum()
        assert np.allclose(share, (0.8, 0.1, 0.1), atol=0.01)


def _per_class(split, labels, k):
    return [np.bincount(split[labels == c], minlength=3).tolist() for c in range(k)]


def test_the_newcomers_46_labels_fill_every_split_with_every_class():
    # 46 trusted labels, 8 classes of 5-6: the greedy rounding alone gives each class
    # 5/1/0 or 4/1/0 at 0.8/0.1/0.1, so the test split was empty
    labels = np.repeat(np.arange(8), [6, 6, 6, 6, 6, 6, 5, 5])
    groups = np.arange(46)
    split = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=8, seed=0)
    assert all(0 not in row for row in _per_class(split, labels, 8))
    assert split_shortfalls(labels, groups, split, (0.8, 0.1, 0.1), n_classes=8) == []
    for c, n in enumerate([6, 6, 6, 6, 6, 6, 5, 5]):  # still within 1 of the shares
        got = np.bincount(split[labels == c], minlength=3)
        assert np.all(np.abs(got - n * np.array([0.8, 0.1, 0.1])) <= 1)


@pytest.mark.parametrize("counts", [[20, 16, 10], [40, 3, 3], [15, 15, 16]])
def test_46_labels_over_3_classes_reach_every_split(counts):
    labels = np.repeat(np.arange(3), counts)
    for seed in range(5):
        split = stratified_group_split(labels, np.arange(46), (0.8, 0.1, 0.1), n_classes=3,
                                       seed=seed)
        assert all(0 not in row for row in _per_class(split, labels, 3)), (counts, seed)


def test_a_class_too_small_for_every_split_is_reported_with_the_reason():
    labels = np.repeat([0, 1, 2, 3], [30, 14, 2, 0])
    groups = np.arange(46)
    split = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=4, seed=0)
    assert all(0 not in row for row in _per_class(split, labels, 2))
    short = split_shortfalls(labels, groups, split, (0.8, 0.1, 0.1), n_classes=4)
    placed = _per_class(split, labels, 3)[2]
    missing = [s for s in range(3) if placed[s] == 0]
    assert [(c, s) for c, s, _ in short] == [(2, s) for s in missing] + [(3, 0), (3, 1), (3, 2)]
    assert len(missing) >= 1 and "only 2 items, for 3 splits" in short[0][2]
    assert short[-1][2] == "no exported labels"
    # a zero share is no shortfall: with 0.9/0.1/0 the class of 2 fits
    split = stratified_group_split(labels, groups, (0.9, 0.1, 0.0), n_classes=4, seed=0)
    assert _per_class(split, labels, 3)[2] == [1, 1, 0]
    assert [c for c, _, _ in split_shortfalls(labels, groups, split, (0.9, 0.1, 0.0),
                                              n_classes=4)] == [3, 3]


def test_near_duplicate_groups_count_as_one_item_for_the_shortfall():
    labels = np.array([0] * 20 + [1] * 4)
    groups = np.concatenate([np.arange(20), [100, 100, 101, 101]])  # 4 items, 2 groups
    split = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=2, seed=1)
    short = split_shortfalls(labels, groups, split, (0.8, 0.1, 0.1), n_classes=2)
    assert [(c, s) for c, s, _ in short] == [(1, 1), (1, 2)]  # both groups stay in train
    assert short[0][2] == ("4 items in only 2 near-duplicate groups, for 3 splits (a group "
                           "stays in one split)")


def test_splits_are_never_empty_when_there_are_enough_groups():
    labels = np.repeat(np.arange(5), 2)  # every class too small, 10 groups
    split = stratified_group_split(labels, np.arange(10), (0.8, 0.1, 0.1), n_classes=5)
    assert np.bincount(split, minlength=3).min() >= 1
    # fewer groups than splits: the earlier splits are filled, train never emptied
    split = stratified_group_split([0, 1], [0, 1], (0.8, 0.1, 0.1), n_classes=2)
    assert np.bincount(split, minlength=3).tolist() == [1, 1, 0]
    assert stratified_group_split([1], [0], (0.8, 0.1, 0.1), n_classes=2).tolist() == [0]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 80), k=st.integers(1, 6),
       frac=st.sampled_from([(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.7, 0.3, 0.0), (0.5, 0, 0.5)]))
def test_every_class_with_enough_groups_reaches_every_split(seed, n, k, frac):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    groups = labels * 1000 + rng.integers(0, max(1, n // 3), n)  # groups of one class
    split = stratified_group_split(labels, groups, frac, n_classes=k, seed=seed)
    usable = [s for s in range(3) if frac[s] > 0]
    for g in np.unique(groups):
        assert len(np.unique(split[groups == g])) == 1
    if len(np.unique(groups)) >= len(usable):
        assert all((split == s).any() for s in usable)
    missing = [(c, s) for c in range(k) for s in usable if not (split[labels == c] == s).any()]
    for c, _ in missing:
        assert len(np.unique(groups[labels == c])) < len(usable)
    short = split_shortfalls(labels, groups, split, frac, n_classes=k)
    assert [(c, s) for c, s, _ in short] == missing


def test_groups_spanning_classes_still_leave_no_split_empty():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 12)
    groups = rng.integers(0, 4, 12)  # 4 groups, mixed classes
    split = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=3, seed=2)
    assert np.bincount(split, minlength=3).min() >= 1


def test_large_splits_are_the_greedy_pass_unchanged(monkeypatch):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 3000)
    labels[:4] = 6  # and one class of 4 items, which the greedy pass gives 3/1/0
    groups = np.concatenate([np.arange(4), rng.integers(10, 2500, 2996)])
    split = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=7, seed=4)
    monkeypatch.setattr(splits_module, "_cover", lambda *args: None)
    greedy = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), n_classes=7, seed=4)
    assert _per_class(greedy, labels, 7)[6] == [3, 1, 0]
    assert _per_class(split, labels, 7)[6] == [2, 1, 1]
    moved = np.flatnonzero(split != greedy)
    assert len(moved) == 1 and labels[moved[0]] == 6  # the one move the small class needs


def test_shares_match_sklearn_stratified_shuffle_split_within_one_per_class():
    from sklearn.model_selection import StratifiedShuffleSplit

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), [400, 150, 60, 25, 9])
    rng.shuffle(labels)
    split = stratified_group_split(labels, np.arange(len(labels)), (0.8, 0.2, 0.0),
                                   n_classes=5, seed=0)
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    _, test_idx = next(sss.split(np.zeros(len(labels)), labels))
    for c in range(5):
        ours = int(((split == 1) & (labels == c)).sum())
        assert abs(ours - int((labels[test_idx] == c).sum())) <= 1, c
    # three shares: each class within one item of n * share
    split = stratified_group_split(labels, np.arange(len(labels)), (0.7, 0.15, 0.15),
                                   n_classes=5, seed=0)
    for c, n in enumerate([400, 150, 60, 25, 9]):
        got = np.bincount(split[labels == c], minlength=3)
        assert np.all(np.abs(got - n * np.array([0.7, 0.15, 0.15])) <= 1), (c, got)


# --- balance ----------------------------------------------------------------------------


def test_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = ["a"] * 7 + ["b"] * 2 + ["c"] * 3
    w = class_weights(y)
    assert list(w) == ["a", "b", "c"]
    expected = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=np.array(y))
    assert np.allclose(list(w.values()), expected)


def test_oversample_cycles_sources_evenly_and_undersample_cuts():
    ids = list(range(10))
    labels = ["a"] * 7 + ["b"] * 3
    plan = balance_train(ids, labels, mode="oversample", seed=0)
    assert len(plan.copies) == 4 and {c.source for c in plan.copies} == {7, 8, 9}
    used = np.bincount([c.source for c in plan.copies], minlength=10)[7:]
    assert sorted(used.tolist()) == [1, 1, 2]
    assert sorted(c.index for c in plan.copies if c.source == int(7 + used.argmax())) == [1, 2]
    plan = balance_train(ids, labels, mode="undersample", seed=0)
    assert len(plan.dropped) == 4 and set(plan.dropped) <= set(range(7))
    assert balance_train(ids, labels, mode="none").copies == []
    with pytest.raises(UnknownNameError, match="oversample"):
        balance_train(ids, labels, mode="smote")


def test_augment_ops_are_deterministic_and_apply_as_recorded():
    ops = augment_ops(0, 5, 1)
    assert ops == augment_ops(0, 5, 1) and ops != augment_ops(0, 5, 2)
    assert [o["name"] for o in ops][-4:] == ["rotate", "brightness", "contrast", "saturation"]
    img = _noise_image(4)
    assert np.array_equal(np.asarray(apply_ops(img, [{"name": "hflip", "value": None}])),
                          np.asarray(img)[:, ::-1])
    bright = apply_ops(img, [{"name": "brightness", "value": 0.5}])
    assert np.abs(np.asarray(bright, dtype=int) - np.asarray(img, dtype=int) // 2).max() <= 1
    gray = apply_ops(img.convert("L"), ops)
    assert gray.mode == "L" and gray.size == img.size


# --- images --------------------------------------------------------------------------------


def test_fit_pad_letterboxes_and_crop_fills():
    img = Image.new("RGB", (40, 20), (200, 100, 50))
    pad = np.asarray(fit_image(img, 20, "pad"))
    assert pad.shape == (20, 20, 3)
    assert (pad[:4] == 0).all() and (pad[-4:] == 0).all() and (pad[10] == (200, 100, 50)).all()
    crop = np.asarray(fit_image(img, 20, "crop"))
    assert crop.shape == (20, 20, 3) and (crop == (200, 100, 50)).all()
    assert fit_image(img.convert("L"), 8, "pad").mode == "L"
    assert fit_image(img.convert("RGBA"), 8, "crop").mode == "RGB"


def test_pixel_stats_match_numpy_over_mixed_images():
    imgs = [_noise_image(7, (10, 6)), _noise_image(8, (5, 9)).convert("L")]
    stats = PixelStats()
    for img in imgs:
        stats.add(img)
    p = np.concatenate([np.asarray(i.convert("RGB")).reshape(-1, 3) / 255.0 for i in imgs])
    d = stats.to_dict()
    assert d["pixels"] == len(p)
    assert np.allclose(d["mean"], p.mean(axis=0), atol=1e-6)
    assert np.allclose(d["std"], p.std(axis=0), atol=1e-6)
    assert PixelStats().to_dict()["mean"] is None


def test_class_dirs_are_safe_and_distinct():
    dirs = class_dirs(["cat", "a/b", "a b", "..", "Cat", "ünï"])
    assert dirs["cat"] == "cat" and dirs[".."] == "class"
    assert all("/" not in d and d not in (".", "..") for d in dirs.values())
    assert len({d.lower() for d in dirs.values()}) == len(dirs)


# --- files ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_checksums_verify_with_sha256sum(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x y.txt").write_text("hello")
    (tmp_path / "a.bin").write_bytes(bytes(range(256)))
    write_checksums(tmp_path)
    lines = (tmp_path / "checksums.sha256").read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == ["a.bin", "b/x y.txt"]
    res = subprocess.run(["sha256sum", "-c", "--strict", "checksums.sha256"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "a.bin").write_bytes(b"tampered")
    res = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0


def test_atomic_folder_renames_on_success_and_cleans_up_on_error(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(ValueError), atomic_folder(out) as tmp:
        (tmp / "x").write_text("partial")
        raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(out) as tmp:
        (tmp / "x").write_text("done")
    assert (out / "x").read_text() == "done" and (out / "checksums.sha256").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
