"""Fashion-MNIST, loaded offline first and verified.

Where the four files are looked for, in this order:

1. ``$CVM_DATA`` (if set; a folder that does not exist is an error),
2. ``data/`` at the root of this repository (git-ignored),
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``),

and only if none has a file is it downloaded (into the first of 1-2), unless
``download=False``. Given ``root=``, that folder alone is searched, and a download goes there. Each file may be stored gzipped (``.gz``) or not; either
way its *decompressed* content is checked against the MD5 published for the
dataset, so a re-compressed copy (Debian's) passes and a truncated or altered
one fails with an error that names the file and says what to do.

Splits. The two files hold 60,000 training and 10,000 test images. The 60,000 are split once
and for all (see :func:`val_indices`) into

* ``"train"``: 55,000 images, the ones not in ``"val"``, in file order;
* ``"val"``: 5,000 images, 500 per class, always the same ones, in file order;
* ``"trainval"``: all 60,000 in file order (``"train"`` plus ``"val"``);
* ``"test"``: the 10,000 test images.

Every choice is made on ``"val"``; ``"test"`` is evaluated once, at the end.

Images come back as ``uint8`` tensors ``(N, 28, 28)``; :func:`fashion_mnist`
turns them into normalised ``float32`` tensors ``(N, 1, 28, 28)`` and
:class:`TensorLoader` batches them in memory, which on a CPU is much faster
than a ``DataLoader`` calling ``__getitem__`` once per image (see
``benchmarks/data_loading.py``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "FILES",
    "DataFileError",
    "SPLITS",
    "VAL_PER_CLASS",
    "VAL_KEY",
    "search_dirs",
    "val_indices",
    "load_raw",
    "fashion_mnist",
    "TensorLoader",
    "loaders",
    "Augment",
]

#: The ten classes, in label order.
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Mean and standard deviation of all 60,000 training pixels (``"trainval"``) scaled to [0, 1]
#: (computed in tests/test_data.py from the files themselves).
MEAN = 0.2860
STD = 0.3530

#: The splits :func:`load_raw` and :func:`fashion_mnist` accept.
SPLITS = ("train", "val", "test", "trainval")

#: The validation split: this many images of each class, chosen by :func:`val_indices` with this key.
VAL_PER_CLASS = 500
VAL_KEY = "cvm-fashion-mnist-val-v1"

#: file set -> (images file, labels file), without the ``.gz`` suffix.
FILE_SETS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Published MD5 of each file's decompressed content.
FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

#: Where the files are downloaded from as a last resort (Zalando's mirror).
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

_HOW_TO_GET = (
    "To get Fashion-MNIST: on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist`; "
    "or put the four files (gzipped or not) from {mirror} into {target}{download}"
)


class DataFileError(RuntimeError):
    """A Fashion-MNIST file is missing, truncated or corrupt. The message says which and what to do."""


def search_dirs() -> list[Path]:
    """The folders looked in, in order: ``$CVM_DATA`` (when set), the repository's ``data/``, Debian's.

    A ``$CVM_DATA`` that names no folder is an error (a typo would otherwise be skipped in
    silence and another copy used); the first folder is also where a download goes.
    """
    dirs = []
    if os.environ.get("CVM_DATA"):
        folder = Path(os.environ["CVM_DATA"]).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise DataFileError(
                f"CVM_DATA={os.environ['CVM_DATA']!r} names the folder to read Fashion-MNIST from (and download "
                f"it into), but {folder} {what}. Create it (`mkdir -p {folder}`), correct the path, or unset CVM_DATA."
            )
        dirs.append(folder)
    dirs += [REPO_DATA_DIR, DEBIAN_DIR]
    return dirs


def _how_to_get(dirs: Sequence[Path], download: bool) -> str:
    """What to do when a file is missing or bad; ``dirs[0]`` is where a copy (or a download) belongs."""
    tail = (" (a download goes there too: check the network connection, or the proxy settings)." if download
            else "; or call again with download=True on a machine with internet.")
    return _HOW_TO_GET.format(mirror=MIRROR, target=dirs[0], download=tail)


def _find(name: str, dirs: Sequence[Path]) -> Optional[Path]:
    for folder in dirs:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def _read_verified(path: Path, name: str, dirs: Sequence[Path], download: bool) -> bytes:
    """Decompress (if needed) and check the MD5; raise DataFileError naming the file."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataFileError(
            f"Fashion-MNIST file {path} cannot be decompressed ({type(exc).__name__}: {exc}); "
            f"it is truncated or corrupt. Delete it and get it again. {_how_to_get(dirs, download)}"
        ) from exc
    digest = hashlib.md5(raw).hexdigest()
    if digest != FILES[name]:
        raise DataFileError(
            f"Fashion-MNIST file {path} is corrupt: the MD5 of its content is {digest}, "
            f"the published one is {FILES[name]} ({len(raw):,} bytes read). "
            f"Delete it and get it again. {_how_to_get(dirs, download)}"
        )
    return raw


