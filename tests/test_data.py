import gzip
import io
import shutil

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from common import data
from common.data import DataFileError


@pytest.fixture(autouse=True)
def _fresh_cache():
    data._load_file.cache_clear()
    yield
    data._load_file.cache_clear()


def _source_dir():
    for folder in data.search_dirs():
        if (folder / "t10k-labels-idx1-ubyte.gz").is_file() or (folder / "t10k-labels-idx1-ubyte").is_file():
            return folder
    pytest.fail("Fashion-MNIST is not installed; run `apt-get install dataset-fashion-mnist`")


def _copy_split(tmp_path, split="test"):
    src = _source_dir()
    for name in data.FILE_SETS[split]:
        for candidate in (src / f"{name}.gz", src / name):
            if candidate.is_file():
                shutil.copy(candidate, tmp_path / candidate.name)
    return tmp_path


def test_real_data_shapes_labels_and_statistics():
    images, labels = data.load_raw("trainval")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [6000] * 10
    test_images, test_labels = data.load_raw("test")
    assert test_images.shape == (10000, 28, 28)
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    pixels = images.double() / 255
    assert pixels.mean().item() == pytest.approx(data.MEAN, abs=5e-5)
    assert pixels.std().item() == pytest.approx(data.STD, abs=5e-5)


def test_normalised_tensors_and_limit():
    x, y = data.fashion_mnist("test", limit=500)
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (500,)
    full, _ = data.fashion_mnist("test")
    assert full.mean().item() == pytest.approx((data.load_raw("test")[0].double().mean().item() / 255 - data.MEAN) / data.STD, abs=1e-4)
    raw, _ = data.fashion_mnist("test", limit=3, normalize=False)
    assert raw.min() >= 0 and raw.max() <= 1
    with pytest.raises(ValueError, match="split"):
        data.load_raw("validation")


def test_uncompressed_copy_is_accepted(tmp_path):
    src = _copy_split(tmp_path)
    for gz in list(src.glob("*.gz")):
        (src / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    images, labels = data.load_raw("test", root=src, download=False)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


def test_missing_file_names_it_and_says_how_to_get_it(tmp_path):
    with pytest.raises(DataFileError) as info:
        data.load_raw("test", root=tmp_path, download=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message
    assert str(data.REPO_DATA_DIR) not in message and str(data.DEBIAN_DIR) not in message, "root= is the only folder"


def test_root_is_searched_alone_and_receives_the_download(tmp_path, monkeypatch):
    (tmp_path / "good").mkdir()
    good = _copy_split(tmp_path / "good")
    root = tmp_path / "my-data"

    def serve(url, timeout):
        name = url.rsplit("/", 1)[1]
        path = good / name
        return _FakeResponse(path.read_bytes() if path.exists() else gzip.compress((good / name[:-3]).read_bytes()))

    monkeypatch.setattr(data.urllib.request, "urlopen", serve)
    images, _ = data.load_raw("test", root=root)
    assert images.shape == (10000, 28, 28) and (root / "t10k-images-idx3-ubyte.gz").is_file()
    assert not (data.REPO_DATA_DIR / "t10k-images-idx3-ubyte.gz.part").exists()


def test_cvm_data_naming_no_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CVM_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataFileError, match=r"CVM_DATA=.*typo.*does not exist.*mkdir -p"):
        data.load_raw("test")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CVM_DATA", str(tmp_path / "file"))
    with pytest.raises(DataFileError, match="is not a folder"):
        data.search_dirs()


def test_truncated_file_is_reported(tmp_path):
    src = _copy_split(tmp_path)
    path = src / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        path.write_bytes(gzip.compress((src / "t10k-images-idx3-ubyte").read_bytes()))
        (src / "t10k-images-idx3-ubyte").unlink()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte\.gz.*truncated or corrupt"):
        data.load_raw("test", root=src, download=False)


def test_one_corrupted_byte_is_reported_gzipped_and_not(tmp_path):
    src = _copy_split(tmp_path)
    labels_gz = src / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels_gz.read_bytes()))
    raw[5000] ^= 0x01  # one label changed by one bit: only the checksum can tell
    labels_gz.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataFileError, match=r"t10k-labels-idx1-ubyte\.gz is corrupt.*MD5.*15d484375f8d13e6eb1aabb0c3f46965"):
        data.load_raw("test", root=src, download=False)
    labels_gz.unlink()
    (src / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    data._load_file.cache_clear()
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte is corrupt"):
        data.load_raw("test", root=src, download=False)


def test_a_byte_flipped_inside_the_gzip_stream_is_reported(tmp_path):
    src = _copy_split(tmp_path)
    path = src / "t10k-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte\.gz"):
        data.load_raw("test", root=src, download=False)


