"""ebm-gate's energy gate on NumPy frames, in-process.

An ONNX image classifier f is read as an energy-based model: the free energy
E(x) = -T * logsumexp(f(x) / T) (lower = more in-distribution), calibrated class probabilities
softmax(f(x) / T), and the conformal p-value of E(x) over the bundle's calibration energies; a
frame is rejected as out-of-distribution when p <= alpha (or E(x) > threshold). The figures are
those of the `ebm-gate` command line on the same frames.

Frames are NumPy uint8 arrays: HxWx3 (RGB, or BGR with bgr=True), HxWx4 (the 4th channel is
ignored) or HxW / HxWx1 (gray), of any size; each is resized and normalised as the bundle's
gate.json says. The model runs with the GIL released.
"""

import os
from typing import Iterable, Optional, Union, final

import numpy as np
import numpy.typing as npt

__version__: str

_Frame = npt.NDArray[np.uint8]
_PathLike = Union[str, "os.PathLike[str]"]

class GateError(Exception):
    """A bundle or model that cannot be used: gate.json invalid or made for another model, the
    model unreadable or of a shape the gate cannot take. The message is the library's."""

@final
class Result:
    """One judged frame: the record `ebm-gate score --json --logits` writes for it. The numbers
    are None when the frame could not be scored (then it is rejected with reason
    `decode_error` or `model_error`, and `error` says why)."""

    @property
    def name(self) -> str:
        """`frame`, `frame#i` in a batch, the path for score_file, `stream#i` in a Stream."""
    @property
    def class_index(self) -> Optional[int]:
        """The most probable class, in logit order."""
    @property
    def class_name(self) -> Optional[str]: ...
    @property
    def probability(self) -> Optional[float]:
        """Its probability softmax(f(x) / T)."""
    @property
    def energy(self) -> Optional[float]:
        """Free energy E(x) = -T * logsumexp(f(x) / T), in logit units; lower = more in-distribution."""
    @property
    def p_value(self) -> Optional[float]:
        """Conformal p-value of the energy over the calibration energies (None without them)."""
    @property
    def msp(self) -> Optional[float]:
        """Maximum softmax probability at T = 1."""
    @property
    def max_logit(self) -> Optional[float]: ...
    @property
    def verdict(self) -> Optional[str]:
        """`in_distribution`, `out_of_distribution`, or None when the gate has no rule."""
    @property
    def reason(self) -> Optional[str]:
        """Why the verdict: `within_threshold` (accepted), `p_value_at_or_below_alpha`,
        `energy_above_threshold`, `decode_error`, `frozen_frame`, ..."""
    @property
    def error(self) -> Optional[str]:
        """Why the frame could not be scored."""
    @property
    def logits(self) -> Optional[npt.NDArray[np.float32]]:
        """f(x), shape (K,)."""
    @property
    def health(self) -> Optional[dict[str, float]]:
        """The frame's health scores (sharpness, noise_sigma, dark_fraction, ...), when the
        bundle's gate uses them."""
    @property
    def p_values(self) -> Optional[dict[str, float]]:
        """With several scores combined (a bundle calibrated with `--scores`): each score's own
        conformal p-value, by name."""
    @property
    def rejected_by(self) -> Optional[list[str]]:
        """With several scores combined: the scores that put the frame over the level,
        strangest first (empty when accepted)."""
    @property
    def accepted(self) -> bool:
        """Whether the verdict is `in_distribution`."""
    def to_dict(self) -> dict:
        """The command line's JSON record: path, class, class_index, probability, energy, msp,
        max_logit, p_value, prediction_set, verdict, reason, error, logits (and health,
        p_values, rejected_by when present). Floats are the command line's (its JSON
        decimals); `logits` is a list."""