def _parse_idx(raw: bytes, path: Path, expect_dims: int) -> torch.Tensor:
    """Parse the IDX format: magic (0, 0, 0x08 = uint8, ndim), big-endian sizes, data."""
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
        raise DataFileError(
            f"{path} is not an IDX file of uint8 with {expect_dims} dimensions "
            f"(header {raw[:4].hex()})."
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = bytearray(raw[4 + 4 * ndim :])
    return torch.frombuffer(data, dtype=torch.uint8).reshape(shape)


def _download(name: str, dirs: Sequence[Path]) -> Path:
    """Fetch ``name`` from :data:`MIRROR` into the first folder searched, and verify it."""
    dest = dirs[0]
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{MIRROR}{name}.gz"
    target = dest / f"{name}.gz"
    with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except Exception as exc:  # offline, DNS, HTTP error...
            tmp.close()
            os.unlink(tmp.name)
            raise DataFileError(
                f"Fashion-MNIST file {name} was not found in any of "
                f"{[str(d) for d in dirs]} and downloading {url} into {dest} failed "
                f"({type(exc).__name__}: {exc}). {_how_to_get(dirs, True)}"
            ) from exc
    os.replace(tmp.name, target)
    _read_verified(target, name, dirs, True)  # a bad download is an error, never used
    return target


@lru_cache(maxsize=None)
def _load_file(name: str, dirs: tuple[Path, ...], download: bool) -> torch.Tensor:
    path = _find(name, dirs)
    if path is None:
        if not download:
            raise DataFileError(
                f"Fashion-MNIST file {name}(.gz) was not found in any of {[str(d) for d in dirs]}. "
                f"{_how_to_get(dirs, False)}"
            )
        path = _download(name, dirs)
    raw = _read_verified(path, name, dirs, download)
    return _parse_idx(raw, path, expect_dims=3 if "images" in name else 1)


def _load_file_set(file_set: str, dirs: tuple, download: bool):
    images_name, labels_name = FILE_SETS[file_set]
    images = _load_file(images_name, dirs, download)
    labels = _load_file(labels_name, dirs, download).long()
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{images_name} holds {images.shape[0]} images but {labels_name} holds {labels.shape[0]} labels."
        )
    return images, labels


def _rank_key(index: int) -> bytes:
    return hashlib.sha256(f"{VAL_KEY}:{index}".encode()).digest()


@lru_cache(maxsize=None)
def _val_indices(dirs: tuple, download: bool) -> torch.Tensor:
    _, labels = _load_file_set("train", dirs, download)
    chosen = []
    for cls in range(len(CLASSES)):
        members = (labels == cls).nonzero().flatten().tolist()
        if len(members) < VAL_PER_CLASS:
            raise DataFileError(f"class {cls} has only {len(members)} training images, {VAL_PER_CLASS} needed")
        chosen += sorted(members, key=_rank_key)[:VAL_PER_CLASS]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def val_indices(*, root=None, download: bool = True) -> torch.Tensor:
    """The 5,000 indices (into the 60,000 training images, ascending) that form ``"val"``.

    For each class, its training images are ranked by the SHA-256 of the text
    ``f"{VAL_KEY}:{index}"`` (``index`` = position in the training file, from 0)
    and the first :data:`VAL_PER_CLASS` are taken. The choice depends on nothing
    but the (MD5-verified) label file: not on torch's or any other random
    generator, the machine or the torch version, and it can be recomputed in
    any language.
    """
    dirs = (Path(root).expanduser(),) if root is not None else tuple(search_dirs())
    return _val_indices(dirs, download).clone()


