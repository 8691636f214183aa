"""Captioned Fashion-MNIST (common.captions): every caption is true of its image, checked from the pixels.

The captions are parsed here by a regular expression written from the grammar in the module docstring
(not by common.captions.parse_caption), and each claim is checked on the image itself: the class against
the Fashion-MNIST label file, the size from the ink's bounding box, the position from the bounding box and
the centre of mass, the contrast from the brightest pixel, and the rotation by rebuilding the image from
the original with numpy (np.rot90, a 2x2 mean) and comparing it with the rotation stated and the two not.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from common import captions, data

CLASS_WORDS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
PHRASES = {"at the top": "top", "at the bottom": "bottom", "on the left": "left", "on the right": "right",
           "in the centre": "centre"}
GRAMMAR = re.compile(r"^(a|an) (" + "|".join(CLASS_WORDS) + r"), (large|small)(?:, rotated (left|right))?"
                     r"(, faint)?(?:, (" + "|".join(PHRASES) + r"))?$")
ROTATION_TURNS = {None: 0, "left": 1, "right": -1}     # numpy's rot90: k=1 is anticlockwise


def parse(text):
    match = GRAMMAR.match(text)
    assert match, f"not a caption of the grammar: {text!r}"
    article, word, size, rotation, faint, phrase = match.groups()
    assert article == ("an" if word == "ankle boot" else "a"), text
    assert (phrase is not None) == (size == "small"), f"a position is stated if and only if small: {text!r}"
    return {"label": CLASS_WORDS.index(word), "size": size, "rotation": rotation, "faint": faint is not None,
            "position": PHRASES.get(phrase)}


@pytest.fixture(scope="module")
def splits():
    return {"val": captions.captioned_fashion_mnist("val", normalize=False),
            "test": captions.captioned_fashion_mnist("test", normalize=False),
            "train": captions.captioned_fashion_mnist("train", limit=6000, normalize=False)}


@pytest.fixture(scope="module")
def full_train():
    return captions.captioned_fashion_mnist("train", normalize=False)


def ink_geometry(images):
    """Per image (N, 28, 28): first and one-past-last inked row and column, centre of mass (pixel centres
    at i + 0.5), measured on the image alone."""
    coords = torch.arange(28, dtype=torch.float64)
    images = images.double()
    out = {}
    for axis, mass in (("row", images.sum(2)), ("col", images.sum(1))):
        inked = mass > 0
        out[f"{axis}_first"] = torch.where(inked, coords, 99.0).amin(1)
        out[f"{axis}_last"] = torch.where(inked, coords, -1.0).amax(1) + 1
        out[f"{axis}_com"] = (mass * (coords + 0.5)).sum(1) / mass.sum(1)
    return out


def position_claims(geometry):
    """Each position word's claim, as documented, evaluated on the image: (N,) bool per word."""
    mid = lambda com: (com - 14).abs() <= 0.5 + 1e-6
    g = geometry
    return {
        "top": (g["row_first"] == 0) & (g["row_last"] <= 14) & mid(g["col_com"]),
        "bottom": (g["row_last"] == 28) & (g["row_first"] >= 14) & mid(g["col_com"]),
        "left": (g["col_first"] == 0) & (g["col_last"] <= 14) & mid(g["row_com"]),
        "right": (g["col_last"] == 28) & (g["col_first"] >= 14) & mid(g["row_com"]),
        "centre": mid(g["row_com"]) & mid(g["col_com"]),
    }


