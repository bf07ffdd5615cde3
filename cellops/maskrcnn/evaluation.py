"""Evaluation of instance segmentation: COCO mask and box AP with faster-coco-eval or pycocotools (maximum detections
set explicitly) and F1 of one-to-one matches at IoU 0.5."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from cellops.coco import segmentation_area, segmentation_bbox, segmentation_ious, to_rle
from cellops.maskrcnn.predict import coco_results, predict_picture

if TYPE_CHECKING:
    import torch

    from cellops.maskrcnn.specs import MaskRCNNServing


@dataclass(frozen=True)
class InstanceScores:
    """COCO AP over IoU 0.50:0.95, AP50 and AP75 for masks and boxes; F1, precision and recall of masks matched
    one to one at IoU >= 0.5 among detections scoring at least the F1 threshold.

    Attributes
    ----------
    mask_ap : float
        Mask AP over IoU 0.50:0.95.
    mask_ap50 : float
        Mask AP at IoU 0.5.
    mask_ap75 : float
        Mask AP at IoU 0.75.
    box_ap : float
        Box AP over IoU 0.50:0.95.
    box_ap50 : float
        Box AP at IoU 0.5.
    box_ap75 : float
        Box AP at IoU 0.75.
    f1_50 : float
        F1 of masks matched at IoU >= 0.5.
    precision_50 : float
        Precision of those matches.
    recall_50 : float
        Recall of those matches.
    """

    mask_ap: float
    mask_ap50: float
    mask_ap75: float
    box_ap: float
    box_ap50: float
    box_ap75: float
    f1_50: float
    precision_50: float
    recall_50: float

    def as_dict(self) -> dict[str, float]:
        """Every score by name (what MLflow logs and the registry compares).

        Returns
        -------
        dict of str to float
            The fields as floats.
        """
        return {k: float(v) for k, v in asdict(self).items()}


#: COCO evaluators that :func:`coco_ap` can use; both give the same AP to 1e-6 (benchmarks/coco_eval.py checks it
#: on the Mask R-CNN test predictions before timing them).
COCO_BACKENDS = ("faster-coco-eval", "pycocotools")
DEFAULT_COCO_BACKEND = "faster-coco-eval"


def coco_ap(ground_truth: dict, detections: list[dict], iou_type: str, max_detections: int,
            backend: str = DEFAULT_COCO_BACKEND) -> tuple[float, float, float]:
    """AP, AP50 and AP75 (COCO's 101-point interpolation, all areas) of ``detections`` (COCO result dicts with
    ``image_id``, ``category_id``, ``score`` and ``segmentation`` RLE or ``bbox``) against ``ground_truth``.
    ``max_detections`` is the per-image cap (pycocotools' default of 100 would ignore detections on crowded
    images). No detections at all score 0. Images with no ground truth instance count their detections as false
    positives. ``backend`` is faster-coco-eval (C++, the default) or pycocotools (the reference).

    Parameters
    ----------
    ground_truth : dict
        COCO dataset (``images`` with ``height`` and ``width``, ``annotations``, ``categories``).
    detections : list of dict
        COCO result dicts.
    iou_type : str
        ``"segm"`` (masks) or ``"bbox"`` (boxes).
    max_detections : int
        Detections per image taken into account.
    backend : str, optional
        One of :data:`COCO_BACKENDS`.

    Returns
    -------
    ap : float
        AP over IoU 0.50:0.95.
    ap50 : float
        AP at IoU 0.5.
    ap75 : float
        AP at IoU 0.75.

    Examples
    --------
    >>> gt = {"images": [{"id": 1, "height": 8, "width": 8}], "categories": [{"id": 1}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16}]}
    >>> det = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 4, 4]}]
    >>> [round(ap, 6) for ap in coco_ap(gt, det, "bbox", 10, "pycocotools")]
    [1.0, 1.0, 1.0]
    >>> [round(ap, 6) for ap in coco_ap(gt, det, "bbox", 10, "faster-coco-eval")]
    [1.0, 1.0, 1.0]
    """
    if backend not in COCO_BACKENDS:
        raise ValueError(f"unknown COCO backend {backend!r}; choose one of {list(COCO_BACKENDS)}")
    if not detections:
        return 0.0, 0.0, 0.0
    sizes = {img["id"]: (img["height"], img["width"]) for img in ground_truth["images"]}
    if iou_type == "segm":
        detections = [{**d, "segmentation": to_rle(d["segmentation"], *sizes[d["image_id"]])} for d in detections]
    gt = {"info": {}, "licenses": [], **ground_truth,
          "annotations": [_evaluable(a, *sizes[a["image_id"]], iou_type) for a in ground_truth["annotations"]]}
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
        options = {}
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Evaluator
        options = {"print_function": lambda *args, **kwargs: None}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = Evaluator(coco_gt, coco_dt, iouType=iou_type, **options)
        evaluator.params.imgIds = [img["id"] for img in ground_truth["images"]]
        evaluator.params.maxDets = [1, 10, int(max_detections)]
        evaluator.evaluate()
        evaluator.accumulate()
    # Read AP off the accumulated precision table at the configured cap: COCOeval.summarize() asks for 100
    # detections for its headline AP whatever maxDets holds, and reports -1 when 100 is not among them.
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]  # IoU thresholds x recall x category, all areas

    def mean_ap(values: np.ndarray) -> float:
        valid = values[values > -1]  # -1: a category without ground truth
        return float(valid.mean()) if valid.size else 0.0

    thresholds = np.asarray(evaluator.params.iouThrs)
    return (mean_ap(precision), mean_ap(precision[np.isclose(thresholds, 0.5)]),
            mean_ap(precision[np.isclose(thresholds, 0.75)]))


def _evaluable(annotation: dict, height: int, width: int, iou_type: str) -> dict:
    """A ground truth annotation as both COCO evaluators take it: ``iscrowd`` and ``area`` given (the area of its
    box, else of its mask, where the file has none), a mask in compressed RLE, a box where boxes are scored."""
    annotation = {**annotation, "iscrowd": annotation.get("iscrowd", 0)}
    if not annotation.get("area"):
        annotation["area"] = (float(annotation["bbox"][2] * annotation["bbox"][3]) if "bbox" in annotation else
                              segmentation_area(annotation["segmentation"], height, width))
    if iou_type == "segm":
        annotation["segmentation"] = to_rle(annotation["segmentation"], height, width)
    elif "bbox" not in annotation:
        annotation["bbox"] = segmentation_bbox(annotation["segmentation"], height, width)
    return annotation


@dataclass(frozen=True)
class MatchedDetections:
    """Every detection of a set of images with whether it matched a ground truth instance, from one greedy run.

    The matching goes through detections by descending score, so the matches among detections scoring at least
    ``t`` are exactly those of the full run restricted to them: counts at any score threshold follow from this one
    record without matching again (what :func:`cellops.thresholds.choose_score_threshold` relies on).

    Attributes
    ----------
    image_ids : np.ndarray
        (images,) the ground truth's image ids, in its order; the units of per-image counts.
    truth_per_image : np.ndarray
        (images,) non-crowd ground truth instances of each image.
    scores : np.ndarray
        (detections,) each detection's score.
    matched : np.ndarray
        (detections,) whether it matched a ground truth instance.
    image_index : np.ndarray
        (detections,) the position in ``image_ids`` of its image.
    min_score : float, optional
        Detections scoring below it were dropped before matching; counts hold for thresholds >= it.
    """

    image_ids: np.ndarray
    truth_per_image: np.ndarray
    scores: np.ndarray
    matched: np.ndarray
    image_index: np.ndarray
    min_score: float = 0.0

    def per_image_counts(self, score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true positives, detections, ground truth instances) of each image, counting detections scoring at
        least ``score_threshold``; the units :func:`cellops.metrics.bootstrap_interval` resamples for F1.

        Parameters
        ----------
        score_threshold : float
            Least score of a detection counted (at least ``min_score``).

        Returns
        -------
        true_positives : np.ndarray
            Matched detections of each image.
        detections : np.ndarray
            Detections of each image.
        truth : np.ndarray
            Ground truth instances of each image.

        Examples
        --------
        >>> m = MatchedDetections(np.array([1, 2]), np.array([1, 2]), np.array([0.9, 0.4, 0.8]),
        ...                       np.array([True, False, True]), np.array([0, 0, 1]))
        >>> [counts.tolist() for counts in m.per_image_counts(0.5)]
        [[1, 1], [1, 1], [1, 2]]
        """
        kept = self.scores >= score_threshold
        n_images = len(self.image_ids)
        true_positives = np.bincount(self.image_index[kept & self.matched], minlength=n_images)
        detections = np.bincount(self.image_index[kept], minlength=n_images)
        return true_positives, detections, self.truth_per_image.copy()

    def f1_at(self, score_threshold: float) -> tuple[float, float, float]:
        """F1, precision and recall over all images of detections scoring at least ``score_threshold``.

        Parameters
        ----------
        score_threshold : float
            Least score of a detection counted (at least ``min_score``).

        Returns
        -------
        f1 : float
            Harmonic mean of precision and recall (0 when both are 0).
        precision : float
            Matched detections over detections (0 without detections).
        recall : float
            Matched detections over ground truth instances (0 without instances).
        """
        kept = self.scores >= score_threshold
        true_positives = int(np.count_nonzero(kept & self.matched))
        n_detections, n_truth = int(np.count_nonzero(kept)), int(self.truth_per_image.sum())
        precision = true_positives / n_detections if n_detections else 0.0
        recall = true_positives / n_truth if n_truth else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return float(f1), float(precision), float(recall)


