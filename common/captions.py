"""Captioned Fashion-MNIST: real images, known transformations, and the caption that says what was done.

Stage 6 (CLIP, DALL-E 2, Stable Diffusion) needs images paired with text. This module makes them from
Fashion-MNIST itself: every image of a split gets a seeded, random *combination* of four attributes, the
image is transformed accordingly with plain tensor operations, and its caption states the class and the
attributes, e.g. ``"a sandal, small, rotated left, at the top"``. Because the generator knows what it did,
every caption is true of its image; ``tests/test_captions.py`` checks that from the pixels alone.

Attributes and what they do to the image (in this order):

* **rotation** ``none | left | right``: :func:`torch.rot90` of the whole 28x28 image, a quarter turn
  anticlockwise ("rotate left", as in an image editor) or clockwise. Exact (no resampling).
* **size** ``large | small``: ``large`` keeps the 28-pixel image (its ink spans 26-27 pixels);
  ``small`` scales it by 1/2 with a 2x2 box average (28x28 -> 14x14, so the ink spans at most 14 pixels),
  then places it on a black 28x28 canvas by an integer shift.
* **position** (``small`` only) ``top | bottom | left | right | centre``: ``at the top`` presses the
  object's ink against the top edge (all of it lies in the upper half) and shifts it sideways so that its
  centre of mass is within half a pixel of the vertical mid-line; ``bottom``, ``left``, ``right`` alike;
  ``in the centre`` puts the centre of mass within half a pixel of the image centre.
  (A centre-of-mass rule "in the upper third" cannot hold for every image at this scale: in some
  objects the centre of mass lies up to 11.8 pixels below the top of their ink, where 28/3 = 9.3 would do.)
* **contrast** ``normal | faint``: the image is scaled so that its brightest pixel is 1 (``normal``) or
  :data:`FAINT` = 0.35 (``faint``); all other pixels keep their ratio to it.

No horizontal flip: seven of the ten classes are mirror-symmetric garments, on which "flipped" would be a
caption no one could verify by looking.

Grammar (defaults are not spoken; commas separate the phrases)::

    caption  := article " " class ", " size [", rotated " (left|right)] [", faint"] [", " position]
    size     := "large" | "small"                 (a position follows if and only if the size is small)
    position := "at the top" | "at the bottom" | "on the left" | "on the right" | "in the centre"
    article  := "an" before "ankle boot", else "a"
    class    := t-shirt | trouser | pullover | dress | coat | sandal | shirt | sneaker | bag | ankle boot

Counts: 10 classes x 6 layouts (large, or small at one of 5 positions) x 3 rotations x 2 contrasts =
**360 distinct captions** (:data:`CAPTIONS`, in :func:`combination` order), 300 of them used in training
and 60 held out. The longest caption is 14 words and commas, 16 tokens with start and end
(:data:`CONTEXT_LENGTH`). "left" and "right" name both a rotation and a position: only word order tells
"rotated left, on the right" from "rotated right, on the left" (a bag-of-words text encoder cannot).

Held-out combinations (for retrieval and for generating from captions never seen). Combination
(class k, layout l, rotation r, contrast c) is held out when ``(k + l + 2r + 3c) % 6 == 0`` (layout 0 =
large, 1-5 = top, bottom, left, right, centre). For every class and layout exactly one of the six
(rotation, contrast) pairs is held out, and for every class, rotation and contrast exactly one layout,
so every attribute value and every *pair* of values (class with position, position with rotation, ...)
still occurs in training: a held-out caption is a new composition of known parts, not an unknown word.
This was chosen over "held-out images with their (already seen) captions" because it measures whether a
text encoder composes a caption from its words rather than recognising 300 memorised strings; the held-out
images come for free, since the held-out captions are drawn only on ``val`` and ``test`` images.

Splits are those of :mod:`common.data` (same images, same order):

* ``"train"`` (55,000): combinations drawn uniformly from the 30 training ones of each image's class;
* ``"val"`` (5,000) and ``"test"`` (10,000): drawn uniformly from all 36 of the class, so about one image
  in six has a held-out caption (``attributes["held_out"]``; :func:`held_out_set` keeps just those);
* ``"trainval"`` (60,000): the train images as in ``"train"``; the val images as in ``"val"`` except that
  a held-out draw is replaced by a training one, so training on it never shows a held-out caption.

Draws depend only on ``seed`` and the image's index in its file (a :class:`torch.Generator` seeded from
SHA-256 of the seed), never on torch's global generator or on ``limit``: the first ``limit`` images of a
split get the same captions as without ``limit``.

Tokens: :func:`tokenize` maps captions to word ids of the fixed :data:`VOCAB`, framed by a start and an
end token and padded with 0 to ``context_length``; the end token has the largest id, so open_clip's
``text.argmax(dim=-1)`` finds it, as it finds ``<end_of_text>`` in CLIP's BPE vocabulary.
"""
from __future__ import annotations