@pytest.mark.parametrize("name", ["val", "test", "train"])
def test_every_caption_is_true_of_its_image_by_its_pixels(splits, full_train, name):
    split = full_train if name == "train" else splits[name]        # all 70,000 images
    images = split.images[:, 0]                                                     # (N, 28, 28)
    parsed = [parse(text) for text in split.captions]
    # class: the label file says so (the captioned images are the split's images, in its order)
    assert [p["label"] for p in parsed] == split.labels.tolist()
    reference = data.fashion_mnist(name, limit=len(split), normalize=False)[1]
    assert torch.equal(split.labels, reference)
    # contrast: the brightest pixel is white, or FAINT
    brightest = images.amax((1, 2))
    faint = torch.tensor([p["faint"] for p in parsed])
    torch.testing.assert_close(brightest, torch.where(faint, 0.35, 1.0))
    assert images.min() >= 0
    # size: a small object's ink fits in 14x14, a large one spans at least 20 pixels
    g = ink_geometry(images)
    extent_r, extent_c = g["row_last"] - g["row_first"], g["col_last"] - g["col_first"]
    small = torch.tensor([p["size"] == "small" for p in parsed])
    assert (extent_r[small] <= 14).all() and (extent_c[small] <= 14).all()
    assert (torch.maximum(extent_r, extent_c)[~small] >= 20).all()
    # position: the stated claim holds, and no other position's claim does
    claims = position_claims(g)
    for word, holds in claims.items():
        stated = torch.tensor([p["position"] == word for p in parsed])
        assert stated.any(), f"no {word!r} image in {name}"
        assert holds[stated].all(), f"{int((~holds[stated]).sum())} images said {word!r} are not"
        assert not holds[small & ~stated].any(), f"small images not said {word!r} look {word!r}"
    # large images stay where Fashion-MNIST put them (not pressed to an edge)
    assert (g["row_first"][~small] > 0).float().mean() > 0.5


@pytest.mark.parametrize("name", ["val", "test", "train"])
def test_rotation_and_size_by_rebuilding_from_the_original(splits, name):
    # numpy's convention, which "rotated left" means: the top-right corner goes to the top left (anticlockwise)
    assert np.rot90(np.array([[1, 2], [3, 4]])).tolist() == [[2, 4], [1, 3]]
    split = splits[name]
    raw_file = data.load_raw("test" if name == "test" else "trainval")[0].numpy().astype(np.float64) / 255
    count = 1200
    for i in range(count):
        text, image = split.captions[i], split.images[i, 0].double().numpy()
        claim = parse(text)
        original = raw_file[int(split.attributes["index"][i])]

        def rebuilt(rotation):
            candidate = np.rot90(original, ROTATION_TURNS[rotation])
            if claim["size"] == "small":
                candidate = candidate.reshape(14, 2, 14, 2).mean(axis=(1, 3))
            return candidate * ((0.35 if claim["faint"] else 1.0) / candidate.max())

        def ink_crop(picture):
            rows, cols = np.nonzero(picture)
            return picture[rows.min():rows.max() + 1, cols.min():cols.max() + 1]

        matches = {}
        for rotation in ROTATION_TURNS:
            candidate = rebuilt(rotation)
            a, b = ink_crop(image), ink_crop(candidate)
            matches[rotation] = a.shape == b.shape and np.allclose(a, b, atol=1e-6)
        assert matches[claim["rotation"]], f"{name} {i}: {text!r} is not the original transformed so"
        assert sum(matches.values()) == 1, f"{name} {i}: {text!r} also matches another rotation"
        if claim["size"] == "large":       # not moved either: the whole image equals the rebuilt one
            np.testing.assert_allclose(image, rebuilt(claim["rotation"]), atol=1e-6)


def test_attributes_agree_with_captions_and_parse_caption(splits):
    split = splits["val"]
    attributes = split.attributes
    for i in range(0, len(split), 7):
        mine, theirs = parse(split.captions[i]), captions.parse_caption(split.captions[i])
        assert theirs["label"] == mine["label"] == int(attributes["label"][i])
        assert captions.SIZES[theirs["size"]] == mine["size"] == captions.SIZES[int(attributes["size"][i])]
        assert theirs["position"] == int(attributes["position"][i])
        assert (mine["position"] is None) == (theirs["position"] == -1)
        if mine["position"] is not None:
            assert captions.POSITIONS[theirs["position"]] == mine["position"]
        assert captions.ROTATIONS[theirs["rotation"]] == (mine["rotation"] or "none")
        assert theirs["rotation"] == int(attributes["rotation"][i])
        assert theirs["contrast"] == int(mine["faint"]) == int(attributes["contrast"][i])
        assert theirs["combo"] == int(attributes["combo"][i])
        assert captions.CAPTIONS[theirs["combo"]] == split.captions[i]