def match_detections(ground_truth: dict, detections: list[dict], *, iou_threshold: float = 0.5,
                     min_score: float = 0.0) -> MatchedDetections:
    """Match masks one to one: per image and category, detections (scoring at least ``min_score``) go by
    descending score to the unmatched ground truth instance of highest IoU, a match counting when IoU >=
    ``iou_threshold``. Crowd annotations are left out.

    Parameters
    ----------
    ground_truth : dict
        COCO dataset (``images`` with ``height`` and ``width``, ``annotations`` with ``segmentation``).
    detections : list of dict
        COCO result dicts with ``image_id``, ``category_id``, ``score`` and ``segmentation``.
    iou_threshold : float, optional
        IoU a match needs.
    min_score : float, optional
        Detections scoring below it are dropped before matching (they change no match above it).

    Returns
    -------
    MatchedDetections
        Every kept detection with whether it matched, and the ground truth count per image.

    Examples
    --------
    >>> square = [[0, 0, 2, 0, 2, 2, 0, 2]]
    >>> gt = {"images": [{"id": 1, "height": 4, "width": 4}], "categories": [{"id": 1}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square}]}
    >>> det = [{"image_id": 1, "category_id": 1, "score": s, "segmentation": square} for s in (0.9, 0.4)]
    >>> m = match_detections(gt, det)
    >>> m.scores.tolist(), m.matched.tolist(), m.f1_at(0.5), m.f1_at(0.3)
    ([0.9, 0.4], [True, False], (1.0, 1.0, 1.0), (0.6666666666666666, 0.5, 1.0))
    """
    image_ids = [img["id"] for img in ground_truth["images"]]
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    sizes = {img["id"]: (img["height"], img["width"]) for img in ground_truth["images"]}
    truth_by_key: dict[tuple, list] = {}
    for a in ground_truth["annotations"]:
        if a.get("iscrowd", 0):
            continue
        if a["image_id"] not in position:
            raise ValueError(f"annotation {a.get('id')} refers to image {a['image_id']!r}, not among the images")
        truth_by_key.setdefault((a["image_id"], a["category_id"]), []).append(a["segmentation"])
    found_by_key: dict[tuple, list[dict]] = {}
    for d in detections:
        if d["score"] < min_score:
            continue
        if d["image_id"] not in position:
            raise ValueError(f"a detection refers to image {d['image_id']!r}, not among the ground truth's images")
        found_by_key.setdefault((d["image_id"], d["category_id"]), []).append(d)

    truth_per_image = np.zeros(len(image_ids), np.int64)
    for (image_id, _), truth in truth_by_key.items():
        truth_per_image[position[image_id]] += len(truth)
    scores: list[float] = []
    matched: list[bool] = []
    image_index: list[int] = []
    for (image_id, category), found in found_by_key.items():
        found = sorted(found, key=lambda d: -d["score"])  # stable: equal scores keep their input order
        scores += [float(d["score"]) for d in found]
        image_index += [position[image_id]] * len(found)
        hits = np.zeros(len(found), bool)
        truth = truth_by_key.get((image_id, category), [])
        if truth:
            ious = segmentation_ious([d["segmentation"] for d in found], truth, *sizes[image_id])
            taken = np.zeros(len(truth), bool)
            for k, row in enumerate(ious):
                candidates = np.where(~taken & (row >= iou_threshold))[0]
                if len(candidates):
                    taken[candidates[np.argmax(row[candidates])]] = True
                    hits[k] = True
        matched += hits.tolist()
    return MatchedDetections(image_ids=np.asarray(image_ids), truth_per_image=truth_per_image,
                             scores=np.asarray(scores, np.float64), matched=np.asarray(matched, bool),
                             image_index=np.asarray(image_index, np.int64), min_score=float(min_score))