def test_cvm_data_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("CVM_DATA", str(tmp_path))
    assert data.search_dirs()[0] == tmp_path
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 10)
    # a broken file in the first folder is an error, not silently skipped for a later one
    with pytest.raises(DataFileError, match=str(tmp_path)):
        data.load_raw("test")


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_fallback_offline_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("CVM_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "repo-data")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")

    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataFileError, match="downloading .* failed.*network is unreachable.*apt-get install") as info:
        data.load_raw("test")
    message = str(info.value)
    assert all(str(d) in message for d in (tmp_path / "empty", tmp_path / "repo-data", tmp_path / "no-debian"))
    assert "download=True" not in message, "the hint to download must not be given when downloading just failed"
    assert not list((tmp_path / "empty").glob("*")), "a failed download must leave no file behind"


def test_download_fallback_verifies_what_it_fetched(tmp_path, monkeypatch):
    (tmp_path / "good").mkdir()
    good = _copy_split(tmp_path / "good")
    target = tmp_path / "target"
    target.mkdir()
    monkeypatch.setenv("CVM_DATA", str(target))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "no-repo")

    def serve(url, timeout):
        name = url.rsplit("/", 1)[1]
        path = good / name
        blob = path.read_bytes() if path.exists() else gzip.compress((good / name[:-3]).read_bytes())
        return _FakeResponse(blob)

    monkeypatch.setattr(data.urllib.request, "urlopen", serve)
    images, labels = data.load_raw("test")
    assert images.shape == (10000, 28, 28)
    assert (target / "t10k-images-idx3-ubyte.gz").is_file()

    data._load_file.cache_clear()
    for path in target.iterdir():
        path.unlink()
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(gzip.compress(b"junk")))
    with pytest.raises(DataFileError, match="is corrupt"):
        data.load_raw("test")


def test_tensor_loader_matches_dataloader_batches():
    x = torch.arange(103 * 2, dtype=torch.float32).reshape(103, 2)
    y = torch.arange(103)
    ours = list(data.TensorLoader(x, y, batch_size=10))
    theirs = list(DataLoader(TensorDataset(x, y), batch_size=10))
    assert len(ours) == len(theirs) == 11
    for (a, b), (c, d) in zip(ours, theirs):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert len(data.TensorLoader(x, y, batch_size=10, drop_last=True)) == 10


def test_tensor_loader_shuffles_every_epoch_reproducibly():
    x = torch.arange(50)
    loader = data.TensorLoader(x, batch_size=50, shuffle=True, seed=3)
    first, second = next(iter(loader))[0], next(iter(loader))[0]
    assert sorted(first.tolist()) == list(range(50))
    assert not torch.equal(first, second), "each epoch must draw a new order"
    again = data.TensorLoader(x, batch_size=50, shuffle=True, seed=3)
    assert torch.equal(next(iter(again))[0], first), "the same seed must give the same orders"


