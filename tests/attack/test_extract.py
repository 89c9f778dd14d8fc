"""Extraction on constructed generations: noisy copies of some training images among unrelated ones."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from attack.extract import extract


def test_exactly_the_copied_images_are_extracted_with_their_k():
    rng = np.random.default_rng(0)
    n_train = 80
    # smooth random training images at 16x16 (upsampled 4x4 noise): realistic neighbourhood distances
    small = rng.random((n_train, 4, 4, 3))
    train = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)
    train = (np.clip(train, 0, 1) * 255).astype(np.uint8)
    keys = [f"img{i:03d}" for i in range(n_train)]
    k = np.ones(n_train, dtype=int)
    k[[3, 10, 11]] = [40, 7, 2]
    copied = [3, 10, 11, 50]  # 50 is a singleton that gets copied too
    gens, prompts = [], []
    for i in copied:  # two near-verbatim generations of each copied image
        for _ in range(2):
            noisy = train[i].astype(float) + rng.normal(0, 1.0, train[i].shape)
            gens.append(np.clip(noisy, 0, 255).astype(np.uint8))
            prompts.append(f"prompt {i}")
    unrelated = (rng.random((30, 16, 16, 3)) * 255).astype(np.uint8)  # noise: near nothing
    gens.extend(unrelated)
    prompts.extend(["noise"] * len(unrelated))
    ex = extract(np.stack(gens), prompts, train, keys, k)

    col = "extracted[calibrated<=1/3]"
    extracted = ex.images.filter(pl.col(col)).sort("index")
    assert extracted["index"].to_list() == copied
    assert extracted["k"].to_list() == [40, 7, 2, 1]
    assert extracted["times_nearest"].min() >= 2
    counts = ex.counts()["by_criterion"]["calibrated<=1/3"]
    assert counts == {"total": 4, "1": 1, "2-4": 1, "5-19": 1, "20+": 1}  # unique images, not generations
    gen = ex.generations
    assert gen.filter(pl.col("prompt") == "noise")[col].sum() == 0
    assert (gen["tiled_l2"] >= gen["l2"] - 1e-9).all()
    # the per-image table agrees with the per-generation table
    for row in extracted.iter_rows(named=True):
        best = gen.filter(pl.col("generation") == row["best_generation"])
        assert best["nearest_index"][0] == row["index"] and best["calibrated"][0] == row["best_calibrated"]
    assert ex.settings["neighbours_used"] == 50 and ex.settings["alpha"] == 0.5


def test_small_reference_sets_say_they_used_every_image():
    rng = np.random.default_rng(1)
    train = (rng.random((10, 16, 16, 3)) * 255).astype(np.uint8)
    ex = extract(train[:2], ["a", "b"], train, [str(i) for i in range(10)], np.ones(10, dtype=int))
    assert ex.settings["neighbours_used"] == 9 and "all 9 others" in ex.settings["note"]
    assert ex.generations["l2"].to_list() == [0.0, 0.0]


def test_prompt_list_weights_duplicated_captions():
    from attack.compare import prompts_for
    from attack.config import AttackConfig
    from attack.data import AttackSets, ImageSet

    images = np.zeros((3, 4, 4, 3), np.uint8)
    ref = ImageSet(images, ["a", "b", "c"], ["one copy", "twenty copies", "two copies"])
    sets = AttackSets(ref, ref, ref, np.array([1, 20, 2]), "")
    prompts = prompts_for(sets, AttackConfig(duplicated_prompt_repeats=3))
    assert sorted(prompts) == sorted(["one copy"] + ["twenty copies"] * 3 + ["two copies"] * 3)
    assert prompts_for(sets, AttackConfig(conditional=False)) is None


class _Payload:
    """Unpickling this would touch a file: the test checks that it never happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_generations_file_with_a_pickle_is_refused_without_running_it(tmp_path, cli):
    marker = tmp_path / "pwned"
    path = tmp_path / "gens.npz"
    images = np.zeros((2, 16, 16, 3), np.uint8)
    np.savez(path, images=images, prompts=np.array([_Payload(str(marker)), "b"], dtype=object))
    r = cli("attack", "extract", str(path), "--train", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "pickled objects" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_generations_round_trip_as_plain_arrays(tmp_path):
    from attack.sample import load_generations

    path = tmp_path / "g.npz"
    np.savez(path, images=np.ones((3, 8, 8, 3), np.uint8), prompts=np.array(["a", "b", "c"], dtype=str))
    images, prompts = load_generations(path)
    assert images.shape == (3, 8, 8, 3) and prompts == ["a", "b", "c"]


def test_a_configured_calibrated_threshold_is_counted_not_only_named():
    rng = np.random.default_rng(1)
    train = (rng.random((20, 16, 16, 3)) * 255).astype(np.uint8)
    gens = np.clip(train[:4].astype(float) + rng.normal(0, 3, (4, 16, 16, 3)), 0, 255).astype(np.uint8)
    ex = extract(gens, ["p"] * 4, train, [f"k{i}" for i in range(20)], np.ones(20, int), threshold=0.42)
    assert "extracted[calibrated<=0.42]" in ex.generations.columns
    assert "0.42" in ex.settings["calibrated_thresholds"] and ex.settings["primary_threshold"] == "0.42"
    counted = ex.generations["extracted[calibrated<=0.42]"].to_numpy()
    assert (counted == (ex.generations["calibrated"].to_numpy() <= 0.42)).all()


def test_counts_and_continuous_signals_match_a_brute_force_recount():
    """Every number counts() reports, recomputed from the per-generation table by plain loops."""
    from attack.distance import calibrated_l2, l2, neighbourhood_l2
    from attack.extract import BUCKETS, bucket_of, extract

    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, size=(8, 8, 8, 3), dtype=np.uint8)
    k = np.array([1, 1, 2, 4, 5, 19, 20, 60])
    noise = [0, 2, 40, 3, 90, 1, 5, 140]  # some near copies, some far from every training image
    picks = [0, 2, 2, 3, 5, 6, 6, 7, 7, 4]
    gens = np.stack(
        [
            np.clip(ref[i].astype(int) + rng.integers(-noise[i], noise[i] + 1, ref[i].shape), 0, 255)
            for i in picks
        ]
    ).astype(np.uint8)
    ex = extract(gens, [f"p{i}" for i in range(len(gens))], ref, [f"r{i}" for i in range(8)], k)
    got = ex.counts()
    neigh, _ = neighbourhood_l2(ref, 50)
    g = ex.generations
    assert g["nearest_index"].to_list() == [min(range(8), key=lambda j: float(l2(x, ref[j]))) for x in gens]
    cal = [
        float(calibrated_l2(l2(x, ref[j]), neigh[j])) for x, j in zip(gens, g["nearest_index"], strict=True)
    ]
    assert np.allclose(g["calibrated"].to_numpy(), cal)
    for name, t in (("calibrated<=1/3", 1 / 3), ("calibrated<=0.5", 0.5), ("calibrated<=1.0", 1.0)):
        hit = {j for j, c in zip(g["nearest_index"], cal, strict=True) if c <= t}
        want = {b: sum(1 for j in hit if bucket_of(int(k[j])) == b) for b, _, _ in BUCKETS}
        assert got["by_criterion"][name] == {"total": len(hit), **want}, name
    near = g["nearest_index"].to_list()
    cont = got["continuous"]
    assert cont["generations"] == len(gens)
    assert cont["share_nearest_duplicated"] == round(sum(k[j] > 1 for j in near) / len(gens), 4)
    for b, _, _ in BUCKETS:
        members = [j for j in range(8) if bucket_of(int(k[j])) == b]
        assert cont["images_by_bucket"][b] == len(members)
        assert cont["images_hit_by_bucket"][b] == len({j for j in near if j in members})
        assert cont["share_nearest_by_bucket"][b] == round(sum(j in members for j in near) / len(gens), 4)
        best = [min(c for c, j in zip(cal, near, strict=True) if j == m) for m in members if m in near]
        want = None if not best else round(float(np.median(best)), 4)
        got_median = cont["median_best_calibrated_by_bucket"][b]
        assert (got_median is None and want is None) or got_median == pytest.approx(want, abs=1e-4), b
    assert cont["min_calibrated"] == pytest.approx(round(min(cal), 4), abs=1e-4)
    images = ex.images.sort("index")
    assert images["times_nearest"].to_list() == [near.count(j) for j in range(8)]