def test_grammar_counts_and_combination_ids():
    assert len(captions.CAPTIONS) == len(set(captions.CAPTIONS)) == captions.NUM_COMBINATIONS == 360
    for combo, text in enumerate(captions.CAPTIONS):
        parse(text)
        assert captions.parse_caption(text)["combo"] == combo
    assert captions.caption("sandal", "small", "top", "left", "normal") == "a sandal, small, rotated left, at the top"
    assert captions.caption(9, 0, None, 2, 1) == "an ankle boot, large, rotated right, faint"
    assert captions.combination("ankle boot", "large", -1, "right", "faint") == ((9 * 6 + 0) * 3 + 2) * 2 + 1 == 329
    assert max(len(re.findall(r",|[^\s,]+", t)) for t in captions.CAPTIONS) + 2 == captions.CONTEXT_LENGTH == 16


def test_draws_are_deterministic_per_seed_and_ignore_the_global_generator(splits):
    torch.manual_seed(123)
    again = captions.captioned_fashion_mnist("val", normalize=False)
    assert again.captions == splits["val"].captions and torch.equal(again.images, splits["val"].images)
    assert all(torch.equal(again.attributes[k], v) for k, v in splits["val"].attributes.items())
    before = torch.get_rng_state()
    other = captions.captioned_fashion_mnist("val", seed=1, normalize=False)
    assert torch.equal(torch.get_rng_state(), before), "torch's global generator must not be used"
    differ = sum(a != b for a, b in zip(other.captions, again.captions))
    assert differ > 0.9 * len(other), "another seed draws other captions"
    assert torch.equal(other.labels, again.labels)
    # limit keeps a prefix with the same draws; trainval's train images read as in "train"
    head = captions.captioned_fashion_mnist("val", limit=50, normalize=False)
    assert head.captions == again.captions[:50] and torch.equal(head.images, again.images[:50])
    normalised = captions.captioned_fashion_mnist("val", limit=50)
    torch.testing.assert_close(normalised.images, (head.images - data.MEAN) / data.STD)


def test_shapes_dtypes_and_split_sizes(splits, full_train):
    assert len(full_train) == 55000 and len(splits["val"]) == 5000 and len(splits["test"]) == 10000
    for split in list(splits.values()) + [full_train]:
        n = len(split)
        assert split.images.shape == (n, 1, 28, 28) and split.images.dtype == torch.float32
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
        assert len(split.captions) == n and all(isinstance(c, str) for c in split.captions)
        assert set(split.attributes) == {"label", "size", "position", "rotation", "contrast", "combo",
                                         "held_out", "index"}
        for name, value in split.attributes.items():
            assert value.shape == (n,) and value.dtype == (torch.bool if name == "held_out" else torch.int64)
    assert torch.equal(splits["train"].images, full_train.images[:6000])
    # every layout, rotation and contrast is about equally frequent in training
    combos = full_train.attributes["combo"]
    for name, values in (("size", 2), ("rotation", 3), ("contrast", 2)):
        counts = torch.bincount(full_train.attributes[name], minlength=values).double()
        if name == "size":
            counts = counts / torch.tensor([1.0, 5.0])            # small = five layouts
        assert counts.min() > 0.9 * counts.max(), (name, counts)
    assert torch.unique(combos).numel() == 300


