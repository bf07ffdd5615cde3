"""Class-folder data for the classifier: the image files of each class folder, each image made the classifier's
input (grey or RGB, square, normalised), a stratified split that keeps identical images together, and the seeded
augmentation (torchvision.transforms.v2) every model of a run sees identically."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from cellops.config import FromMapping
from cellops.errors import ImageInputError
from cellops.intensity import Normalization
from cellops.io import FileReading, image_geometry, read_image_file

SPLITS = ("train", "val", "test")


def stratified_split(labels: Sequence[int], groups: Sequence[str], *, val_fraction: float, test_fraction: float,
                     seed: int) -> np.ndarray:
    """The split ("train", "val" or "test") of every image: per class, the same fractions in each split.

    ``groups`` (e.g. the content hash of each file) keep images that are the same picture in one split, so no
    test image is also a training image. Each class gets at least one group in val and test when it has three
    or more and the fraction is positive.

    Parameters
    ----------
    labels : sequence of int
        Class index of every image.
    groups : sequence of str
        Group of every image (e.g. its content hash); a group is never split.
    val_fraction : float
        Fraction of each class's groups held out for validation.
    test_fraction : float
        Fraction of each class's groups held out for test; with ``val_fraction`` below 1.
    seed : int
        Seed of the shuffle that picks the groups.

    Returns
    -------
    np.ndarray
        The split of every image, one of :data:`SPLITS`.

    Examples
    --------
    >>> split = stratified_split([0] * 10 + [1] * 10, [str(i) for i in range(20)], val_fraction=0.2,
    ...                          test_fraction=0.2, seed=0)
    >>> [int(np.sum(split[:10] == s)) for s in SPLITS], [int(np.sum(split[10:] == s)) for s in SPLITS]
    ([6, 2, 2], [6, 2, 2])
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must leave images to train on")
    split = np.full(len(labels), "train", dtype=object)
    rng = np.random.default_rng(seed)
    # A group goes with the first label it appears under (validation reports conflicting labels).
    first_label: dict[str, int] = {}
    for group, label in zip(groups.tolist(), labels.tolist()):
        first_label.setdefault(group, label)
    for label in np.unique(labels):
        members = np.array(sorted(g for g, first in first_label.items() if first == label))
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else round(test_fraction * n)
        n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 3 else round(val_fraction * n)
        split[np.isin(groups, members[:n_test])] = "test"
        split[np.isin(groups, members[n_test:n_test + n_val])] = "val"
    return split.astype(str)


@dataclass(frozen=True)
class SplitSettings(FromMapping):
    """Fractions of each class held out for validation and test, and the seed that picks them.

    Attributes
    ----------
    val_fraction : float
        Fraction of each class held out for validation.
    test_fraction : float
        Fraction of each class held out for test.
    seed : int
        Seed of :func:`stratified_split`.
    """

    val_fraction: float
    test_fraction: float
    seed: int


def classification_test_fingerprint(content_hashes: Sequence[str], labels: Sequence[str], splits: Sequence[str],
                         positive_class: str) -> str:
    """One md5 naming a test set: the contents and labels of its files and the class called positive. Scores
    measured on the same fingerprint are comparable, whatever the file names or the order.

    Parameters
    ----------
    content_hashes : sequence of str
        Content hash of every file.
    labels : sequence of str
        Class name of every file.
    splits : sequence of str
        Split of every file; only ``"test"`` files count.
    positive_class : str
        The class called positive.

    Returns
    -------
    str
        Hexadecimal md5 digest.

    Examples
    --------
    >>> a = classification_test_fingerprint(["x", "y"], ["ec", "non"], ["test", "test"], "ec")
    >>> a == classification_test_fingerprint(["y", "x"], ["non", "ec"], ["test", "test"], "ec"), a == classification_test_fingerprint(
    ...     ["x", "y"], ["ec", "non"], ["test", "train"], "ec")
    (True, False)
    """
    import hashlib

    items = sorted(f"{h}:{label}" for h, label, split in zip(content_hashes, labels, splits) if split == "test")
    return hashlib.md5("\n".join([f"positive:{positive_class}", *items]).encode()).hexdigest()


def index_class_folder(data_dir: str | Path, split: SplitSettings) -> dict:
    """Every image of ``data_dir/<class>/`` with its label (index into ``classes``), content md5 and split: the
    dataset index the pipeline passes between steps and the benchmark rebuilds the test split from.

    Parameters
    ----------
    data_dir : str or Path
        Root of the class folders (:func:`list_class_folders`).
    split : SplitSettings
        Fractions and seed of the split.

    Returns
    -------
    dict
        ``{"root", "classes", "files", "labels", "md5", "splits"}`` (lists, one entry per file).
    """
    from cellops.data_version import file_md5

    dataset = list_class_folders(data_dir)
    hashes = [file_md5(path) for path in dataset.files]
    splits = stratified_split(dataset.labels, hashes, val_fraction=split.val_fraction,
                              test_fraction=split.test_fraction, seed=split.seed)
    return {"root": str(data_dir), "classes": dataset.classes, "files": [str(p) for p in dataset.files],
            "labels": list(dataset.labels), "md5": hashes, "splits": splits.tolist()}