def match_f1(ground_truth: dict, detections: list[dict], *, iou_threshold: float = 0.5,
             score_threshold: float = 0.5) -> tuple[float, float, float]:
    """F1, precision and recall of masks: per image and category, detections (scoring at least
    ``score_threshold``) matched greedily by score to the unmatched ground truth instance of highest IoU, a match
    counting when IoU >= ``iou_threshold`` (see :func:`match_detections`).

    Parameters
    ----------
    ground_truth : dict
        COCO dataset with mask ``segmentation``.
    detections : list of dict
        COCO result dicts with ``segmentation``.
    iou_threshold : float, optional
        IoU a match needs.
    score_threshold : float, optional
        Least score of a detection counted.

    Returns
    -------
    f1 : float
        F1 of the matches.
    precision : float
        Precision of the matches.
    recall : float
        Recall of the matches.

    Examples
    --------
    >>> gt = {"images": [{"id": 1, "height": 4, "width": 4}], "categories": [{"id": 1}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}]}
    >>> det = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}]
    >>> match_f1(gt, det)
    (1.0, 1.0, 1.0)
    """
    matched = match_detections(ground_truth, detections, iou_threshold=iou_threshold, min_score=score_threshold)
    return matched.f1_at(score_threshold)


def evaluate_instances(ground_truth: dict, detections: list[dict], *, max_detections: int,
                       f1_score_threshold: float = 0.5) -> InstanceScores:
    """Every score of :class:`InstanceScores`; ``detections`` carry both ``segmentation`` (RLE) and ``bbox``.

    Parameters
    ----------
    ground_truth : dict
        COCO dataset.
    detections : list of dict
        COCO result dicts with ``segmentation`` and ``bbox``.
    max_detections : int
        Detections per image taken into account by AP.
    f1_score_threshold : float, optional
        Least score of a detection counted by F1.

    Returns
    -------
    InstanceScores
        Mask and box AP, and F1, precision and recall at IoU 0.5.
    """
    mask = coco_ap(ground_truth, [{k: v for k, v in d.items() if k != "bbox"} for d in detections], "segm",
                   max_detections)
    box = coco_ap(ground_truth, [{k: v for k, v in d.items() if k != "segmentation"} for d in detections], "bbox",
                  max_detections)
    f1, precision, recall = match_f1(ground_truth, detections, score_threshold=f1_score_threshold)
    return InstanceScores(*mask, *box, f1, precision, recall)


