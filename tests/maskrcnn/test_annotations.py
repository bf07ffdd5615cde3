"""Annotation readers and converters on hand-made JSON: COCO (polygons, RLE), VIA, LabelMe, label images; and the
Great Expectations annotation suite, which names each defect."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellops.coco import annotation_masks, mask_to_rle, segmentation_mask
from cellops.maskrcnn.annotations import AnnotationError, label_images_to_coco, load_annotations, read_coco, via_to_coco
from cellops.maskrcnn.data import ImageSplitSettings, split_images
from cellops.maskrcnn.validation import AnnotationExpectations, summarise_annotations, validate_annotation_dataset


def _image(folder, name, shape=(40, 60), value=0):
    folder.mkdir(parents=True, exist_ok=True)
    array = np.full(shape, value, np.uint8)
    array[0, 0] = 255 - value  # not blank, and each file different
    Image.fromarray(array).save(folder / name)
    return folder / name


def test_coco_polygons_and_rle_give_the_same_mask(tmp_path):
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:25] = True  # 10 rows x 20 columns
    coco = {"images": [{"id": 3, "file_name": "a.png", "height": 40, "width": 60}],
            "categories": [{"id": 1, "name": "colony"}],
            "annotations": [
                {"id": 1, "image_id": 3, "category_id": 1, "segmentation": [[5, 10, 25, 10, 25, 20, 5, 20]]},
                {"id": 2, "image_id": 3, "category_id": 1, "segmentation": mask_to_rle(mask)},
                {"id": 3, "image_id": 3, "category_id": 1, "segmentation": mask_to_rle(mask), "iscrowd": 1}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    masks, categories, ids = annotation_masks(read_coco(path), 3)
    assert ids == [1, 2] and categories.tolist() == [1, 1]  # the crowd region is not an instance
    assert masks.shape == (2, 40, 60) and (masks[1] == mask).all()
    assert masks[0].sum() == pytest.approx(200, abs=30)  # a polygon's rasterisation includes part of its edge
    # Uncompressed RLE (counts as a list) decodes too.
    flat = mask.flatten(order="F").astype(int)  # COCO runs go down the columns, starting with background
    edges = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    uncompressed = {"size": [40, 60], "counts": np.diff(np.r_[0, edges]).tolist()}
    assert (segmentation_mask(uncompressed, 40, 60) == mask).all()


def test_coco_reader_names_what_is_missing(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []}))
    with pytest.raises(AnnotationError, match=r"image entry 1 lacks \['height', 'width'\]"):
        read_coco(path)
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json: not valid JSON"):
        read_coco(path)
    with pytest.raises(AnnotationError, match="annotation file not found"):
        read_coco(tmp_path / "missing.json")


def test_via_polygon_rect_circle_and_ellipse_become_coco_instances(tmp_path):
    images = tmp_path / "images"
    _image(images, "a.png")
    via = {"_via_img_metadata": {"a.png123": {"filename": "a.png", "size": 123, "file_attributes": {}, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [5, 25, 25, 5], "all_points_y": [10, 10, 20, 20]},
         "region_attributes": {"type": "colony"}},
        {"shape_attributes": {"name": "rect", "x": 30, "y": 5, "width": 10, "height": 8},
         "region_attributes": {"type": "debris"}},
        {"shape_attributes": {"name": "circle", "cx": 45, "cy": 30, "r": 5}, "region_attributes": {"type": "colony"}},
        {"shape_attributes": {"name": "ellipse", "cx": 15, "cy": 30, "rx": 6, "ry": 3, "theta": 0.5},
         "region_attributes": {"type": "colony"}}]}}}
    path = tmp_path / "via.json"
    path.write_text(json.dumps(via))
    coco = via_to_coco(path, images, label_attribute="type")
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}]
    assert [c["name"] for c in coco["categories"]] == ["colony", "debris"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 1, 1]
    rect = coco["annotations"][1]
    assert rect["bbox"] == [30, 5, 10, 8] and rect["area"] == pytest.approx(80, abs=20)
    circle = segmentation_mask(coco["annotations"][2]["segmentation"], 40, 60)
    assert circle.sum() == pytest.approx(np.pi * 25, rel=0.25) and circle[30, 45]
    # Fixed categories refuse a label outside them, naming the region.
    with pytest.raises(AnnotationError, match="region 1: label 'debris' is not among"):
        via_to_coco(path, images, label_attribute="type", categories=["colony"])
    via["_via_img_metadata"]["a.png123"]["regions"][0]["shape_attributes"] = {"name": "point", "cx": 1, "cy": 1}
    path.write_text(json.dumps(via))
    with pytest.raises(AnnotationError, match="shape 'point' is not an area"):
        via_to_coco(path, images, label_attribute="type")


def test_labelme_groups_shapes_by_group_id_and_reads_rectangles_and_circles(tmp_path):
    _image(tmp_path, "b.png", shape=(50, 50))
    labelme = {"imagePath": "b.png", "imageHeight": 50, "imageWidth": 50, "shapes": [
        {"label": "nucleus", "points": [[2, 2], [12, 2], [12, 12], [2, 12]], "shape_type": "polygon", "group_id": 7},
        {"label": "nucleus", "points": [[14, 2], [20, 2], [20, 8]], "shape_type": "polygon", "group_id": 7},
        {"label": "nucleus", "points": [[30, 30], [40, 45]], "shape_type": "rectangle", "group_id": None},
        {"label": "cell", "points": [[25, 10], [25, 15]], "shape_type": "circle"}]}
    (tmp_path / "b.json").write_text(json.dumps(labelme))
    coco = load_annotations("labelme", tmp_path, tmp_path)
    assert len(coco["annotations"]) == 3  # the two group-7 polygons are one instance
    grouped = coco["annotations"][0]
    assert len(grouped["segmentation"]) == 2 and grouped["bbox"] == [2, 2, 18, 10]
    assert [c["name"] for c in coco["categories"]] == ["nucleus", "cell"]
    masks, _, _ = annotation_masks(coco, 1)
    assert masks[1][35, 35] and not masks[1][20, 20] and masks[2][10, 25]
    (tmp_path / "c.json").write_text(json.dumps({"shapes": []}))
    with pytest.raises(AnnotationError, match="c.json: not a LabelMe file"):
        load_annotations("labelme", tmp_path, tmp_path)


def test_label_images_become_one_rle_instance_per_label(tmp_path):
    labels = np.zeros((30, 30), np.uint16)
    labels[2:8, 2:9] = 1
    labels[20:25, 20:30] = 300  # any integer, not only 1..n
    group = tmp_path / "Control"
    _image(group, "n_000.tif", shape=(30, 30))
    tifffile.imwrite(group / "n_000_labels.tif", labels)
    coco = load_annotations("label_images", "", tmp_path, category="nucleus")
    assert coco["images"][0]["file_name"] == "Control/n_000.tif"
    assert coco["categories"] == [{"id": 1, "name": "nucleus"}]
    assert sorted(a["area"] for a in coco["annotations"]) == [42.0, 50.0]
    masks, _, _ = annotation_masks(coco, 1)
    assert sorted(int(m.sum()) for m in masks) == [42, 50]
    tifffile.imwrite(tmp_path / "float_labels.tif", labels.astype(np.float32))
    with pytest.raises(AnnotationError, match="must be 2-D integers"):
        label_images_to_coco({"x.tif": tmp_path / "float_labels.tif"})
    with pytest.raises(AnnotationError, match="unknown annotation format 'yolo'"):
        load_annotations("yolo", "", tmp_path)


def _dataset(tmp_path, n=4):
    images = tmp_path / "images"
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "colony"}]}
    for i in range(n):
        _image(images, f"i{i}.png", value=i)
        coco["images"].append({"id": i + 1, "file_name": f"i{i}.png", "height": 40, "width": 60})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1,
                                    "segmentation": [[5, 5, 20, 5, 20, 15, 5, 15]], "bbox": [5, 5, 15, 10]})
    return images, coco


def _validate(coco, images, **expect):
    expectations = AnnotationExpectations(min_images=2, **expect)
    index = split_images(coco, images, ImageSplitSettings(val_fraction=0.25, test_fraction=0.25, seed=0))
    return validate_annotation_dataset(summarise_annotations(coco, images, index, expectations), expectations)


def test_annotation_suite_passes_a_clean_dataset_and_names_every_defect(tmp_path):
    images, coco = _dataset(tmp_path)
    assert _validate(coco, images).success
    coco["annotations"][0]["category_id"] = 5
    coco["annotations"][1]["segmentation"] = [[1, 1, 2, 2]]
    coco["annotations"][2]["segmentation"] = [[50, 30, 70, 30, 70, 45, 50, 45]]  # beyond the 60x40 image
    coco["annotations"][3]["bbox"] = [40, 30, 5, 5]
    coco["annotations"].append({**coco["annotations"][3], "bbox": [5, 5, 15, 10]})  # same id twice
    coco["annotations"].append({"id": 99, "image_id": 42, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]})
    coco["images"][1]["width"] = 61
    coco["images"].append({"id": 5, "file_name": "gone.png", "height": 40, "width": 60})
    report = _validate(coco, images, max_instances_per_image=1)
    text = "\n".join(report.failures)
    assert not report.success
    for expected in ["i0.png annotation 1 has category 5, not among [1]",
                     "i1.png annotation 2: a polygon needs at least 3 (x, y) points",
                     "i2.png annotation 3: polygon spans x 50.0..70.0",
                     "i3.png annotation 4 has bbox [40, 30, 5, 5] but its mask spans",
                     "i3.png annotation 4: id used by 2 annotations",
                     "i1.png is 60x40, the annotations say 61x40",
                     "gone.png is not in", "annotations [99] refer to image id 42",
                     "i3.png has 2 instances, outside [0, 1]"]:
        assert expected in text, (expected, text)


def test_the_same_picture_in_two_splits_is_named(tmp_path):
    images, coco = _dataset(tmp_path, n=6)
    index = split_images(coco, images, ImageSplitSettings(val_fraction=0.2, test_fraction=0.2, seed=0))
    # A second name for one picture: the split keeps identical content together...
    (images / "copy.png").write_bytes((images / "i0.png").read_bytes())
    coco["images"].append({"id": 7, "file_name": "copy.png", "height": 40, "width": 60})
    coco["annotations"].append({**coco["annotations"][0], "id": 70, "image_id": 7})
    index = split_images(coco, images, ImageSplitSettings(val_fraction=0.2, test_fraction=0.2, seed=0))
    assert index["splits"][0] == index["splits"][-1]
    # ...and an index that separates them (e.g. a hand-made split) fails validation, naming both files.
    index["splits"][-1] = next(s for s in ("train", "val", "test") if s != index["splits"][0])
    expectations = AnnotationExpectations(min_images=2)
    report = validate_annotation_dataset(summarise_annotations(coco, images, index, expectations), expectations)
    assert not report.success and "copy.png" in "\n".join(report.failures) and "i0.png" in "\n".join(report.failures)


def test_coco_exports_with_zero_based_or_gapped_ids_and_no_boxes_are_completed(tmp_path):
    # Roboflow/CVAT style: categories 0 and 7, no bbox or area: ids become 1..K, boxes come from the masks.
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
            "categories": [{"id": 7, "name": "debris"}, {"id": 0, "name": "colony"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "segmentation": [[5, 10, 25, 10, 25, 20, 5, 20]]},
                            {"id": 2, "image_id": 1, "category_id": 7, "segmentation": [[30, 5, 40, 5, 40, 13, 30, 13]]}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(coco))
    read = read_coco(path)
    assert read["categories"] == [{"id": 1, "name": "colony"}, {"id": 2, "name": "debris"}]
    assert [a["category_id"] for a in read["annotations"]] == [1, 2]
    assert read["annotations"][0]["bbox"] == [5.0, 10.0, 20.0, 10.0] and read["annotations"][0]["area"] > 150
    # An unknown category renumbers nothing: validation names it.
    coco["annotations"][1]["category_id"] = 3
    path.write_text(json.dumps(coco))
    assert [a["category_id"] for a in read_coco(path)["annotations"]] == [0, 3]


def test_via_checkbox_without_a_tick_and_windows_labelme_paths(tmp_path):
    images = tmp_path / "images"
    _image(images, "a.png")
    via = {"a.png1": {"filename": "a.png", "size": 1, "regions": [
        {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 5, "height": 5},
         "region_attributes": {"kind": {"colony": False, "cell": False}}}]}}
    (tmp_path / "via.json").write_text(json.dumps(via))
    assert via_to_coco(tmp_path / "via.json", images, default_category="colony")["categories"][0]["name"] == "colony"
    labelme = {"imagePath": "..\\images\\a.png", "shapes": [
        {"label": "colony", "points": [[2, 2], [12, 2], [12, 12]], "shape_type": "polygon"}]}
    (tmp_path / "labelme").mkdir()
    (tmp_path / "labelme" / "a.json").write_text(json.dumps(labelme))
    coco = load_annotations("labelme", tmp_path / "labelme", images)
    assert coco["images"][0]["file_name"] == "a.png" and coco["images"][0]["height"] == 40