def test_duplicate_count_buckets_at_their_edges():
    """attack.md §4's buckets: 1, 2-4, 5-19, 20+."""
    from attack.extract import bucket_of

    edges = {1: "1", 2: "2-4", 4: "2-4", 5: "5-19", 19: "5-19", 20: "20+", 10_000: "20+"}
    assert {k: bucket_of(k) for k in edges} == edges


def _near_copies(rng, ref, picks, noise=2):
    return np.stack(
        [np.clip(ref[i].astype(int) + rng.integers(-noise, noise + 1, ref[i].shape), 0, 255) for i in picks]
    ).astype(np.uint8)


def test_defaults_are_the_papers_and_reported_numbers_have_four_digits():
    from attack.distance import NEIGHBOURS

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, size=(NEIGHBOURS + 1, 8, 8, 3), dtype=np.uint8)  # just enough: no note
    k = np.ones(len(ref), dtype=int)
    k[0] = 3
    gens = _near_copies(rng, ref, [0, 1, 2])
    ex = extract(gens, ["a", "b", "c"], ref, [f"r{i}" for i in range(len(ref))], k)
    assert ex.settings["primary_threshold"] == "1/3"
    assert ex.settings["calibrated_thresholds"] == ["1/3", "0.5", "1.0"]
    assert ex.settings["neighbours_used"] == NEIGHBOURS and "note" not in ex.settings
    cont = ex.counts()["continuous"]
    assert cont["share_nearest_duplicated"] == 0.3333  # 1 of 3, four digits
    assert cont["share_nearest_by_bucket"] == {"1": 0.6667, "2-4": 0.3333, "5-19": 0.0, "20+": 0.0}
    cal = ex.generations["calibrated"].to_list()
    assert cont["min_calibrated"] == round(min(cal), 4)
    assert cont["median_best_calibrated_by_bucket"]["2-4"] == round(cal[0], 4)
    # one generation: shares are of one, not of a floor of two
    one = extract(gens[:1], ["a"], ref, [f"r{i}" for i in range(len(ref))], k).counts()["continuous"]
    assert one["share_nearest_duplicated"] == 1.0


