"""The "cellops review" napari widget, headless: napari's own test fixture (``make_napari_viewer``), the widget
loaded through the plugin's npe2 manifest, and an annotator's edits made the way napari makes them (painting,
filling, clicking, typing shortcuts), checked in the correction files on disk.

napari draws with OpenGL, which Qt offers only on a display (its ``offscreen`` platform has no OpenGL widget): the
tests start a virtual X server (Xvfb, ``make qt-deps`` installs it) and use Qt's ``xcb`` platform on it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from cellops.review import ReviewPrediction, write_review_set

pytestmark = pytest.mark.minutes(1)

CLASSES = ["elongated", "cobblestone", "mitotic"]


def _end_with_this_process():
    """In the child, before Xvfb starts: the kernel ends it when the test process ends (Linux)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def x_display():
    """A virtual X display (Xvfb) for the session's QApplication. Xvfb lives as long as the test process: the
    QApplication is never destroyed, and Qt's exit must still find its display."""
    xvfb = shutil.which("Xvfb")
    if xvfb is not None:
        # -displayfd: Xvfb picks a free display and writes its number, then a newline, once it accepts clients.
        read, write = os.pipe()
        process = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp",
                                    "-noreset"], pass_fds=(write,), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, preexec_fn=_end_with_this_process)
        os.close(write)
        answer = b""
        while not answer.endswith(b"\n") and select.select([read], [], [], 30)[0]:
            chunk = os.read(read, 16)
            if not chunk:
                break
            answer += chunk
        os.close(read)
        if not answer.strip().isdigit():
            process.kill()
            pytest.fail(f"{xvfb} did not start a display within 30 s")
        os.environ["DISPLAY"] = f":{answer.decode().strip()}"
    elif not os.environ.get("DISPLAY"):
        pytest.fail("the napari widget tests need an X display for OpenGL: install Xvfb (`make qt-deps`, or "
                    "`apt-get install xvfb`), or run them on a desktop")
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    return os.environ["DISPLAY"]


@pytest.fixture(scope="module", autouse=True)
def _display_environment(request):
    """The display for this module's tests; the modules after it (and their subprocesses) see the environment as
    it was (the QApplication keeps its connection)."""
    saved = {name: os.environ.get(name) for name in ("DISPLAY", "QT_QPA_PLATFORM")}
    request.getfixturevalue("x_display")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def qapp_args(x_display):
    """pytest-qt creates the QApplication with these arguments: after the display exists."""
    return ["cellops-review-tests"]