@dataclass(frozen=True)
class Augmentation(FromMapping):
    """Random changes applied to each training image (all from the YAML config; 0 or false turns one off).

    Attributes
    ----------
    flip : bool
        Random horizontal and vertical flips.
    rotate90 : bool
        Random quarter turns: micrographs have no "up".
    brightness : float
        ColorJitter brightness factor range 1 +- this.
    contrast : float
        ColorJitter contrast factor range 1 +- this.
    blur_sigma : float
        Gaussian blur up to this sigma (px), half of the time.
    noise_sigma : float
        Standard deviation of additive Gaussian noise, on the 0..1 scale.
    """

    flip: bool  # horizontal and vertical flips
    rotate90: bool  # quarter turns: micrographs have no "up"
    brightness: float  # ColorJitter brightness factor range 1 +- this
    contrast: float
    blur_sigma: float  # Gaussian blur up to this sigma (px), half of the time
    noise_sigma: float  # additive Gaussian noise, 0..1 scale


def photometric_transforms(brightness: float, contrast: float, blur_sigma: float, noise_sigma: float) -> list:
    """Intensity changes every model family shares (image only; boxes and masks pass through), in this order:
    ColorJitter, a random Gaussian blur (half the time), Gaussian noise; zero strengths leave each out.

    Parameters
    ----------
    brightness : float
        ColorJitter brightness strength.
    contrast : float
        ColorJitter contrast strength.
    blur_sigma : float
        Largest sigma of the blur (px).
    noise_sigma : float
        Standard deviation of the noise.

    Returns
    -------
    list
        torchvision.transforms.v2 transforms, to be composed.

    Examples
    --------
    >>> [type(t).__name__ for t in photometric_transforms(0.2, 0.0, 1.0, 0.0)]
    ['ColorJitter', 'RandomApply']
    """
    transforms: list = []
    if brightness or contrast:
        transforms.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    if blur_sigma > 0:
        transforms.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, blur_sigma))], p=0.5))
    if noise_sigma > 0:
        transforms.append(v2.GaussianNoise(sigma=noise_sigma, clip=True))
    return transforms


def build_augmentation(aug: Augmentation) -> v2.Compose:
    """The torchvision.transforms.v2 pipeline of ``aug`` for one float image (C, H, W) in [0, 1].

    Parameters
    ----------
    aug : Augmentation
        Which changes to apply, and how strongly.

    Returns
    -------
    v2.Compose
        The pipeline; its output is clamped to [0, 1].
    """
    transforms: list = []
    if aug.flip:
        transforms += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if aug.rotate90:
        transforms.append(v2.RandomApply([v2.RandomRotation((90, 90))], p=0.5))
    transforms += photometric_transforms(aug.brightness, aug.contrast, aug.blur_sigma, aug.noise_sigma)
    transforms.append(v2.Lambda(lambda x: x.clamp(0.0, 1.0)))
    return v2.Compose(transforms)