def test_held_out_combinations_never_reach_training(splits, full_train):
    held_out = captions.HELD_OUT
    assert held_out.shape == (360,) and int(held_out.sum()) == 60
    held_texts = {captions.CAPTIONS[i] for i in held_out.nonzero().flatten().tolist()}
    assert not held_texts & set(full_train.captions) and not full_train.attributes["held_out"].any()
    trainval = captions.captioned_fashion_mnist("trainval", normalize=False)
    assert not held_texts & set(trainval.captions)
    in_val = torch.zeros(60000, dtype=torch.bool)
    in_val[data.val_indices()] = True
    # trainval = train as drawn for "train", val as drawn for "val" where that is not held out
    assert [trainval.captions[i] for i in (~in_val).nonzero().flatten().tolist()] == full_train.captions
    val = splits["val"]
    kept = (~val.attributes["held_out"]).nonzero().flatten()
    val_in_trainval = in_val.nonzero().flatten()
    assert all(trainval.captions[int(val_in_trainval[i])] == val.captions[i] for i in kept.tolist())
    for name in ("val", "test"):
        split = splits[name]
        fraction = split.attributes["held_out"].float().mean().item()
        assert 0.14 < fraction < 0.20, f"about one in six {name} captions is held out, got {fraction:.3f}"
        seen = {captions.CAPTIONS[i] for i in torch.unique(split.attributes["combo"]).tolist()}
        assert held_texts <= seen, f"every held-out caption occurs in {name}"
        retrieval = captions.held_out_set(name, normalize=False)
        assert len(retrieval) == int(split.attributes["held_out"].sum())
        assert set(retrieval.captions) <= held_texts
        assert torch.equal(retrieval.images, split.images[split.attributes["held_out"]])


def test_every_pair_of_attribute_values_occurs_in_training(full_train):
    names = ("label", "size", "position", "rotation", "contrast")
    table = torch.stack([full_train.attributes[n] for n in names], 1).tolist()
    seen = {(i, j, row[i], row[j]) for row in table for i in range(5) for j in range(i + 1, 5)}
    every = {(i, j, a, b) for row in (captions.parse_caption(t) for t in captions.CAPTIONS)
             for i in range(5) for j in range(i + 1, 5) for a, b in [(row[names[i]], row[names[j]])]}
    assert every <= seen, f"pairs of values never seen in training: {sorted(every - seen)[:5]}"


def test_tokenizer_round_trip_and_format():
    texts = list(captions.CAPTIONS) + sum(captions.prompts(), [])
    tokens = captions.tokenize(texts)
    assert tokens.shape == (len(texts), 16) and tokens.dtype == torch.int64
    assert captions.decode(tokens) == texts and captions.decode(tokens[5]) == texts[5]
    start, end = captions.VOCAB.index(captions.START), captions.VOCAB.index(captions.END)
    assert (tokens[:, 0] == start).all() and end == len(captions.VOCAB) - 1 == int(tokens.max())
    lengths = (tokens != 0).sum(1)
    assert torch.equal(tokens.argmax(-1), lengths - 1), "argmax finds the end token (open_clip's pooling)"
    assert all((row[n:] == 0).all() for row, n in zip(tokens, lengths.tolist()))
    assert torch.equal(captions.tokenize("A Sandal, LARGE"), captions.tokenize(["a sandal, large"]))
    assert captions.tokenize("a bag", context_length=40).shape == (1, 40)
    assert captions.tokenize([]).shape == (0, 16)
    # the vocabulary is exactly the grammar's words, each once
    used = {w for t in texts for w in re.findall(r",|[^\s,]+", t)}
    assert set(captions.VOCAB[2:-1]) == used and len(set(captions.VOCAB)) == len(captions.VOCAB) == 30


def test_prompts():
    table = captions.prompts()
    assert len(table) == 10 and all(len(row) == len(captions.TEMPLATES) for row in table)
    assert table[9][0] == "an ankle boot" and table[5][2] == "a sandal, small, at the top"
    assert captions.prompts("a {c}")[1] == ["a trouser"]