def _tiff(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def _squares(shape, boxes, ids=None):
    labels = np.zeros(shape, np.uint16)
    for n, (y, x, size) in enumerate(boxes, start=1):
        labels[y:y + size, x:x + size] = n if ids is None else ids
    return labels


@pytest.fixture
def maskrcnn_set(tmp_path):
    """Three images, two instances predicted on each; queue: c (0.9), a (0.6), b (0.1)."""
    rng = np.random.default_rng(1)
    predictions = [
        ReviewPrediction(source=_tiff(tmp_path / "src" / f"{name}.tif", rng.integers(0, 200, (40, 56), np.uint8)),
                         uncertainty=u, labels=_squares((40, 56), [(4, 4, 8), (24, 30, 10)]),
                         categories={1: "colony", 2: "colony"}, object_uncertainty=(0.2, 0.4))
        for name, u in (("a", 0.6), ("b", 0.1), ("c", 0.9))]
    return write_review_set(tmp_path / "review", family="maskrcnn", model={"name": "colonies-maskrcnn", "version": "4"},
                            uncertainty_method="flip-tta", predictions=predictions, categories={1: "colony"})


@pytest.fixture
def unet_set(tmp_path):
    """Two images with a 0/1 mask each; queue: y (0.7), x (0.3)."""
    rng = np.random.default_rng(2)
    predictions = [
        ReviewPrediction(source=_tiff(tmp_path / "src" / f"{name}.tif", rng.integers(0, 255, (32, 32), np.uint8)),
                         uncertainty=u, labels=_squares((32, 32), [(8, 8, 12)], ids=1).astype(np.uint8))
        for name, u in (("x", 0.3), ("y", 0.7))]
    return write_review_set(tmp_path / "review", family="unet", model={"name": "em-unet", "version": "7"},
                            uncertainty_method="flip-tta", predictions=predictions)


@pytest.fixture
def classifier_set(tmp_path):
    """Two RGB images, both predicted "elongated"; queue: p (0.8), q (0.4)."""
    rng = np.random.default_rng(3)
    predictions = [
        ReviewPrediction(source=_tiff(tmp_path / "src" / f"{name}.tif", rng.integers(0, 255, (24, 24, 3), np.uint8)),
                         uncertainty=u, label="elongated",
                         probabilities={"elongated": 0.5, "cobblestone": 0.3, "mitotic": 0.2})
        for name, u in (("p", 0.8), ("q", 0.4))]
    return write_review_set(tmp_path / "review", family="classifier", model={"name": "endothelial", "version": "2"},
                            uncertainty_method="entropy", predictions=predictions, classes=CLASSES)


@pytest.fixture
def review(make_napari_viewer, x_display):
    """A shown napari viewer with the widget docked through the plugin's manifest, as Plugins > cellops review
    does; the annotator is named."""
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("cellops", "cellops review")
    widget.annotator_edit.setText("ana")
    return viewer, widget


def _record(review_set, item_id):
    return json.loads((review_set.path / "corrections" / f"{item_id}.json").read_text())


def _saved_labels(review_set, item_id):
    return tifffile.imread(review_set.path / "corrections" / f"{item_id}_labels.ome.tif")


def check_recent(record, annotator):
    assert record["annotator"] == annotator
    assert abs(datetime.now(timezone.utc) - datetime.fromisoformat(record["time"])) < timedelta(minutes=5)


def test_the_plugin_shows_the_most_uncertain_image_with_its_prediction(review, maskrcnn_set):
    viewer, widget = review
    assert type(widget).__name__ == "ReviewWidget"
    assert widget.open_review_set(maskrcnn_set.path)
    assert [layer.name for layer in viewer.layers] == ["c", "c labels"]
    image, labels = viewer.layers
    np.testing.assert_array_equal(image.data, maskrcnn_set.read_image("c"))
    np.testing.assert_array_equal(labels.data, maskrcnn_set.read_prediction("c"))
    assert type(labels).__name__ == "Labels" and labels.editable
    assert widget.progress_label.text().startswith("1 of 3")
    assert "colonies-maskrcnn:4" in widget.model_label.text() and "flip-tta" in widget.model_label.text()
    assert widget.item_label.text().startswith("c: uncertainty 0.900, 2 objects")
    assert not widget.class_combo.isVisible()


def test_an_edited_labels_layer_is_saved_with_annotator_and_time_and_the_next_image_follows(review, maskrcnn_set,
                                                                                           qtbot):
    viewer, widget = review
    widget.open_review_set(maskrcnn_set.path)
    labels = viewer.layers["c labels"]
    # An annotator adds a missed colony with the brush and removes a false one with the fill bucket.
    labels.brush_size = 5
    labels.selected_label = 3
    labels.mode = "paint"
    labels.paint((15, 45), 3)
    labels.mode = "fill"
    labels.fill((28, 34), 0)
    edited = np.asarray(labels.data).copy()
    assert (edited == 3).sum() > 0 and (edited == 2).sum() == 0 and (edited == 1).sum() == 64
    qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)

    record = _record(maskrcnn_set, "c")
    assert record["status"] == "corrected" and record["labels"] == "c_labels.ome.tif"
    assert record["model"] == {"name": "colonies-maskrcnn", "version": "4"}
    check_recent(record, "ana")
    np.testing.assert_array_equal(_saved_labels(maskrcnn_set, "c"), edited)
    assert maskrcnn_set.progress() == (1, 3)
    assert widget.progress_label.text().startswith("2 of 3")
    assert [layer.name for layer in viewer.layers] == ["a", "a labels"]  # the next most uncertain
    np.testing.assert_array_equal(viewer.layers["a labels"].data, maskrcnn_set.read_prediction("a"))


def test_prediction_is_right_and_empty_save_their_status(review, unet_set):
    viewer, widget = review
    widget.open_review_set(unet_set.path)
    assert widget.accept_prediction()
    record = _record(unet_set, "y")
    assert record["status"] == "accepted"
    check_recent(record, "ana")
    np.testing.assert_array_equal(_saved_labels(unet_set, "y"), unet_set.read_prediction("y"))
    assert [layer.name for layer in viewer.layers] == ["x", "x labels"]

    widget.empty_button.click()
    assert _record(unet_set, "x")["status"] == "empty"
    assert not _saved_labels(unet_set, "x").any()
    assert unet_set.progress() == (2, 2)
    assert len(viewer.layers) == 0 and widget.progress_label.text() == "2 of 2 saved"
    assert not widget.save_button.isEnabled() and "all 2 images are reviewed" in widget.status_label.text()


