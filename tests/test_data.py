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
    for name in data.SPLITS[split]:
        for candidate in (src / f"{name}.gz", src / name):
            if candidate.is_file():
                shutil.copy(candidate, tmp_path / candidate.name)
    return tmp_path


def test_real_data_shapes_labels_and_statistics():
    images, labels = data.load_raw("train")
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
    assert "apt-get install dataset-fashion-mnist" in message


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
    monkeypatch.setenv("CVM_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "repo-data")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")

    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataFileError, match="downloading .* failed.*network is unreachable.*apt-get install"):
        data.load_raw("test")
    assert not list((tmp_path / "empty").glob("*")), "a failed download must leave no file behind"


def test_download_fallback_verifies_what_it_fetched(tmp_path, monkeypatch):
    (tmp_path / "good").mkdir()
    good = _copy_split(tmp_path / "good")
    target = tmp_path / "target"
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


def test_loaders_subset_and_transform():
    train, test = data.loaders(64, train_limit=256, test_limit=128, transform=lambda xb: xb.flip(-1))
    xb, yb = next(iter(train))
    assert xb.shape == (64, 1, 28, 28) and yb.shape == (64,)
    assert len(train) == 4 and len(test) == 1