import hashlib
import re
from typing import NamedTuple, Optional, Sequence, Union

import torch

from . import data

__all__ = [
    "CLASS_WORDS", "SIZES", "POSITIONS", "ROTATIONS", "CONTRASTS", "FAINT", "SMALL_SIZE",
    "NUM_COMBINATIONS", "CAPTIONS", "HELD_OUT", "TEMPLATES", "VOCAB", "PAD", "START", "END",
    "CONTEXT_LENGTH", "Captioned", "caption", "combination", "parse_caption", "captioned_fashion_mnist",
    "held_out_set", "prompts", "tokenize", "decode", "measure_attributes", "position_centres",
    "attribute_agreement",
]

#: The class names as caption words, in label order (:data:`common.data.CLASSES`).
CLASS_WORDS = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")
#: Attribute values; an attribute tensor holds the index into its tuple.
SIZES = ("large", "small")
POSITIONS = ("top", "bottom", "left", "right", "centre")       # only for "small"; -1 for "large"
ROTATIONS = ("none", "left", "right")
CONTRASTS = ("normal", "faint")
#: The brightest pixel of a faint image (of a normal one: 1).
FAINT = 0.35
#: Side of a small object's square (the 28-pixel image scaled by 1/2).
SMALL_SIZE = 14

_SIDE = 28
_LAYOUTS = 1 + len(POSITIONS)                                 # large, then small at each position
_PER_CLASS = _LAYOUTS * len(ROTATIONS) * len(CONTRASTS)        # 36
NUM_COMBINATIONS = len(CLASS_WORDS) * _PER_CLASS               # 360
_POSITION_PHRASES = ("at the top", "at the bottom", "on the left", "on the right", "in the centre")
_SEED_KEY = "cvm-captioned-fashion-mnist-v1"


def _article(class_word: str) -> str:
    return "an" if class_word[0] in "aeiou" else "a"


def _check_index(name: str, value, values: Sequence[str]) -> int:
    if isinstance(value, str):
        if value not in values:
            raise ValueError(f"{name} must be one of {list(values)}, got {value!r}")
        return values.index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(values):
        raise ValueError(f"{name} must be one of {list(values)} or its index 0..{len(values) - 1}, got {value!r}")
    return value


def _layout(size: int, position: int) -> int:
    return 0 if size == 0 else 1 + position


def combination(label, size, position, rotation, contrast) -> int:
    """The combination id ``((label * 6 + layout) * 3 + rotation) * 2 + contrast`` in 0..359.

    Each argument is an index or a value name (``size="small"``); ``position`` is ignored (pass ``None``
    or -1) when ``size`` is large and required when it is small.
    """
    label = _check_index("label", label, CLASS_WORDS)
    size = _check_index("size", size, SIZES)
    if size == 0:
        position = 0
    elif position is None or position == -1:
        raise ValueError("a small object needs a position: one of "
                         f"{list(POSITIONS)} (or its index), got {position!r}")
    else:
        position = _check_index("position", position, POSITIONS)
    rotation = _check_index("rotation", rotation, ROTATIONS)
    contrast = _check_index("contrast", contrast, CONTRASTS)
    return ((label * _LAYOUTS + _layout(size, position)) * len(ROTATIONS) + rotation) * len(CONTRASTS) + contrast