def augment_batch(images: torch.Tensor, transform: v2.Compose, seed: int) -> torch.Tensor:
    """Each image of the batch transformed on its own, from a random state set by ``seed`` alone (the global
    generator is left as it was), so that every model of a run sees the very same augmented images.

    Parameters
    ----------
    images : torch.Tensor
        Batch (N, C, H, W) of float images in [0, 1].
    transform : v2.Compose
        The augmentation (:func:`build_augmentation`).
    seed : int
        Seed of this batch's random changes.

    Returns
    -------
    torch.Tensor
        The augmented batch, same shape.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in images])


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(batch number, indices) of one shuffled epoch; the order depends on (seed, epoch) only. A last batch of one
    image is dropped (batch normalisation cannot train on it).

    Parameters
    ----------
    n : int
        Number of images.
    batch_size : int
        Images per batch.
    seed : int
        Seed of the run.
    epoch : int
        The epoch's number.

    Yields
    ------
    number : int
        The batch's number in the epoch.
    indices : np.ndarray
        Indices of its images.

    Examples
    --------
    >>> [len(batch) for _, batch in epoch_batches(7, 3, seed=0, epoch=0)]
    [3, 3]
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for number, start in enumerate(range(0, n, batch_size)):
        batch = order[start:start + batch_size]
        if len(batch) > 1:
            yield number, batch


#: Image file types a class-folder dataset may hold (what microscopes and labs export).
CLASS_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ClassFolderDataset:
    """Image files labelled by the folder they sit in (``root/<class>/<image>``), the layout labs keep.

    ``files[i]`` has label ``labels[i]``, an index into ``classes`` (folder names, sorted).

    Attributes
    ----------
    files : list of Path
        The image files.
    labels : list of int
        Class index of every file.
    classes : list of str
        Class names (folder names, sorted).
    """

    files: list[Path]
    labels: list[int]
    classes: list[str]

    def counts(self) -> dict[str, int]:
        """Images per class.

        Returns
        -------
        dict of str to int
            Number of files of each class, in the order of ``classes``.
        """
        return {name: self.labels.count(i) for i, name in enumerate(self.classes)}


def list_class_folders(root: str | Path) -> ClassFolderDataset:
    """The images of every class folder under ``root`` (any number of classes; PNG, TIFF or JPEG files).

    Parameters
    ----------
    root : str or Path
        Folder with one sub-folder of images per class.

    Returns
    -------
    ClassFolderDataset
        The image files, their labels and the class names.

    Raises
    ------
    FileNotFoundError
        Naming the problem when ``root`` is missing, holds fewer than two class folders, or a class folder holds
        no image (other files, such as notes, are ignored).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("non_ec/a.png", "ec/b.tif", "ec/c.jpg", "ec/notes.txt"):
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"x")
    >>> data = list_class_folders(root)
    >>> data.classes, data.counts()
    (['ec', 'non_ec'], {'ec': 2, 'non_ec': 1})
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected one sub-folder of images per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise FileNotFoundError(f"{root}: found {len(classes)} class folder(s) {classes}; a classifier needs at least two")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = sorted(p for p in (root / name).iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CLASS_IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"{root / name}: no images ({', '.join(CLASS_IMAGE_SUFFIXES)}) in class {name!r}")
        files += images
        labels += [index] * len(images)
    return ClassFolderDataset(files=files, labels=labels, classes=classes)


#: ITU-R BT.601 luma weights of red, green and blue: the grey level :func:`to_model_input` makes of a colour image.
LUMA_WEIGHTS_BT601 = (0.299, 0.587, 0.114)


