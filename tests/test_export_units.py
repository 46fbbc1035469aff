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
from alearn.export.balance import apply_ops, augment_ops, balance_train, class_weights
from alearn.export.dataset import class_dirs
from alearn.export.files import atomic_folder, write_checksums
from alearn.export.images import PixelStats, fit_image
from alearn.export.splits import near_duplicate_groups, parse_split, phash, stratified_group_split

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