@final
class Gate:
    """A loaded bundle that scores and judges frames.

    bundle: a bundle folder (model.onnx and gate.json) or an .onnx file.
    alpha: conformal level instead of the bundle's: reject when p <= alpha.
    threshold: energy threshold: reject when E(x) > threshold (as `--threshold`).
    threads: threads a batch's frames run on. batch: frames per forward pass.
    max_image_side, max_decode_mib: the limits a frame is checked against before it is copied
    (pixels a side; MiB as RGB): a larger frame is rejected with reason `decode_error`.

    Raises FileNotFoundError (no such bundle), ValueError (an invalid setting, such as alpha
    outside (0, 1) or too small for the calibration set, or a negative count), GateError (a
    bundle or model that cannot be used).

    One Gate may be shared by threads: they take turns with the model (one Gate per thread
    runs in parallel).
    """

    def __init__(
        self,
        bundle: _PathLike,
        *,
        alpha: Optional[float] = None,
        threshold: Optional[float] = None,
        threads: int = 1,
        batch: int = 32,
        max_image_side: int = 8192,
        max_decode_mib: int = 256,
    ) -> None: ...
    def score(self, frame: _Frame, *, bgr: bool = False) -> Result:
        """Scores and judges one frame. Raises TypeError for an array that is not uint8 (or not
        an array), ValueError for another shape; a frame that cannot be scored (empty, beyond
        the limits) is a rejected Result, not an exception."""
    def score_batch(self, frames: Iterable[_Frame], *, bgr: bool = False) -> list[Result]:
        """Scores frames together, in forward passes of `batch`; results in order, frame i
        named `frame#i`. `frames` is a sequence of frames or an array NxHxWxC; one frame
        (a 2-D or 3-D array) raises TypeError. Ctrl-C stops it between groups of 4 batches."""
    def score_file(self, path: _PathLike) -> Result:
        """Reads and judges an image file (PNG, JPEG, ...) as `ebm-gate score FILE` does; one
        that cannot be read or decoded is a rejected Result."""
    @property
    def class_names(self) -> list[str]: ...
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model's input (channels, height, width)."""
    @property
    def temperature(self) -> float: ...
    @property
    def alpha(self) -> Optional[float]:
        """The conformal level in force, or None."""
    @property
    def energy_threshold(self) -> Optional[float]:
        """The energy above which frames are rejected: the threshold given, or what alpha
        amounts to (the lower when both are); None without a rule, or when the gate combines
        several scores."""
    @property
    def model_sha256(self) -> str: ...

@final
class StateChange:
    """A change of a Stream's debounced state."""

    @property
    def frame(self) -> int:
        """The frame that changed it."""
    @property
    def previous(self) -> str:
        """The state before: `unknown`, `in_distribution` or `out_of_distribution`."""
    @property
    def state(self) -> str: ...
    @property
    def rejected_in_window(self) -> int: ...

@final
class StreamFrame:
    """One frame pushed into a Stream."""

    @property
    def index(self) -> int:
        """Position in the stream, from 0."""
    @property
    def result(self) -> Result: ...
    @property
    def state(self) -> str:
        """The debounced state after this frame."""
    @property
    def rejected_in_window(self) -> int: ...
    @property
    def change(self) -> Optional[StateChange]:
        """The state change this frame made, or None."""
    @property
    def frame_difference(self) -> Optional[float]:
        """Mean absolute difference of its 16x16 luma summary to the previous frame's (levels)."""

@final
class Stream:
    """A feed judged frame by frame as `ebm-gate stream` does: an accepted frame that repeats the
    previous ones `frozen_after` times in a row is rejected as `frozen_frame` (0 = off); the
    state becomes `out_of_distribution` when `enter` of the last `window` frames were rejected,
    and `in_distribution` again at `exit` or fewer; it starts `unknown` until a whole window is
    clean. The gate needs a rule (a calibrated alpha or a threshold).

    Raises ValueError unless exit < enter <= window <= 256, or when the gate has no rule.
    """

    def __init__(
        self, gate: Gate, window: int = 5, enter: int = 3, exit: int = 2, *, frozen_after: int = 30
    ) -> None: ...
    def push(self, frame: _Frame, *, bgr: bool = False) -> StreamFrame:
        """Scores and judges the next frame (as Gate.score, and the same errors)."""
    @property
    def state(self) -> str:
        """The debounced state now."""
    @property
    def frames(self) -> int:
        """Frames pushed so far."""