def test_the_classifier_label_is_a_choice_prefilled_with_the_prediction(review, classifier_set):
    viewer, widget = review
    widget.open_review_set(classifier_set.path)
    assert widget.class_combo.isVisible() and not widget.empty_button.isEnabled()
    assert [widget.class_combo.itemText(i) for i in range(widget.class_combo.count())] == CLASSES
    assert widget.class_combo.currentText() == "elongated"
    assert [layer.name for layer in viewer.layers] == ["p"] and viewer.layers["p"].rgb
    assert "predicted elongated (50%)" in widget.item_label.text()

    widget.class_combo.setCurrentText("mitotic")
    assert widget.save_correction()
    record = _record(classifier_set, "p")
    assert (record["status"], record["label"], record["labels"]) == ("corrected", "mitotic", None)
    check_recent(record, "ana")
    assert widget.class_combo.currentText() == "elongated"  # q's prediction
    assert widget.save_correction()  # unchanged choice: the prediction is right
    assert (_record(classifier_set, "q")["status"], _record(classifier_set, "q")["label"]) == ("accepted", "elongated")


def test_keyboard_shortcuts_save_accept_and_skip(review, unet_set, qtbot):
    viewer, widget = review
    widget.open_review_set(unet_set.path)
    window = widget.window()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    canvas = viewer.window._qt_viewer.canvas.native  # where the annotator's keys go after painting

    qtbot.keyClick(widget.annotator_edit, Qt.Key.Key_N)  # typed into a text field: a letter, not a skip
    assert widget.annotator_edit.text() == "anan" and widget.item_id == "y"
    widget.annotator_edit.setText("ana")
    qtbot.keyClick(canvas, Qt.Key.Key_N)  # skip y
    assert [layer.name for layer in viewer.layers] == ["x", "x labels"] and unet_set.progress() == (0, 2)
    viewer.layers["x labels"].paint((2, 2), 1)
    qtbot.keyClick(canvas, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert _record(unet_set, "x")["status"] == "corrected" and _saved_labels(unet_set, "x")[2, 2] == 1
    assert [layer.name for layer in viewer.layers] == ["y", "y labels"]  # back round to the skipped one
    qtbot.keyClick(canvas, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert _record(unet_set, "y")["status"] == "accepted" and unet_set.progress() == (2, 2)


def test_nothing_is_saved_without_an_annotator_or_from_a_wrong_edit(review, unet_set, tmp_path):
    viewer, widget = review
    assert not widget.open_review_set(tmp_path / "nowhere")
    assert "nowhere: not a review set" in widget.status_label.text()
    widget.open_review_set(unet_set.path)
    labels = viewer.layers["y labels"]

    widget.annotator_edit.setText("  ")
    assert not widget.accept_prediction() and "Annotator" in widget.status_label.text()
    widget.annotator_edit.setText("ana")
    labels.data = np.zeros_like(labels.data)  # every object erased: that is "Empty", not a correction
    assert not widget.save_correction() and "mark the image empty" in widget.status_label.text()
    assert not widget.accept_prediction() and "edited" in widget.status_label.text()  # would discard the edit
    assert widget.next_item() == "y" and "press Next again" in widget.status_label.text()
    assert list((unet_set.path / "corrections").iterdir()) == [] and unet_set.progress() == (0, 2)
    assert widget.next_item() == "x"  # the second Next discards the edit
    assert [layer.name for layer in viewer.layers] == ["x", "x labels"]


def test_an_unreadable_image_is_named_and_the_review_goes_on(review, unet_set):
    viewer, widget = review
    (unet_set.path / "images" / "y.tif").write_bytes(b"not a TIFF")
    widget.open_review_set(unet_set.path)
    assert widget.item_id == "y" and len(viewer.layers) == 0
    assert widget.status_label.text().startswith("y: cannot show it")
    assert not widget.save_correction() and "press Next" in widget.status_label.text()
    assert not widget.accept_prediction() and not widget.mark_empty()  # never decided unseen
    assert widget.next_item() == "x" and [layer.name for layer in viewer.layers] == ["x", "x labels"]
    assert list((unet_set.path / "corrections").iterdir()) == []