def test_the_small_reference_note_names_the_paper_neighbourhood_size():
    rng = np.random.default_rng(1)
    train = (rng.random((10, 16, 16, 3)) * 255).astype(np.uint8)
    ex = extract(train[:1], ["a"], train, [str(i) for i in range(10)], np.ones(10, dtype=int))
    assert ex.settings["note"] == "fewer than 51 training images: the neighbourhood uses all 9 others"


def test_mismatched_shapes_are_named():
    ref = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^generations are \(8, 8, 3\) but training images \(16, 16, 3\)$"):
        extract(np.zeros((1, 8, 8, 3), np.uint8), ["a"], ref, ["a", "b", "c"], np.ones(3, int))


def test_both_criteria_are_inclusive_at_their_threshold(monkeypatch):
    import attack.extract as extract_module

    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    gens = _near_copies(rng, ref, [0, 1], noise=30)
    keys, k = [f"r{i}" for i in range(12)], np.ones(12, int)
    first = extract(gens, ["a", "b"], ref, keys, k)
    at = float(first.generations["calibrated"][0])
    ex = extract(gens, ["a", "b"], ref, keys, k, threshold=at)
    assert ex.generations[f"extracted[calibrated<={at:g}]"][0] is True
    plain = float(first.generations["l2"][0])
    monkeypatch.setattr(extract_module, "DELTA", plain)
    ex = extract_module.extract(gens, ["a", "b"], ref, keys, k)
    assert ex.generations[f"extracted[l2<={plain:g}]"][0] is True


def test_a_generation_that_copies_a_variant_extracts_its_group_not_only_a_representative_copy():
    """#26 item 7: a mirrored copy in the before set is searched too and counts for its group."""
    rng = np.random.default_rng(1)
    small = rng.random((60, 4, 4, 3))
    train = (np.repeat(np.repeat(small, 4, axis=1), 4, axis=2) * 255).astype(np.uint8)
    keys = [f"img{i:03d}" for i in range(60)]
    k = np.ones(60, dtype=int)
    k[7] = 2
    mirrored = train[7][:, ::-1]  # image 7's second copy in the before set is its mirror
    gens = np.stack([mirrored, mirrored])
    only_reps = extract(gens, ["p", "p"], train, keys, k)
    assert not only_reps.images["extracted[calibrated<=1/3]"].any()  # the mirror is not a representative
    variants = np.concatenate([train, mirrored[None]])
    variant_of = np.concatenate([np.arange(60), [7]])
    ex = extract(gens, ["p", "p"], train, keys, k, variants=variants, variant_of=variant_of)
    hit = ex.images.filter(pl.col("extracted[calibrated<=1/3]"))
    assert hit["index"].to_list() == [7] and hit["k"].to_list() == [2]
    assert ex.images.filter(pl.col("index") == 7)["closest_l2"][0] == pytest.approx(0.0)
    assert ex.generations["nearest_index"].to_list() == [7, 7]
    assert ex.settings["searched_variants"] == 61
    # the calibration still runs over unique images: adding the variant does not change any score's scale
    assert ex.images["neighbourhood_l2"].to_list() == only_reps.images["neighbourhood_l2"].to_list()