def _decompose(combo: torch.Tensor):
    """combination ids (N,) -> label, layout, rotation, contrast (N,) each."""
    contrast = combo % len(CONTRASTS)
    rotation = combo // len(CONTRASTS) % len(ROTATIONS)
    layout = combo // (len(CONTRASTS) * len(ROTATIONS)) % _LAYOUTS
    return combo // _PER_CLASS, layout, rotation, contrast


def caption(label, size, position, rotation, contrast) -> str:
    """The caption of one combination, e.g. ``caption("sandal", "small", "top", "left", "normal")``."""
    return CAPTIONS[combination(label, size, position, rotation, contrast)]


def _caption_of(label: int, layout: int, rotation: int, contrast: int) -> str:
    word = CLASS_WORDS[label]
    parts = [f"{_article(word)} {word}", SIZES[int(layout > 0)]]
    if rotation:
        parts.append(f"rotated {ROTATIONS[rotation]}")
    if contrast:
        parts.append("faint")
    if layout > 0:
        parts.append(_POSITION_PHRASES[layout - 1])
    return ", ".join(parts)


_ALL = _decompose(torch.arange(NUM_COMBINATIONS))
#: All 360 captions; ``CAPTIONS[combination(...)]`` is the caption of that combination.
CAPTIONS = tuple(_caption_of(*(int(t[i]) for t in _ALL)) for i in range(NUM_COMBINATIONS))
#: (360,) bool: the 60 combinations never drawn for a training image (see the module docstring).
HELD_OUT = (_ALL[0] + _ALL[1] + 2 * _ALL[2] + 3 * _ALL[3]) % 6 == 0
_TRAINING_COMBOS = torch.stack([(~HELD_OUT[k * _PER_CLASS:(k + 1) * _PER_CLASS]).nonzero().flatten()
                                for k in range(len(CLASS_WORDS))])          # (10, 30) within-class index
_BY_CAPTION = {text: index for index, text in enumerate(CAPTIONS)}


def parse_caption(text: str) -> dict:
    """The attributes of a caption of the grammar: ``{"label", "size", "position", "rotation", "contrast",
    "combo", "held_out"}`` as ints (``position`` -1 for large) and a bool. Anything else is an error."""
    if text not in _BY_CAPTION:
        raise ValueError(f"{text!r} is not a caption of the grammar (e.g. {CAPTIONS[200]!r}); "
                         "see the docstring of common.captions for the grammar")
    combo = _BY_CAPTION[text]
    label, layout, rotation, contrast = (int(t[combo]) for t in _ALL)
    return {"label": label, "size": int(layout > 0), "position": layout - 1, "rotation": rotation,
            "contrast": contrast, "combo": combo, "held_out": bool(HELD_OUT[combo])}