def test_tensor_loader_rejects_mismatched_tensors():
    with pytest.raises(ValueError, match="same first dimension"):
        data.TensorLoader(torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        data.TensorLoader(torch.zeros(5), batch_size=0)


# The validation split: pinned, so that a change of the selection cannot pass unnoticed.
VAL_SHA256 = "f4fcec55820a50ff0dec52946df8c4c7c3f7e9c588419b355574eb9b5f479ea7"


def test_splits_sizes_balance_and_disjointness():
    train_x, train_y = data.load_raw("train")
    val_x, val_y = data.load_raw("val")
    all_x, all_y = data.load_raw("trainval")
    assert train_x.shape == (55000, 28, 28) and val_x.shape == (5000, 28, 28)
    assert torch.bincount(val_y).tolist() == [500] * 10
    assert torch.bincount(train_y).tolist() == [5500] * 10
    index = data.val_indices()
    assert index.shape == (5000,) and torch.equal(index, index.sort().values) and index.unique().numel() == 5000
    assert torch.equal(val_x, all_x[index]) and torch.equal(val_y, all_y[index])
    rest = torch.ones(60000, dtype=torch.bool)
    rest[index] = False
    assert torch.equal(train_x, all_x[rest]) and torch.equal(train_y, all_y[rest])
    # disjoint and complete as sets of images, not only of positions: no val image is also a train image
    train_rows = {bytes(row.numpy()) for row in train_x.flatten(1)}
    val_rows = {bytes(row.numpy()) for row in val_x.flatten(1)}
    all_rows = {bytes(row.numpy()) for row in all_x.flatten(1)}
    assert not train_rows & val_rows and train_rows | val_rows == all_rows
    with pytest.raises(ValueError, match="split must be one of"):
        data.fashion_mnist("validation")


def test_val_split_is_fixed_and_ignores_global_rngs():
    import hashlib

    torch.manual_seed(123)
    first = data.val_indices()
    data._val_indices.cache_clear()
    torch.manual_seed(456)
    torch.rand(10)
    second = data.val_indices()
    assert torch.equal(first, second)
    assert hashlib.sha256(str(first.tolist()).encode()).hexdigest() == VAL_SHA256
    # recomputed from the documented rule, independently of the implementation
    labels = data.load_raw("trainval")[1].tolist()
    rule = []
    for cls in range(10):
        members = [i for i, label in enumerate(labels) if label == cls]
        members.sort(key=lambda i: hashlib.sha256(f"{data.VAL_KEY}:{i}".encode()).digest())
        rule += members[:500]
    assert sorted(rule) == first.tolist()


def test_val_split_is_the_same_in_another_process():
    import subprocess
    import sys

    code = "import hashlib; from common import data; print(hashlib.sha256(str(data.val_indices().tolist()).encode()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == VAL_SHA256


def test_loaders_with_val_split():
    train, val, test = data.loaders(100, train_limit=300, val=True)
    assert train.num_examples == 300 and val.num_examples == 5000 and test.num_examples == 10000
    assert torch.equal(train.tensors[0], data.fashion_mnist("train", limit=300)[0])
    assert torch.equal(val.tensors[1], data.fashion_mnist("val")[1])
    old_train, old_test = data.loaders(100, train_limit=300)   # the notebooks' call: all 60,000, file order
    assert torch.equal(old_train.tensors[0], data.fashion_mnist("trainval", limit=300)[0])
    assert old_test.num_examples == 10000


def test_loaders_subset_and_transform():
    train, test = data.loaders(64, train_limit=256, test_limit=128, transform=lambda xb: xb.flip(-1))
    xb, yb = next(iter(train))
    assert xb.shape == (64, 1, 28, 28) and yb.shape == (64,)
    assert len(train) == 4 and len(test) == 1


def test_augment_crop_matches_pad_then_slice_image_by_image():
    images = torch.randn(6, 2, 5, 7)
    augment = data.Augment(crop_padding=2, seed=3, fill=-1.5)
    out = augment(images)
    assert out.shape == images.shape and out.is_contiguous()
    generator = torch.Generator().manual_seed(3)                        # the same draws, one image at a time
    dy, dx = torch.randint(0, 5, (6,), generator=generator), torch.randint(0, 5, (6,), generator=generator)
    for i in range(6):
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2), value=-1.5)
        assert torch.equal(out[i], padded[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7])
    assert out.eq(-1.5).any(), "some crops reach into the padding"


def test_augment_flip_mirrors_about_half_and_is_reproducible():
    images = torch.randn(400, 1, 4, 4)
    out = data.Augment(flip=True, seed=0)(images)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 150 < sum(flipped) < 250
    again = data.Augment(flip=True, seed=0)
    assert torch.equal(again(images), out)
    state = again.state_dict()
    first = again(images)
    again.load_state_dict(state)
    assert torch.equal(again(images), first), "the saved generator state replays the same draws"
    torch.manual_seed(0)
    before = torch.get_rng_state()
    data.Augment(crop_padding=1, flip=True)(images)
    assert torch.equal(torch.get_rng_state(), before), "torch's global generator is not touched"
    assert not data.Augment() and data.Augment(flip=True)
    with pytest.raises(ValueError, match="expected a batch"):
        data.Augment(flip=True)(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="crop_padding"):
        data.Augment(crop_padding=-1)
