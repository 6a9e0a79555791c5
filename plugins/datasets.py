"""Built-in datasets, read from their real on-disk formats with numpy (nothing is downloaded unless asked).

Every reader looks in the user's data root first (also in the folder layout torchvision downloads to),
then, for Fashion-MNIST, in the Debian package `dataset-fashion-mnist`; `download: true` lets torchvision
fetch the files into the data root. Pickled CIFAR batches go through an allow-list unpickler, so a
tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np

from harness import Param, hookimpl
from harness.data import DatasetError, RawDataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STL10_TO_CIFAR10 = np.array([0, 2, 1, 3, 4, 5, 7, 6, 8, 9])  # the reference's STL-10 label remap
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned-byte IDX files: 0x08 type code, then the number of dimensions
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# -- shared helpers ----------------------------------------------------------------------------------

def stratified_indices(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `count` items keeping the class proportions (largest remainder), seeded."""
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    quota = sizes * min(count, len(labels)) / len(labels)
    take = np.floor(quota).astype(int)
    extra = np.argsort(-(quota - take), kind="stable")[: min(count, len(labels)) - take.sum()]
    take[extra] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def _limit(x: np.ndarray, y, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, np.int64)
    if limit is None or limit >= len(y):
        return x, y
    keep = stratified_indices(y, limit)
    return x[keep], y[keep]


def _dataset(params: dict, train: tuple, test: tuple, num_classes: int, mean=None, std=None) -> RawDataset:
    """Apply the `limit_train` / `limit_test` subsampling every dataset offers, and check the contract."""
    return RawDataset(*_limit(*train, params["limit_train"]), *_limit(*test, params["limit_test"]),
                      num_classes, mean, std)


def _existing(path: Path, gz: bool = False) -> Path | None:
    """`path`, or with `gz` also `path.gz`, whichever exists."""
    for candidate in (path, path.with_name(path.name + ".gz"))[: 2 if gz else 1]:
        if candidate.is_file():
            return candidate
    return None


def _locate(params: dict, data_root: Path | None, *, name: str, subdirs: tuple[str, ...], files: tuple[str, ...],
            extra_dirs: tuple[Path, ...] = (), gz: bool = False, download, hint: str = "") -> Path:
    """The first folder holding all `files` (with `gz`, plain or gzipped); else download into the data root."""
    dirs = [Path(data_root) / sub for sub in subdirs] if data_root is not None else []
    dirs += list(extra_dirs)

    def first_complete():
        return next((d for d in dirs if all(_existing(d / f, gz) for f in files)), None)

    found = first_complete()
    if found is None and params["download"]:
        if data_root is None:
            raise DatasetError(f"{name}: download: true needs a data root to download into")
        download(Path(data_root))
        found = first_complete()
    if found is None:
        looked = (", ".join(map(str, dirs)) or "any folder") + ("" if data_root is not None else " (no data root is set)")
        places = ", ".join("the data root itself" if sub == "." else f"<data root>/{sub}" for sub in subdirs)
        raise DatasetError(f"{name}: {', '.join(files)}{' (or .gz)' if gz else ''} not found in {looked}; "
                           f"{hint}put them in {places}, or set download: true")
    return found


def _torchvision_download(class_name: str, *splits: dict):
    """A downloader that lets torchvision fetch `class_name` (one call per split) into a root folder."""
    def download(root: Path) -> None:
        import torchvision.datasets

        try:
            for split in splits:
                getattr(torchvision.datasets, class_name)(root=str(root), download=True, **split)
        except Exception as exc:  # no network, bad checksum, full disk: all are one-line dataset errors
            raise DatasetError(f"{root}: torchvision could not download {class_name}: {exc}") from exc
    return download


# -- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------------