class Captioned(NamedTuple):
    """A captioned split: ``images`` float32 (N, 1, 28, 28), ``labels`` int64 (N,), ``captions`` (N strings)
    and ``attributes``, a dict of (N,) tensors: ``label``, ``size`` (index into :data:`SIZES`),
    ``position`` (into :data:`POSITIONS`, -1 for large), ``rotation``, ``contrast``, ``combo``
    (:func:`combination`, equal for equal captions), ``held_out`` (bool) and ``index`` (the image's
    position in its Fashion-MNIST file: the 60,000 training images or the 10,000 test images)."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list
    attributes: dict

    def __len__(self) -> int:  # the number of examples, not of fields
        return self.labels.shape[0]

    def select(self, which) -> "Captioned":
        """The examples picked by ``which``: a bool mask (N,) or indices, as a new :class:`Captioned`."""
        which = torch.as_tensor(which)
        if which.dtype == torch.bool:
            if which.shape != self.labels.shape:
                raise ValueError(f"a mask must have shape {tuple(self.labels.shape)}, got {tuple(which.shape)}")
            which = which.nonzero().flatten()
        which = which.long().flatten()
        return Captioned(self.images[which], self.labels[which], [self.captions[i] for i in which.tolist()],
                         {name: value[which] for name, value in self.attributes.items()})


def _generator(seed: int, file_set: str) -> torch.Generator:
    digest = hashlib.sha256(f"{_SEED_KEY}:{seed}:{file_set}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _draw_combinations(split: str, labels: torch.Tensor, index: torch.Tensor, in_val: torch.Tensor,
                       seed: int, file_size: int) -> torch.Tensor:
    """Combination ids (N,) of the images ``index`` (into their file), drawn once per file index."""
    generator = _generator(seed, "test" if split == "test" else "train")
    any_combo = torch.randint(0, _PER_CLASS, (file_size,), generator=generator)[index]             # of 36
    training = torch.randint(0, _TRAINING_COMBOS.shape[1], (file_size,), generator=generator)[index]  # of 30
    training = _TRAINING_COMBOS[labels, training]
    any_combo_id = labels * _PER_CLASS + any_combo
    training_id = labels * _PER_CLASS + training
    if split == "test":
        return any_combo_id
    if split == "train":
        return training_id
    if split == "val":
        return any_combo_id
    # trainval: val images keep their "val" draw unless it is held out
    use_val_draw = in_val & ~HELD_OUT[any_combo_id]
    return torch.where(use_val_draw, any_combo_id, training_id)


def _ink_box(tiles: torch.Tensor):
    """First and one-past-last row and column holding ink (> 0), and the centre of mass in pixel units
    (a pixel's centre at i + 0.5), of tiles (M, S, S)."""
    side = tiles.shape[-1]
    coords = torch.arange(side, dtype=tiles.dtype)
    row_mass, col_mass = tiles.sum(2), tiles.sum(1)                                   # (M, S) each
    out = []
    for mass in (row_mass, col_mass):
        inked = mass > 0
        first = torch.where(inked, coords, float(side)).amin(1)
        last = torch.where(inked, coords, -1.0).amax(1) + 1
        centre = (mass * (coords + 0.5)).sum(1) / mass.sum(1)
        out.append((first, last, centre))
    return out


def _place(tiles: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Small objects (M, 14, 14) on black (M, 28, 28) canvases at ``position`` (M,), by integer shifts."""
    (r_first, r_last, r_centre), (c_first, c_last, c_centre) = _ink_box(tiles)
    mid = _SIDE / 2

    def centred(first, last, centre):   # shift putting the centre of mass on the mid-line, ink kept inside
        return torch.minimum(torch.maximum((mid - centre).round(), -first), _SIDE - last)

    dy, dx = centred(r_first, r_last, r_centre), centred(c_first, c_last, c_centre)
    top, bottom, left, right = (position == POSITIONS.index(p) for p in ("top", "bottom", "left", "right"))
    dy = torch.where(top, -r_first, torch.where(bottom, _SIDE - r_last, dy)).long()
    dx = torch.where(left, -c_first, torch.where(right, _SIDE - c_last, dx)).long()
    grid = torch.arange(_SIDE)
    rows, cols = grid - dy[:, None], grid - dx[:, None]                              # (M, 28): source row/col
    inside = (((rows >= 0) & (rows < tiles.shape[1]))[:, :, None]
              & ((cols >= 0) & (cols < tiles.shape[2]))[:, None, :])                 # (M, 28, 28)
    picked = tiles[torch.arange(tiles.shape[0])[:, None, None],
                   rows.clamp(0, tiles.shape[1] - 1)[:, :, None], cols.clamp(0, tiles.shape[2] - 1)[:, None, :]]
    return picked * inside


def _render(raw: torch.Tensor, layout: torch.Tensor, rotation: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> transformed float (N, 28, 28) in [0, 1]."""
    images = raw.float().div_(255.0)
    for value, turns in ((1, 1), (2, -1)):                        # left = anticlockwise, right = clockwise
        chosen = rotation == value
        images[chosen] = images[chosen].rot90(turns, (1, 2))
    small = layout > 0
    if small.any():
        half = _SIDE // SMALL_SIZE
        tiles = images[small].reshape(-1, SMALL_SIZE, half, SMALL_SIZE, half).mean((2, 4))  # (M, 14, 14)
        images[small] = _place(tiles, layout[small] - 1)
    level = torch.where(contrast == 1, FAINT, 1.0)
    return images.mul_((level / images.amax((1, 2)))[:, None, None])


def _check_split_args(split, limit, seed):
    if split not in data.SPLITS:
        raise ValueError(f"split must be one of {list(data.SPLITS)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be None (the whole split) or a positive int, got {limit!r}")


def captioned_fashion_mnist(split: str = "train", *, limit: Optional[int] = None, seed: int = 0,
                            normalize: bool = True, root=None, download: bool = True) -> Captioned:
    """Captioned Fashion-MNIST of ``split`` (one of :data:`common.data.SPLITS`), as a :class:`Captioned`.

    The images are those of :func:`common.data.fashion_mnist` (same split, same order), transformed as
    the module docstring describes; ``limit`` keeps the first ``limit``. ``normalize`` maps pixels to
    ``(x - MEAN) / STD`` with :mod:`common.data`'s constants (so the black background has the same value
    as in the plain data); otherwise they stay in [0, 1]. ``seed`` selects the draw of attributes.
    """
    _check_split_args(split, limit, seed)
    file_set = "test" if split == "test" else "trainval"
    raw, labels = data.load_raw(file_set, root=root, download=download)
    in_val = torch.zeros(labels.shape[0], dtype=torch.bool)
    if file_set == "trainval":
        in_val[data.val_indices(root=root, download=download)] = True
    index = {"train": (~in_val).nonzero(), "val": in_val.nonzero()}.get(split, torch.arange(labels.shape[0]))
    index = index.flatten()
    if limit is not None:
        if limit > index.shape[0]:
            raise ValueError(f"limit={limit} is more than the {index.shape[0]:,} images of split {split!r}; "
                             "pass limit=None for all of them")
        index = index[:limit]
    labels, in_val = labels[index], in_val[index]
    combo = _draw_combinations(split, labels, index, in_val, seed, raw.shape[0])
    label, layout, rotation, contrast = _decompose(combo)
    images = _render(raw[index], layout, rotation, contrast).unsqueeze(1)          # (N, 1, 28, 28)
    if normalize:
        images = images.sub_(data.MEAN).div_(data.STD)
    attributes = {"label": label, "size": (layout > 0).long(), "position": layout - 1, "rotation": rotation,
                  "contrast": contrast, "combo": combo, "held_out": HELD_OUT[combo], "index": index}
    return Captioned(images, labels.clone(), [CAPTIONS[i] for i in combo.tolist()], attributes)


def held_out_set(split: str = "test", *, limit: Optional[int] = None, seed: int = 0, normalize: bool = True,
                 root=None, download: bool = True) -> Captioned:
    """The examples of ``split`` (``"val"`` or ``"test"``) whose caption is held out from training:
    the retrieval set. ``limit`` applies to the split before the selection (as in
    :func:`captioned_fashion_mnist`), so ``limit=1000`` gives about 1000 / 6 examples."""
    if split not in ("val", "test"):
        raise ValueError(f"held-out captions occur only in split 'val' or 'test', got {split!r}")
    full = captioned_fashion_mnist(split, limit=limit, seed=seed, normalize=normalize, root=root,
                                   download=download)
    return full.select(full.attributes["held_out"])


#: Zero-shot prompt templates (``{a}`` = article, ``{c}`` = class word). CLIP's "a photo of a {}." fits
#: captions scraped from the web; a model trained on this grammar has only ever read its phrases, so the
#: templates are partial captions of the grammar, one per layout and one bare. Averaging the normalised
#: text embeddings of a class's prompts is prompt ensembling.
TEMPLATES = (
    "{a} {c}",
    "{a} {c}, large",
    "{a} {c}, small, at the top",
    "{a} {c}, small, at the bottom",
    "{a} {c}, small, on the left",
    "{a} {c}, small, on the right",
    "{a} {c}, small, in the centre",
)


def prompts(templates: Sequence[str] = TEMPLATES) -> list:
    """``prompts()[label][t]``: template ``t`` filled in with class ``label`` (10 lists of len(templates))."""
    if isinstance(templates, str):
        templates = [templates]
    for template in templates:
        if not isinstance(template, str) or "{c}" not in template:
            raise ValueError(f"a template is a str with the slot {{c}} for the class word (and optionally "
                             f"{{a}} for its article), e.g. {TEMPLATES[1]!r}; got {template!r}")
    return [[template.format(a=_article(word), c=word) for template in templates] for word in CLASS_WORDS]


#: Special tokens and the words of the grammar (captions and templates), fixed once and for all.
PAD, START = "<pad>", "<start>"
END = "<end>"
VOCAB = (PAD, START, ",", "a", "an", "ankle", "at", "bag", "boot", "bottom", "centre", "coat", "dress",
         "faint", "in", "large", "left", "on", "pullover", "right", "rotated", "sandal", "shirt", "small",
         "sneaker", "t-shirt", "the", "top", "trouser", END)
_TOKEN = {word: index for index, word in enumerate(VOCAB)}
_SPECIAL = {_TOKEN[PAD], _TOKEN[START], _TOKEN[END]}
_WORD = re.compile(r",|[^\s,]+")


def _words(text: str) -> list:
    return _WORD.findall(text.lower())


#: Tokens of the longest caption or prompt, start and end included: the default ``context_length``.
CONTEXT_LENGTH = max(len(_words(text)) + 2 for text in CAPTIONS + tuple(sum(prompts(), [])))


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """Token ids ``(N, context_length)`` of ``texts`` (one str or a list): start, the words, end, then 0s.

    Text is lower-cased and split into words at spaces, with each comma a token of its own. A word outside
    :data:`VOCAB`, or a text longer than ``context_length`` tokens, is an error (open_clip truncates in
    silence; here a cut caption would state less than its image shows).
    """
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2 (start and end tokens), got {context_length!r}")
    rows = []
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"tokenize expected str texts, got {type(text).__name__} at position {number}")
        ids = [_TOKEN[START]]
        for word in _words(text):
            if word not in _TOKEN or _TOKEN[word] in _SPECIAL:
                raise ValueError(f"unknown word {word!r} in text {number} ({text!r}); the vocabulary has the "
                                 f"{len(VOCAB) - 3} words {list(VOCAB[2:-1])}")
            ids.append(_TOKEN[word])
        ids.append(_TOKEN[END])
        if len(ids) > context_length:
            raise ValueError(f"text {number} ({text!r}) needs {len(ids)} tokens with start and end, but "
                             f"context_length is {context_length}; pass context_length >= {len(ids)}")
        rows.append(ids + [_TOKEN[PAD]] * (context_length - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)


def decode(tokens) -> Union[str, list]:
    """Text of token ids: one sequence (L,) gives a str, a batch (N, L) a list. Reads up to the end token,
    skips start and padding; commas attach to the word before them, so ``decode(tokenize(c))[0] == c``
    for every caption and prompt of the grammar."""
    tokens = torch.as_tensor(tokens)
    if tokens.dim() not in (1, 2) or tokens.is_floating_point():
        raise ValueError(f"decode expected integer token ids (L,) or (N, L), got {tuple(tokens.shape)} "
                         f"{tokens.dtype}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= len(VOCAB)):
        raise ValueError(f"token ids must lie in 0..{len(VOCAB) - 1} (the vocabulary), got "
                         f"{int(tokens.min())}..{int(tokens.max())}")
    texts = []
    for row in tokens.reshape(-1, tokens.shape[-1]).tolist():
        words = []
        for token in row:
            if token == _TOKEN[END]:
                break
            if token not in _SPECIAL:
                words.append(VOCAB[token])
        texts.append(" ".join(words).replace(" ,", ","))
    return texts[0] if tokens.dim() == 1 else texts


# ----------------------------------------------------------------------------------------------------------------
# Reading the attributes back from pixels: how generated images (6.3, 6.4) are checked against their captions.

def _check_pixels(pixels) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor in [0, 1], got "
                        f"{getattr(pixels, 'dtype', type(pixels).__name__)}")
    if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(pixels.shape)}")
    return pixels[:, 0]


def measure_attributes(pixels: torch.Tensor) -> dict:
    """What the pixels say of images (N, 1, 28, 28) in [0, 1], with no network: ``small`` (N,) bool (the inked
    rows and columns, the pixels above a quarter of the brightest, span at most 17: a small object's ink spans at
    most 14, a large one's at least 20), ``faint`` (N,) bool (the brightest pixel below (FAINT + 1) / 2) and
    ``centre`` (N, 2), the ink's centre of mass (row, column; pixel centres at i + 0.5). Rotation is not
    measured: a rotated coat is still a coat-shaped blob."""
    pixels = _check_pixels(pixels)
    brightest = pixels.flatten(1).amax(1)
    ink = pixels > 0.25 * brightest[:, None, None]                     # (N, 28, 28)
    extent = lambda lines: lines.float().sum(1)                        # inked rows / columns (objects are solid)
    mass = pixels * ink
    coords = torch.arange(28, dtype=pixels.dtype) + 0.5
    total = mass.flatten(1).sum(1).clamp_min(1e-8)
    centre = torch.stack([(mass.sum(2) * coords).sum(1) / total, (mass.sum(1) * coords).sum(1) / total], 1)
    return {"small": torch.maximum(extent(ink.any(2)), extent(ink.any(1))) <= 17,
            "faint": brightest < (FAINT + 1) / 2, "centre": centre}


def position_centres(pixels: torch.Tensor, attributes: dict) -> torch.Tensor:
    """The typical centre of mass (5, 2) of each position (top, bottom, left, right, centre), measured on real
    small images with their ``attributes`` (a :class:`Captioned`'s): what :func:`attribute_agreement` compares
    with."""
    centre = measure_attributes(pixels)["centre"]
    small = attributes["size"] == 1
    rows = []
    for position, word in enumerate(POSITIONS):
        chosen = small & (attributes["position"] == position)
        if not chosen.any():
            raise ValueError(f"position_centres needs small images at every position; none is {word!r}")
        rows.append(centre[chosen].mean(0))
    return torch.stack(rows)


def attribute_agreement(pixels: torch.Tensor, attributes: dict, centres: torch.Tensor) -> dict:
    """The share of images (N, 1, 28, 28) in [0, 1] whose measured size, contrast and, for those the caption
    calls small, position (the nearest of ``centres``, from :func:`position_centres`) agree with ``attributes``
    (the captions' size, contrast and position, (N,) each). On real images, whose captions are true by
    construction, all three agree for more than 99% (tests/test_captions.py)."""
    measured = measure_attributes(pixels)
    if len(attributes["size"]) != len(pixels):
        raise ValueError(f"got {len(pixels)} images and attributes of {len(attributes['size'])}")
    small = attributes["size"] == 1
    nearest = torch.cdist(measured["centre"], centres.to(measured["centre"].dtype)).argmin(1)
    return {"size": (measured["small"] == small).float().mean().item(),
            "contrast": (measured["faint"] == (attributes["contrast"] == 1)).float().mean().item(),
            "position": (nearest[small] == attributes["position"][small]).float().mean().item()
            if small.any() else float("nan")}
