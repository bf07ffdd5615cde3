"""The "cellops review" dock widget: a review set's queue in napari, one image at a time, most uncertain first.

For each image the widget shows the prediction as an editable Labels layer (U-Net, Mask R-CNN) or the predicted
class as a choice (classifier), and saves what the annotator decides through
:meth:`cellops.review.ReviewSet.save_correction`, which checks the correction and writes it, with who and when,
into the set's ``corrections/`` folder:

========================  ==================  ======================================================================
Button                    Shortcut            Saves
========================  ==================  ======================================================================
Save correction           Ctrl+Shift+S        the Labels layer as it is now (status ``corrected``); classifier: the
                                              chosen class (``accepted`` when it is the predicted one)
Prediction is right       Ctrl+Enter          the prediction unchanged (status ``accepted``)
Empty                     (none)              segmentation: the image holds no object (status ``empty``)
Skip / Next               N                   nothing: the next image without a correction
========================  ==================  ======================================================================

Ctrl+S stays napari's "Save selected layers"; Empty has no key, so that a slip never discards every object.
The shortcuts work while the napari window is active (a text field keeps the letters typed into it).
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
                            QPushButton, QVBoxLayout, QWidget)

from cellops.review import SEGMENTATION_FAMILIES, ReviewError, ReviewSet

#: Action -> key sequences (Qt's portable text; Ctrl is Cmd on macOS). Ctrl+S is napari's "Save selected layers".
SHORTCUTS: dict[str, tuple[str, ...]] = {
    "save": ("Ctrl+Shift+S",),
    "accept": ("Ctrl+Return", "Ctrl+Enter"),  # Return and the keypad's Enter
    "next": ("N",),
}


def default_annotator() -> str:
    """Who is annotating, until the annotator field says otherwise: ``$CELLOPS_ANNOTATOR``, else the login name."""
    try:
        return os.environ.get("CELLOPS_ANNOTATOR") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return ""


class ReviewWidget(QWidget):
    """The "cellops review" dock widget (see the module's docstring).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer the images and predictions are shown in (napari passes it).
    parent : QWidget, optional
        The Qt parent.

    Examples
    --------
    ``widget = ReviewWidget(viewer); viewer.window.add_dock_widget(widget); widget.open_review_set("review/")``
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.review: ReviewSet | None = None
        self.item_id: str | None = None
        self.image_layer = None
        self.labels_layer = None
        self._prediction: np.ndarray | None = None  # the predicted labels as loaded, to tell an edit
        self._discard_armed: str | None = None  # the item whose unsaved edit one Next already warned about

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("review-set folder (cellops review export ... --out DIR)")
        self.path_edit.returnPressed.connect(self._open_clicked)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self._open_clicked)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(browse)
        path_row.addWidget(self.open_button)

        self.annotator_edit = QLineEdit(default_annotator())
        self.annotator_edit.setPlaceholderText("your name (saved with each correction)")
        self.model_label = QLabel("–")
        self.progress_label = QLabel("–")
        self.item_label = QLabel("–")
        self.item_label.setWordWrap(True)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("the class this image really shows (prefilled with the prediction)")

        form = QFormLayout()
        form.addRow("Review set", path_row)
        form.addRow("Annotator", self.annotator_edit)
        form.addRow("Model", self.model_label)
        form.addRow("Progress", self.progress_label)
        form.addRow("Image", self.item_label)
        form.addRow("Class", self.class_combo)
        self._class_row_label = form.labelForField(self.class_combo)

        self.save_button = QPushButton("Save correction")
        self.accept_button = QPushButton("Prediction is right")
        self.empty_button = QPushButton("Empty")
        self.next_button = QPushButton("Skip / Next")
        for button, action, tip, keys in (
                (self.save_button, self.save_correction, "save the labels (or class) as they are now", "save"),
                (self.accept_button, self.accept_prediction, "the prediction is right as it is", "accept"),
                (self.empty_button, self.mark_empty, "the image holds no object", None),
                (self.next_button, self.next_item, "go to the next image without saving this one", "next")):
            button.clicked.connect(action)
            button.setToolTip(tip + (f" ({SHORTCUTS[keys][0]})" if keys else ""))
        buttons = QGridLayout()
        buttons.addWidget(self.save_button, 0, 0)
        buttons.addWidget(self.accept_button, 0, 1)
        buttons.addWidget(self.empty_button, 1, 0)
        buttons.addWidget(self.next_button, 1, 1)

        help_label = QLabel("Ctrl+Shift+S save · Ctrl+Enter prediction is right · N next")
        help_label.setEnabled(False)  # drawn as a hint
        self.status_label = QLabel("Open a review set.")
        self.status_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(help_label)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.shortcuts: dict[str, list[QShortcut]] = {}
        for name, action in (("save", self.save_correction), ("accept", self.accept_prediction),
                             ("next", self.next_item)):
            self.shortcuts[name] = []
            for keys in SHORTCUTS[name]:
                shortcut = QShortcut(QKeySequence(keys), self)
                shortcut.setContext(Qt.ShortcutContext.WindowShortcut)  # anywhere in the napari window
                shortcut.activated.connect(action)
                self.shortcuts[name].append(shortcut)
        self._update_controls()

    # --- opening and showing --------------------------------------------------------------------------------------

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a cellops review set", self.path_edit.text())
        if folder:
            self.path_edit.setText(folder)
            self.open_review_set(folder)

    def _open_clicked(self) -> None:
        if self.path_edit.text().strip():
            self.open_review_set(self.path_edit.text().strip())
        else:
            self._error("choose the review set's folder first")

    def open_review_set(self, path: str | Path) -> bool:
        """Open the review set in ``path`` and show its first image without a correction.

        Returns
        -------
        bool
            False when ``path`` holds no readable review set (the message says why).
        """
        try:
            review = ReviewSet.open(path)
        except (ReviewError, OSError) as error:
            self._error(str(error))
            return False
        except (KeyError, TypeError, ValueError) as error:  # a review.json with entries of the wrong form
            self._error(f"{path}: not a usable review set ({type(error).__name__}: {error})")
            return False
        self._clear_layers()
        self.review, self.item_id = review, None
        self.path_edit.setText(str(path))
        method = review.manifest.get("uncertainty") or "?"
        self.model_label.setText(f"{review.model_version} ({review.family}, uncertainty: {method})")
        self.model_label.setToolTip(str(review.model.get("uri") or ""))
        self.show_item(review.next_item())
        return True

    def show_item(self, item_id: str | None) -> None:
        """Show ``item_id``'s image and prediction in the viewer (None: nothing left to review)."""
        review = self.review
        self._clear_layers()
        self.item_id, self._prediction, self._discard_armed = item_id, None, None
        if review is None:
            return
        if item_id is None:
            self.item_label.setText("–")
            self._status(f"All {review.progress()[1]} images of {review.path} are reviewed.")
            self._update_controls()
            return
        item = review.items[item_id]
        try:
            image = review.read_image(item_id)
            prediction = review.read_prediction(item_id)
        except (ReviewError, OSError, ValueError) as error:  # Next still moves on to the following image
            self.item_label.setText(f"{item_id}: cannot be shown")
            self._update_controls()
            self._error(f"{item_id}: cannot show it ({error})")
            return
        rgb = image.ndim == len(item.shape) + 1 and image.shape[-1] in (3, 4)
        self.image_layer = self.viewer.add_image(image, name=item_id, rgb=rgb)
        if prediction is not None:
            self._prediction = np.asarray(prediction)
            self.labels_layer = self.viewer.add_labels(self._prediction.copy(), name=f"{item_id} labels")
            self.viewer.layers.selection.active = self.labels_layer
        self.viewer.reset_view()
        text = f"{item_id}: uncertainty {item.uncertainty:.3f}"
        if review.family in SEGMENTATION_FAMILIES:
            if item.objects is not None:
                text += f", {item.objects} object{'s' if item.objects != 1 else ''} predicted"
        else:
            probability = (item.probabilities or {}).get(item.label)
            text += f", predicted {item.label}" + (f" ({probability:.0%})" if probability is not None else "")
            self.class_combo.clear()
            self.class_combo.addItems(review.classes)
            self.class_combo.setCurrentText(item.label or "")
        self.item_label.setText(text)
        self._update_controls()
        self._status(f"Reviewing {item_id}.")

    def _clear_layers(self) -> None:
        for layer in (self.labels_layer, self.image_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.image_layer = self.labels_layer = None

    def _update_controls(self) -> None:
        review, has_item = self.review, self.item_id is not None
        segmentation = review is not None and review.family in SEGMENTATION_FAMILIES
        classifier = review is not None and review.family == "classifier"
        for button in (self.save_button, self.accept_button, self.next_button):
            button.setEnabled(has_item)
        self.empty_button.setEnabled(has_item and segmentation)
        self.class_combo.setVisible(classifier)
        if self._class_row_label is not None:
            self._class_row_label.setVisible(classifier)
        if review is not None:
            done, total = review.progress()
            self.progress_label.setText(f"{done + 1} of {total} ({done} saved)" if has_item
                                        else f"{done} of {total} saved")

    # --- the annotator's decisions --------------------------------------------------------------------------------

    def edited(self) -> bool:
        """Whether the Labels layer differs from the prediction it was loaded with."""
        return (self.labels_layer is not None and self._prediction is not None
                and not np.array_equal(np.asarray(self.labels_layer.data), self._prediction))

    def _reviewing(self) -> bool:
        """Whether an image is shown to decide on (an image that could not be shown takes no decision)."""
        if self.review is None or self.item_id is None:
            return False
        if self.image_layer is None:
            self._error(f"{self.item_id}: nothing to decide on (the image could not be shown); press Next")
            return False
        return True

    def save_correction(self) -> bool:
        """Save the Labels layer as it is now (classifier: the chosen class), then show the next image."""
        if not self._reviewing():
            return False
        if self.review.family == "classifier":
            chosen = self.class_combo.currentText()
            item = self.review.items[self.item_id]
            if chosen == item.label:
                return self._save("accepted")
            return self._save("corrected", label=chosen)
        return self._save("corrected", labels=np.asarray(self.labels_layer.data))

    def accept_prediction(self) -> bool:
        """Save that the prediction is right as it was predicted, then show the next image."""
        if not self._reviewing():
            return False
        if self.edited():
            self._warning(f"{self.item_id}: the labels were edited; 'Save correction' saves the edit, "
                          "'Prediction is right' would discard it (undo the edit first to accept the prediction)")
            return False
        return self._save("accepted")

    def mark_empty(self) -> bool:
        """Save that the image holds no object (segmentation families), then show the next image."""
        if not self._reviewing():
            return False
        if self.review.family not in SEGMENTATION_FAMILIES:
            self._error(f"{self.item_id}: a classifier image is never empty; choose its class")
            return False
        return self._save("empty")

    def next_item(self) -> str | None:
        """Show the next image without a correction, saving nothing; an unsaved edit needs a second Next."""
        if self.review is None or self.item_id is None:
            return None
        if self.edited() and self._discard_armed != self.item_id:
            self._discard_armed = self.item_id
            self._warning(f"{self.item_id}: the labels were edited and not saved; press Next again to discard the "
                          "edit, or 'Save correction' to keep it")
            return self.item_id
        following = self.review.next_item(after=self.item_id)
        self.show_item(following)
        return following

    def _save(self, status: str, **correction) -> bool:
        annotator = self.annotator_edit.text().strip()
        if not annotator:
            self._error("say who you are in the Annotator field: each correction records its annotator")
            self.annotator_edit.setFocus()
            return False
        item_id = self.item_id
        try:
            path = self.review.save_correction(item_id, status=status, annotator=annotator, **correction)
        except (ReviewError, OSError) as error:
            self._error(str(error))
            return False
        following = self.review.next_item(after=item_id)
        self.show_item(following)
        total = self.review.progress()[1]
        self._info(f"{item_id}: {status}, saved by {annotator} in {path.relative_to(self.review.path)}"
                   + ("" if following else f"; all {total} images are reviewed"))
        return True

    # --- messages -------------------------------------------------------------------------------------------------

    def _status(self, message: str) -> None:
        self.status_label.setText(message)

    def _info(self, message: str) -> None:
        self._status(message)
        show_info(message)

    def _warning(self, message: str) -> None:
        self._status(message)
        show_warning(message)

    def _error(self, message: str) -> None:
        self._status(message)
        show_error(message)