def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (gzipped or not) with `ndim` dimensions: 3 for images, 1 for labels."""
    what = "image" if ndim == 3 else "label"
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read IDX {what} file ({exc})") from exc
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[ndim]:
        raise DatasetError(f"{path}: not an IDX {what} file (magic {IDX_MAGIC[ndim]} expected, got {magic})")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
    if len(raw) - header != int(np.prod(shape)):
        raise DatasetError(f"{path}: IDX header promises {shape} = {int(np.prod(shape))} bytes, "
                           f"file holds {len(raw) - header}")
    return np.frombuffer(bytearray(raw[header:]), np.uint8).reshape(shape)


def _idx_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(_existing(folder / images, gz=True), 3), read_idx(_existing(folder / labels, gz=True), 1)
    if len(x) != len(y):
        raise DatasetError(f"{folder / images}: {len(x)} images but {folder / labels} has {len(y)} labels")
    return x, y.astype(np.int64)


def _idx_dataset(params, data_root, *, name, subdirs, extra_dirs=(), torchvision_class, hint="", mean, std):
    folder = _locate(params, data_root, name=name, subdirs=subdirs, files=MNIST_FILES, extra_dirs=extra_dirs, gz=True,
                     download=_torchvision_download(torchvision_class, {"train": True}), hint=hint)
    return _dataset(params, _idx_pair(folder, *MNIST_FILES[:2]), _idx_pair(folder, *MNIST_FILES[2:]), 10, mean, std)


def debian_fashion_mnist_dirs() -> tuple[Path, ...]:
    """Where `apt-get install dataset-fashion-mnist` puts the files, plus a glob in case a release moves them."""
    return tuple(dict.fromkeys([DEBIAN_FASHION_MNIST, *sorted(Path("/usr/share").glob("*/fashion-mnist"))]))


def load_fashion_mnist(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """Fashion-MNIST from the data root, else the Debian package, else (download: true) torchvision."""
    return _idx_dataset(params, data_root, name="fashion-mnist", subdirs=(".", "fashion-mnist", "FashionMNIST/raw"),
                        extra_dirs=debian_fashion_mnist_dirs(), torchvision_class="FashionMNIST",
                        hint="install them with `sudo apt-get install dataset-fashion-mnist`, ",
                        mean=(0.2860,), std=(0.3530,))


def load_mnist(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """MNIST from data_root/mnist or torchvision's data_root/MNIST/raw."""
    return _idx_dataset(params, data_root, name="mnist", subdirs=("mnist", "MNIST/raw"), torchvision_class="MNIST",
                        mean=(0.1307,), std=(0.3081,))


# -- scikit-learn digits -----------------------------------------------------------------------------