def load_raw(split: str = "train", *, root=None, download: bool = True):
    """Images ``uint8 (N, 28, 28)`` and labels ``int64 (N,)`` of ``split`` (one of :data:`SPLITS`).

    ``root`` (a folder) replaces the search order and is where a download goes; otherwise see
    :func:`search_dirs`. The files are read and verified once per process (cached).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    dirs = (Path(root).expanduser(),) if root is not None else tuple(search_dirs())
    if split == "test":
        return _load_file_set("test", dirs, download)
    images, labels = _load_file_set("train", dirs, download)
    if split == "trainval":
        return images, labels
    in_val = torch.zeros(labels.shape[0], dtype=torch.bool)
    in_val[val_indices(root=root, download=download)] = True
    keep = in_val if split == "val" else ~in_val
    return images[keep], labels[keep]


def fashion_mnist(split: str = "train", *, limit: Optional[int] = None, normalize: bool = True,
                  root=None, download: bool = True):
    """Float images ``(N, 1, 28, 28)`` and int64 labels ``(N,)`` of ``split`` (one of :data:`SPLITS`).

    ``limit`` keeps the first ``limit`` examples of the split (the files are
    already in a shuffled, class-balanced order). ``normalize`` maps pixels to
    ``(x / 255 - MEAN) / STD``; otherwise to ``[0, 1]``.
    """
    images, labels = load_raw(split, root=root, download=download)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        images, labels = images[:limit], labels[:limit]
    x = images.unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28)
    if normalize:
        x = x.sub_(MEAN).div_(STD)
    return x, labels.clone()


class TensorLoader:
    """Mini-batches of in-memory tensors, reshuffled every epoch.

    Equivalent to ``DataLoader(TensorDataset(*tensors), batch_size, shuffle)``
    but indexes whole batches at once instead of collating single items.
    ``transform`` (optional) is applied to the first tensor of every batch
    (e.g. an augmentation working on ``(B, C, H, W)``).
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 256, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, transform=None):
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor")
        n = tensors[0].shape[0]
        for t in tensors:
            if t.shape[0] != n:
                raise ValueError(
                    f"all tensors need the same first dimension; got {[tuple(t.shape) for t in tensors]}"
                )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_examples(self) -> int:
        return self.tensors[0].shape[0]

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple]:
        n = self.num_examples
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for i in range(len(self)):
            if order is None:
                batch = tuple(t[i * self.batch_size:(i + 1) * self.batch_size] for t in self.tensors)
            else:
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                batch = tuple(t[idx] for t in self.tensors)
            if self.transform is not None:
                batch = (self.transform(batch[0]),) + batch[1:]
            yield batch


def loaders(batch_size: int = 256, *, train_limit: Optional[int] = None,
            test_limit: Optional[int] = None, test_batch_size: int = 1000, seed: int = 0,
            transform=None, val: bool = False, val_limit: Optional[int] = None):
    """Normalised Fashion-MNIST as :class:`TensorLoader`.

    ``val=False`` (what the notebooks written before the val split call):
    ``(train_loader, test_loader)``, training on ``"trainval"`` (all 60,000).
    ``val=True``: ``(train_loader, val_loader, test_loader)``, training on
    ``"train"`` (55,000) and holding out ``"val"`` (5,000) for every choice.
    The training loader shuffles with its own generator seeded by ``seed``.
    """
    x_train, y_train = fashion_mnist("train" if val else "trainval", limit=train_limit)
    x_test, y_test = fashion_mnist("test", limit=test_limit)
    train = TensorLoader(x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed,
                         transform=transform)
    test = TensorLoader(x_test, y_test, batch_size=test_batch_size)
    if not val:
        return train, test
    x_val, y_val = fashion_mnist("val", limit=val_limit)
    return train, TensorLoader(x_val, y_val, batch_size=test_batch_size), test


class Augment:
    """Random crop with zero padding and horizontal flip, on a whole batch ``(B, C, H, W)`` at once.

    ``crop_padding=p`` pads every image by ``p`` pixels of ``fill`` (default:
    a black pixel after :func:`fashion_mnist`'s normalisation) and cuts a
    window of the original size at a random offset per image (what
    ``torchvision.transforms.RandomCrop(size, padding=p)`` does image by
    image); ``flip`` mirrors a random half left-right. The randomness comes
    from the object's own generator (seeded by ``seed``, saved by
    :meth:`state_dict`), never from torch's global one, so that a run resumed
    from a checkpoint, or run on several processes that all augment the same
    global batch, draws exactly the same crops and flips.
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False, *, seed: int = 0,
                 fill: float = (0.0 - MEAN) / STD):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.fill = float(fill)
        self.generator = torch.Generator().manual_seed(seed)

    def __bool__(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __repr__(self) -> str:
        return f"Augment(crop_padding={self.crop_padding}, flip={self.flip})"

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"Augment expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        out = images
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = images.new_full((batch, images.shape[1], height + 2 * p, width + 2 * p), self.fill)
            padded[:, :, p:p + height, p:p + width] = images
            dy = torch.randint(0, 2 * p + 1, (batch,), generator=self.generator).to(images.device)
            dx = torch.randint(0, 2 * p + 1, (batch,), generator=self.generator).to(images.device)
            rows = dy[:, None] + torch.arange(height, device=images.device)            # (B, H)
            cols = dx[:, None] + torch.arange(width, device=images.device)             # (B, W)
            picked = padded[torch.arange(batch, device=images.device)[:, None, None], :,
                            rows[:, :, None], cols[:, None, :]]                        # (B, H, W, C)
            out = picked.permute(0, 3, 1, 2).contiguous()
        if self.flip:
            mirror = (torch.rand(batch, generator=self.generator) < 0.5).to(images.device)
            out = torch.where(mirror.view(-1, 1, 1, 1), out.flip(-1), out)
        return out
