"""Reading the standard ``cifar-100-python`` pickle layout, with clear errors for bad folders and files."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR100

from ask_the_expert.method.cifar100_classes import FINE_CLASSES, FINE_TO_COARSE, SUPERCLASSES
from ask_the_expert.utils.errors import SuiteError

FOLDER = "cifar-100-python"
# md5 sums of the files torchvision downloads.
PUBLISHED_MD5 = {
    **dict(CIFAR100.train_list + CIFAR100.test_list),
    CIFAR100.meta["filename"]: CIFAR100.meta["md5"],
}
IMAGE_SHAPE = (32, 32, 3)
# Everything the CIFAR-100 python pickles need to rebuild their content (a dict of lists, strings and one uint8
# array, pickled by numpy 1 or 2): any other global is refused, so a file that is not CIFAR-100 never runs code.
PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how protocol 2 stores bytes under Python 3
    }
)


class DataError(SuiteError):
    """The dataset folder or one of its files cannot be used."""


@dataclass(frozen=True)
class CifarSplit:
    """One pickle file of CIFAR-100: images as uint8 NHWC and both label sets."""

    images: np.ndarray  # (N, 32, 32, 3) uint8
    fine_labels: np.ndarray  # (N,) int64
    coarse_labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.fine_labels)


@dataclass(frozen=True)
class CifarMeta:
    class_names: tuple[str, ...]
    superclass_names: tuple[str, ...]


def split_file(root: str | Path, split: str) -> Path:
    return Path(root) / FOLDER / split


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(root: str | Path, name: str, purpose: str, download: str = "--data.download true") -> Path:
    """The path of CIFAR-100 file ``name`` (meta, train, test) under ``root``; DataError naming the fix if absent
    (``download``: how the command at hand fetches the files)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"The CIFAR-100 data folder '{root}' does not exist. Point --data.data_dir at the folder that "
            f"contains '{FOLDER}/', or pass {download} to fetch it with torchvision (needs internet)."
        )
    path = split_file(root, name)
    if not path.is_file():
        raise DataError(
            f"'{path}' is missing, but {purpose} needs it. The folder '{root}' must contain '{FOLDER}/{name}' "
            f"in the standard CIFAR-100 python layout; download it with {download}, or copy the file "
            f"there. (A copy that holds only the training file supports fit and validate, not test.)"
        )
    return path


# Re-packed copies already announced by this process: a pipeline loads the same files in every run, and one warning
# per file says it all.
_WARNED_COPIES: set[tuple[Path, str]] = set()


def _check_md5(path: Path, name: str, check_integrity: bool) -> None:
    actual = file_md5(path)
    if actual == PUBLISHED_MD5[name]:
        return
    if check_integrity:
        raise DataError(
            f"'{path}' has md5 {actual}, not the published {PUBLISHED_MD5[name]}. If this is a re-packed copy "
            f"with the original pixels and labels, pass --data.check_integrity false to load it anyway; "
            f"otherwise delete it and download again with --data.download true."
        )
    if (path, actual) in _WARNED_COPIES:
        return
    _WARNED_COPIES.add((path, actual))
    warnings.warn(
        f"'{path}' differs from the published CIFAR-100 file (md5 {actual}); loading it because "
        f"check_integrity is off. Results are only comparable if its pixels and labels are the original ones.",
        stacklevel=3,
    )


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain data and numpy arrays (PICKLE_GLOBALS)."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-100 file never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            content = _DataUnpickler(f, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        KeyError,
        IndexError,
    ) as err:
        raise DataError(
            f"'{path}' is not a readable CIFAR-100 pickle ({type(err).__name__}: {err}). The file is truncated "
            f"or of another format; delete it and download again with --data.download true."
        ) from None
    if not isinstance(content, dict):
        raise DataError(f"'{path}' holds a {type(content).__name__}, not the CIFAR-100 dict; replace the file.")
    return content


def load_meta(root: str | Path, check_integrity: bool = True) -> CifarMeta:
    """Class and superclass names from ``meta``, checked against the standard CIFAR-100 table."""
    path = require_file(Path(root), "meta", "every stage")
    _check_md5(path, "meta", check_integrity)
    content = _unpickle(path)
    missing = {"fine_label_names", "coarse_label_names"} - set(content)
    if missing:
        raise DataError(f"'{path}' lacks the keys {sorted(missing)}; it is not CIFAR-100 meta. Replace the file.")
    meta = CifarMeta(tuple(content["fine_label_names"]), tuple(content["coarse_label_names"]))
    if meta.class_names != FINE_CLASSES or meta.superclass_names != SUPERCLASSES:
        raise DataError(
            f"The class names in '{path}' are not the standard CIFAR-100 ones (in order); this suite's "
            f"superclass table would not match the data. Replace the file with the original meta."
        )
    return meta


def load_split(root: str | Path, split: str, check_integrity: bool = True, purpose: str = "") -> CifarSplit:
    """Read ``train`` or ``test``; the labels are checked against the standard fine-to-superclass table."""
    path = require_file(Path(root), split, purpose or f"the '{split}' split")
    _check_md5(path, split, check_integrity)
    content = _unpickle(path)
    missing = {"data", "fine_labels", "coarse_labels"} - set(content)
    if missing:
        raise DataError(
            f"'{path}' lacks the keys {sorted(missing)}; it is not a CIFAR-100 file (CIFAR-10 has no "
            f"'fine_labels'). Replace it with the CIFAR-100 python version."
        )
    data = np.asarray(content["data"])
    fine = np.asarray(content["fine_labels"], dtype=np.int64)
    coarse = np.asarray(content["coarse_labels"], dtype=np.int64)
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != np.prod(IMAGE_SHAPE)
        or not (len(data) == len(fine) == len(coarse))
    ):
        raise DataError(
            f"'{path}' has image data of shape {data.shape} ({data.dtype}) for {len(fine)} labels; CIFAR-100 "
            f"stores N x 3072 uint8 rows with one fine and one coarse label each. Replace the file."
        )
    if len(fine) and (fine.min() < 0 or fine.max() >= len(FINE_CLASSES)):
        raise DataError(f"'{path}' has fine labels outside 0..99; it is not CIFAR-100. Replace the file.")
    if not np.array_equal(FINE_TO_COARSE[fine], coarse):
        raise DataError(
            f"The coarse labels in '{path}' disagree with the standard CIFAR-100 fine-to-superclass table; "
            f"the file is corrupted or not CIFAR-100. Replace it."
        )
    # CIFAR rows are channel-planar (3 x 1024); keep HWC for torchvision's image conventions.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return CifarSplit(np.ascontiguousarray(images), fine, coarse)


def download(root: str | Path) -> None:
    """Fetch both splits with torchvision's downloader; offline, say what to copy where."""
    try:
        for train in (True, False):
            CIFAR100(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise DataError(
            f"Downloading CIFAR-100 into '{root}' failed ({type(err).__name__}: {err}). Without internet, copy "
            f"the extracted '{FOLDER}/' folder (files meta, train, test) into '{root}' and run without "
            f"--data.download."
        ) from None