def load_digits(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """scikit-learn's bundled 8x8 digits (always offline), split into train/test stratified with seed 0."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    test = stratified_indices(labels, int(round(params["test_fraction"] * len(labels))))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return _dataset(params, (images[train], labels[train]), (images[test], labels[test]), 10)


# -- CIFAR pickles -----------------------------------------------------------------------------------

def _numpy_core():
    return getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: any other global is refused, so nothing can run.

    The real CIFAR files are Python 2 pickles of dicts holding lists, byte strings and one uint8 array;
    `_codecs.encode` is how Python 3's protocol 2 spells a bytes object.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path
        core = _numpy_core()
        self.allowed = {
            ("_codecs", "encode"): codecs.encode,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            **{(f"numpy.{pkg}.multiarray", "_reconstruct"): core.multiarray._reconstruct for pkg in ("core", "_core")},
            **{(f"numpy.{pkg}.numeric", "_frombuffer"): core.numeric._frombuffer for pkg in ("core", "_core")},
        }

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DatasetError(f"{self.path}: refusing to unpickle {module}.{name} "
                               "(only plain containers and numpy arrays are allowed)") from None


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch as a dict with str keys, through the allow-list unpickler."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DatasetError(f"{path}: not a CIFAR python batch (a dict with a b'data' entry expected)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_split(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        batch = read_cifar_batch(folder / name)
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or label_key not in batch:
            raise DatasetError(f"{folder / name}: expected data of shape (N, 3072) and {label_key!r} labels, "
                               f"got data {data.shape} and keys {sorted(batch)}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _cifar(params, data_root, *, name, folder, train, test, label_key, num_classes, torchvision_class, mean, std):
    where = _locate(params, data_root, name=name, subdirs=(folder,), files=(*train, *test),
                    download=_torchvision_download(torchvision_class, {"train": True}))
    return _dataset(params, _cifar_split(where, train, label_key), _cifar_split(where, test, label_key),
                    num_classes, mean, std)


def load_cifar10(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """CIFAR-10 from data_root/cifar-10-batches-py (the python version of the dataset)."""
    return _cifar(params, data_root, name="cifar10", folder="cifar-10-batches-py",
                  train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], label_key="labels",
                  num_classes=10, torchvision_class="CIFAR10",
                  mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))


def load_cifar100(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """CIFAR-100 (fine labels) from data_root/cifar-100-python."""
    return _cifar(params, data_root, name="cifar100", folder="cifar-100-python", train=["train"], test=["test"],
                  label_key="fine_labels", num_classes=100, torchvision_class="CIFAR100",
                  mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))


# -- SVHN (.mat) and STL-10 (binary) -----------------------------------------------------------------

def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:
        raise DatasetError(f"{path}: not a MATLAB .mat file ({type(exc).__name__}: {exc})") from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DatasetError(f"{path}: expected X of shape (32, 32, 3, N) and N labels in y")
    labels = y.reshape(-1).astype(np.int64) % 10  # SVHN stores digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), labels


def load_svhn(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """SVHN cropped digits from train_32x32.mat / test_32x32.mat; the reference does not normalise it."""
    files = ("train_32x32.mat", "test_32x32.mat")
    folder = _locate(params, data_root, name="svhn", subdirs=(".", "svhn", "SVHN"), files=files,
                     download=_torchvision_download("SVHN", {"split": "train"}, {"split": "test"}))
    return _dataset(params, _svhn_split(folder / files[0]), _svhn_split(folder / files[1]), 10,
                    (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _stl10_split(folder: Path, split: str, remap: bool) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    raw = np.fromfile(image_file, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DatasetError(f"{image_file}: size {raw.size} is not a whole number of 3x96x96 images")
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)  # stored column-major: (N, C, W, H)
    labels = np.fromfile(label_file, dtype=np.uint8).astype(np.int64)
    if len(labels) != len(images) or not np.all((labels >= 1) & (labels <= 10)):
        raise DatasetError(f"{label_file}: expected {len(images)} labels in 1..10")
    labels -= 1
    return np.ascontiguousarray(images), STL10_TO_CIFAR10[labels] if remap else labels


def load_stl10(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """STL-10's labelled splits from data_root/stl10_binary, labels remapped to CIFAR-10's order by default."""
    folder = _locate(params, data_root, name="stl10", subdirs=("stl10_binary", "stl10/stl10_binary"),
                     files=tuple(f"{s}_{k}.bin" for s in ("train", "test") for k in ("X", "y")),
                     download=_torchvision_download("STL10", {"split": "train"}))
    remap = params["remap_labels"]
    return _dataset(params, _stl10_split(folder, "train", remap), _stl10_split(folder, "test", remap), 10,
                    IMAGENET_MEAN, IMAGENET_STD)


# -- image folders -----------------------------------------------------------------------------------

def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _labelled_files(folder: Path, labels: str, classes: list[str] | None, limit: int | None):
    """(files, labels, classes) for one split folder: class sub-folders, or every image with label 0."""
    if labels == "none":
        files = _images_under(folder)[:limit]
        return files, [0] * len(files), ["all"]
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise DatasetError(f"{folder}: no class sub-folders (for a flat folder of images set labels: none)")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{folder}: class folders {unknown} do not exist in the training split")
    files, targets = [], []
    for index, name in enumerate(classes):
        chosen = _images_under(folder / name)[:limit] if (folder / name).is_dir() else []
        files += chosen
        targets += [index] * len(chosen)
    return files, targets, classes


def _read_images(files: list[Path], size: int) -> np.ndarray:
    """Decode in threads (PIL releases the GIL); RGB, shorter side resized to `size`, centre crop."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BILINEAR))
        except Exception as exc:
            raise DatasetError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc

    with ThreadPoolExecutor() as pool:
        images = list(pool.map(read, files))
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


def load_image_folder(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    """ImageNette, CINIC-10, CelebA, FFHQ...: `path/train` and `path/val` (or `path/test`), class = sub-folder.

    A folder without the train sub-folder is one pool of images, split stratified by `test_fraction`.
    A relative `path` starts at the data root.
    """
    if not params["path"]:
        raise DatasetError("image-folder: the parameter `path` (the folder holding the images) is required")
    root = Path(params["path"]).expanduser()
    if not root.is_absolute() and data_root is not None:
        root = Path(data_root) / root
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    labels, limit = params["labels"], params["limit_per_class"]
    train_dir = root / params["train_dir"]
    if train_dir.is_dir():
        test_dir = next((d for d in (root / params["test_dir"], root / "test") if d.is_dir()), None)
        if test_dir is None:
            raise DatasetError(f"{root}: no test folder ({params['test_dir']!r} or 'test') next to {train_dir.name!r}")
        train_files, train_y, classes = _labelled_files(train_dir, labels, None, limit)
        test_files, test_y, _ = _labelled_files(test_dir, labels, classes, limit)
    else:
        files, targets, classes = _labelled_files(root, labels, None, limit)
        targets = np.asarray(targets, np.int64)
        is_test = np.zeros(len(files), bool)
        if files:
            is_test[stratified_indices(targets, int(round(params["test_fraction"] * len(files))))] = True
        train_files = [f for f, held_out in zip(files, is_test) if not held_out]
        test_files = [f for f, held_out in zip(files, is_test) if held_out]
        train_y, test_y = targets[~is_test], targets[is_test]
    if not train_files:
        raise DatasetError(f"{train_dir if train_dir.is_dir() else root}: no images found "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return _dataset(params, (_read_images(train_files, image_size), train_y),
                    (_read_images(test_files, image_size), test_y), len(classes), IMAGENET_MEAN, IMAGENET_STD)


# -- registration ------------------------------------------------------------------------------------

_LIMITS = (
    Param("limit_train", "int", None, nullable=True, min=1, max=100_000_000,
          help="keep this many training images (stratified, seed 0): CPU-sized runs"),
    Param("limit_test", "int", None, nullable=True, min=1, max=100_000_000, help="keep this many test images (stratified, seed 0)"),
)
_DOWNLOAD = Param("download", "bool", False, help="let torchvision download the files into the data root")


@hookimpl
def register_datasets(register):
    here = "plugins.datasets"
    register("fashion-mnist", factory=f"{here}:load_fashion_mnist", params=[*_LIMITS, _DOWNLOAD], version="1",
             description="Fashion-MNIST, 70k 28x28 grey images (data root, Debian dataset-fashion-mnist, or download)")
    register("mnist", factory=f"{here}:load_mnist", params=[*_LIMITS, _DOWNLOAD], version="1",
             description="MNIST, 70k 28x28 grey handwritten digits (IDX files in the data root, or download)")
    register("digits", factory=f"{here}:load_digits", version="1",
             description="scikit-learn's 1,797 8x8 handwritten digits (offline)",
             params=[*_LIMITS, Param("test_fraction", "float", 0.2, min=0.01, max=0.99,
                                     help="share of each class held out as the test split (seed 0)")])
    register("cifar10", factory=f"{here}:load_cifar10", params=[*_LIMITS, _DOWNLOAD], version="1",
             description="CIFAR-10, 60k 32x32 colour images (python batches in the data root, or download)")
    register("cifar100", factory=f"{here}:load_cifar100", params=[*_LIMITS, _DOWNLOAD], version="1",
             description="CIFAR-100 with its 100 fine labels (python batches in the data root, or download)")
    register("svhn", factory=f"{here}:load_svhn", params=[*_LIMITS, _DOWNLOAD], version="1",
             description="SVHN cropped 32x32 house-number digits (.mat files in the data root, or download)")
    register("stl10", factory=f"{here}:load_stl10", version="1",
             description="STL-10's 13k labelled 96x96 images (stl10_binary in the data root, or download)",
             params=[*_LIMITS, _DOWNLOAD,
                     Param("remap_labels", "bool", True, help="reorder labels as the reference does "
                                                              "(bird<->car, horse<->monkey) to line up with CIFAR-10")])
    register("image-folder", factory=f"{here}:load_image_folder", version="1",
             description="A folder of images (ImageNette, CINIC-10, CelebA, FFHQ), resized to the scenario size",
             params=[Param("path", "str", None, nullable=True, path=True, help="the folder (relative paths start at the data root)"),
                     Param("train_dir", "str", "train", path=True, help="training sub-folder"),
                     Param("test_dir", "str", "val", path=True, help="test sub-folder ('test' is tried when it is missing)"),
                     Param("labels", "str", "folders", choices=("folders", "none"),
                           help="folders: class = sub-folder name; none: one class (unlabelled images)"),
                     Param("limit_per_class", "int", None, nullable=True, min=1, max=100_000_000,
                           help="read at most this many images per class and split"),
                     Param("test_fraction", "float", 0.2, min=0.01, max=0.99,
                           help="test share when the folder has no train sub-folder"),
                     *_LIMITS])