@pytest.mark.parametrize("call, message", [
    (lambda: captions.captioned_fashion_mnist("validation"), r"split must be one of .*'val'.*got 'validation'"),
    (lambda: captions.captioned_fashion_mnist("val", limit=0), r"limit must be None .* positive int, got 0"),
    (lambda: captions.captioned_fashion_mnist("val", limit=2.5), r"positive int, got 2.5"),
    (lambda: captions.captioned_fashion_mnist("val", limit=True), r"positive int, got True"),
    (lambda: captions.captioned_fashion_mnist("val", limit=5001), r"limit=5001 is more than the 5,000 images"),
    (lambda: captions.captioned_fashion_mnist("val", seed="0"), r"seed must be an int, got '0'"),
    (lambda: captions.held_out_set("train"), r"only in split 'val' or 'test', got 'train'"),
    (lambda: captions.tokenize(captions.CAPTIONS[-1], context_length=15),
     r"needs 16 tokens with start and end, but context_length is 15; pass context_length >= 16"),
    (lambda: captions.tokenize(["a bag", "a hat"]), r"unknown word 'hat' in text 1 \('a hat'\).*'sandal'"),
    (lambda: captions.tokenize("a sandal."), r"unknown word 'sandal\.'"),
    (lambda: captions.tokenize("a <end>"), r"unknown word '<end>'"),
    (lambda: captions.tokenize([3]), r"expected str texts, got int at position 0"),
    (lambda: captions.tokenize("a bag", context_length=1), r"context_length must be an int >= 2"),
    (lambda: captions.decode(torch.tensor([1, 30])), r"token ids must lie in 0\.\.29"),
    (lambda: captions.decode(torch.zeros(2, 3, 4, dtype=torch.long)), r"expected integer token ids"),
    (lambda: captions.prompts(["a photo of a {}"]), r"slot \{c\}"),
    (lambda: captions.parse_caption("a hat, large"), r"'a hat, large' is not a caption of the grammar"),
    (lambda: captions.combination("sandal", "small", None, "none", "normal"), r"small object needs a position"),
    (lambda: captions.combination("hat", "large", None, "none", "normal"), r"label must be one of .*got 'hat'"),
    (lambda: captions.combination(0, 0, None, 3, 0), r"rotation must be one of .*index 0\.\.2, got 3"),
])
def test_bad_arguments_say_what_was_expected_and_what_came(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_select_checks_its_mask(splits):
    head = splits["val"].select(torch.arange(3))
    assert len(head) == 3 and head.captions == splits["val"].captions[:3]
    with pytest.raises(ValueError, match=r"mask must have shape \(5000,\), got \(3,\)"):
        splits["val"].select(torch.ones(3, dtype=torch.bool))


def test_no_builtin_layer_math_in_the_generator():
    from pathlib import Path

    from test_purity import violations

    source = Path(captions.__file__).read_text(encoding="utf-8")
    assert violations(source, "common/captions.py") == []
    assert "torchvision" not in source and "grid_sample" not in source


def test_attributes_read_back_from_pixels_agree_with_true_captions_and_catch_false_ones(splits):
    train, val = splits["train"], splits["val"]
    centres = captions.position_centres(train.images, train.attributes)
    assert centres.shape == (5, 2)
    assert centres[0, 0] < 10 < centres[1, 0] and centres[2, 1] < 10 < centres[3, 1]      # top/bottom, left/right
    truth = captions.attribute_agreement(val.images, val.attributes, centres)
    assert min(truth.values()) > 0.99, truth
    # the same images against shuffled captions: each attribute is right only about as often as chance allows
    # (five layouts in six are small, so size agrees by chance (5/6)^2 + (1/6)^2 = 72%; contrast 50%; position 20%)
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
    shuffled = {k: v[order] for k, v in val.attributes.items()}
    wrong = captions.attribute_agreement(val.images, shuffled, centres)
    assert wrong["size"] < 0.8 and wrong["contrast"] < 0.6 and wrong["position"] < 0.4, wrong
    # a hand-made image: a faint 6x6 square in the top-left corner is small, faint, and nearer top or left
    square = torch.zeros(1, 1, 28, 28)
    square[0, 0, :6, :6] = 0.3
    measured = captions.measure_attributes(square)
    assert measured["small"].item() and measured["faint"].item()
    torch.testing.assert_close(measured["centre"], torch.tensor([[3.0, 3.0]]))


def test_attribute_measurement_refuses_bad_images():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\), got \(2, 28, 28\)"):
        captions.measure_attributes(torch.zeros(2, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        captions.measure_attributes(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="got 2 images and attributes of 3"):
        captions.attribute_agreement(torch.zeros(2, 1, 28, 28), {"size": torch.zeros(3)}, torch.zeros(5, 2))