def to_model_input(image: np.ndarray, *, channels: int, size: int, normalization: Normalization,
                   source: str = "") -> np.ndarray:
    """One decoded image as a classifier's input: float32 of shape ``(channels, size, size)``.

    Parameters
    ----------
    image : np.ndarray
        A 2-D grey image, an ``HxWx3`` (RGB) or ``HxWx4`` (RGBA) colour image, or a one-plane stack; uint8,
        uint16 or float (as :func:`cellops.io.read_image_file` returns it).
    channels : int
        1 gives grey: a colour image becomes its ITU-R BT.601 luma
        ``0.299 R + 0.587 G + 0.114 B`` (:data:`LUMA_WEIGHTS_BT601`, in float64); 3 gives RGB: a grey image is
        repeated in the three channels. An alpha channel is dropped (not composited).
    size : int
        Side of the square output. A non-square image is first cropped to its centred largest square (the
        cells at the borders of the long side are lost, none is stretched); then it is resized with area
        averaging (``cv2.INTER_AREA``; bilinear when enlarging) if its side differs from ``size``.
    normalization : Normalization
        How values are scaled (:class:`cellops.intensity.Normalization`, stored with the model): by
        the image's own percentiles over all its channels (the default; the same picture as 8-bit, 16-bit or float
        gives the same input), or by the dtype's fixed range. It is applied to the whole image, before cropping.
    source : str, optional
        Named in every error message (the file the image came from).

    Returns
    -------
    np.ndarray
        float32 array ``(channels, size, size)``, normalised.

    Raises
    ------
    ImageInputError
        Naming ``source`` and the problem: empty image, a stack of several planes or a 4-D array (see
        :func:`cellops.io.image_geometry`), a channel count other than 1, 3 or 4, an unsupported dtype, NaN or
        infinity, a constant image (percentile mode), a float image outside [0, 1] (dtype mode).
    ValueError
        ``channels`` other than 1 or 3, or ``size`` below 1 (a caller's mistake, not the file's).

    Examples
    --------
    >>> from cellops.intensity import Normalization
    >>> red = np.zeros((4, 6, 3), np.uint8); red[..., 0] = 255
    >>> to_model_input(red, channels=1, size=2, normalization=Normalization(mode="dtype")).astype(float).round(3).tolist()
    [[[0.299, 0.299], [0.299, 0.299]]]
    >>> ramp = np.arange(64, dtype=np.uint16).reshape(8, 8)
    >>> to_model_input(ramp, channels=3, size=4, normalization=Normalization()).shape
    (3, 4, 4)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if size < 1:
        raise ValueError(f"size must be at least 1 pixel, got {size}")
    name = source or "image"
    height, width, n_channels = image_geometry(image, source=source)
    if n_channels not in (1, 3, 4):
        raise ImageInputError(
            f"{name}: {n_channels} channels (shape {image.shape}); supported: 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if n_channels == 4:  # alpha is not signal: it takes no part in the intensity scale
        image = image.reshape(height, width, n_channels)[..., :3]
        n_channels = 3
    values = normalization.apply(image.reshape(height, width, n_channels), source=name).astype(np.float64)
    if n_channels == 1:
        planes = values if channels == 1 else np.repeat(values, 3, axis=2)
    elif channels == 1:
        red, green, blue = LUMA_WEIGHTS_BT601
        planes = (red * values[..., 0] + green * values[..., 1] + blue * values[..., 2])[..., None]
    else:
        planes = values[..., :3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    planes = planes[top:top + side, left:left + side]
    if side != size:
        import cv2

        planes = cv2.resize(np.ascontiguousarray(planes), (size, size), interpolation=cv2.INTER_AREA)
        planes = planes.reshape(size, size, channels)  # cv2 drops a last axis of one channel
    return np.ascontiguousarray(planes.transpose(2, 0, 1), dtype=np.float32)


def load_class_images(paths: Sequence[Path], *, channels: int, size: int, normalization: Normalization,
                      reading: FileReading | None = None) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Read image files into one float32 batch ``(N, channels, size, size)`` for a classifier.

    Each file goes through :func:`cellops.io.read_image_file` and :func:`to_model_input` (same ``channels``,
    ``size`` and ``normalization``).
    A file that cannot be used does not stop the batch: it is left out of the array and listed with its error
    message instead, so the caller decides whether a bad file is fatal. The rows of the array follow ``paths``
    with the failed files left out.

    Parameters
    ----------
    paths : sequence of Path
        The image files.
    channels : int
        1 (grey) or 3 (RGB).
    size : int
        Side of the square inputs.
    normalization : Normalization
        How values are scaled, as stored with the model.
    reading : FileReading, optional
        The channel and scene to read from multi-channel or multi-scene files.

    Returns
    -------
    images : np.ndarray
        float32 array ``(N, channels, size, size)``, normalised; ``N`` is 0 when no file was usable.
    errors : list of tuple of (Path, str)
        ``(path, message)`` for every file that was not usable; each message names the file and the problem.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> from cellops.io import write_tiff_stack
    >>> good = write_tiff_stack(folder / "a.tif", np.zeros((6, 8), np.uint16))
    >>> _ = (folder / "b.png").write_text("not an image")
    >>> from cellops.intensity import Normalization
    >>> images, errors = load_class_images([good, folder / "b.png"], channels=1, size=4,
    ...                                    normalization=Normalization(mode="dtype"))
    >>> images.shape, [path.name for path, _ in errors]
    ((1, 1, 4, 4), ['b.png'])
    """
    images: list[np.ndarray] = []
    errors: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        try:
            chosen = reading or FileReading()
            images.append(to_model_input(read_image_file(path, channel=chosen.channel, scene=chosen.scene),
                                         channels=channels, size=size,
                                         normalization=normalization, source=str(path)))
        except ImageInputError as error:
            errors.append((path, str(error)))
    batch = np.stack(images) if images else np.zeros((0, channels, size, size), np.float32)
    return batch, errors


def add_corrections(index: dict, corrections: Sequence) -> dict:
    """The dataset index with corrected images (:func:`cellops.corrections.stored_corrections`) added to the split
    each was imported for (training by default): the test split stays exactly as it was.

    Parameters
    ----------
    index : dict
        The index of :func:`index_class_folder`.
    corrections : sequence of cellops.corrections.StoredCorrection
        The corrected images with their classes.

    Returns
    -------
    dict
        A new index (the argument is not changed).

    Raises
    ------
    ValueError
        For a correction whose class is not one of the dataset's.

    Examples
    --------
    >>> from types import SimpleNamespace as Entry
    >>> index = {"root": "d", "classes": ["a", "b"], "files": ["d/a/1.png"], "labels": [0], "md5": ["x"],
    ...          "splits": ["test"]}
    >>> add_corrections(index, [])["splits"]
    ['test']
    """
    from cellops.data_version import file_md5

    index = {key: list(value) if isinstance(value, list) else value for key, value in index.items()}
    for correction in corrections:
        if correction.label not in index["classes"]:
            raise ValueError(f"correction {correction.id}: class {correction.label!r} is not one of the dataset's "
                             f"({', '.join(index['classes'])})")
        index["files"].append(str(correction.image))
        index["labels"].append(index["classes"].index(correction.label))
        index["md5"].append(file_md5(correction.image))
        index["splits"].append(correction.split)
    return index