def evaluate(model: torch.nn.Module, samples: list, ground_truth: dict,
             settings: MaskRCNNServing) -> tuple[InstanceScores, list[dict]]:
    """Predict every (image, target) sample as it would be served and score it against ``ground_truth`` (COCO).

    AP ranks every detection the model reports (its own low ``score_threshold``), as COCO AP is defined: cutting
    at the serving threshold would truncate the precision-recall curve. F1 counts only detections at or above
    ``settings.score_threshold``, i.e. what a user gets.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN (left in eval mode).
    samples : list
        (image (3, H, W) normalised as served, target with ``image_id``) pairs.
    ground_truth : dict
        COCO annotations of those images.
    settings : MaskRCNNServing
        The served settings.

    Returns
    -------
    scores : InstanceScores
        Mask and box AP, F1 and the rest.
    detections : list of dict
        The detections, as COCO results.
    """
    model.eval()
    detections = []
    every = replace(settings, score_threshold=0.0)
    for image, target in samples:
        picture = image.permute(1, 2, 0).cpu().numpy()
        instances = predict_picture(model, picture, every)  # samples are normalised as served already
        detections += coco_results(instances, target["image_id"], picture.shape[:2])
    return evaluate_instances(ground_truth, detections, max_detections=settings.max_detections,
                              f1_score_threshold=settings.score_threshold), detections
