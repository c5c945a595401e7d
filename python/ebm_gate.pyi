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
from typing import Iterable, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

Frame = npt.NDArray[np.uint8]
PathLike = Union[str, "os.PathLike[str]"]

class GateError(Exception):
    """A bundle or model that cannot be used: gate.json invalid or made for another model, the
    model unreadable or of a shape the gate cannot take. The message is the library's."""

class Result:
    """One judged frame: the record `ebm-gate score --json --logits` writes for it. The numbers
    are None when the frame could not be scored (then it is rejected with reason
    `decode_error` or `model_error`, and `error` says why)."""

    name: str
    """`frame`, `frame#i` in a batch, the path for score_file, `stream#i` in a Stream."""
    class_index: Optional[int]
    """The most probable class, in logit order."""
    class_name: Optional[str]
    probability: Optional[float]
    """Its probability softmax(f(x) / T)."""
    energy: Optional[float]
    """Free energy E(x) = -T * logsumexp(f(x) / T), in logit units; lower = more in-distribution."""
    p_value: Optional[float]
    """Conformal p-value of the energy over the calibration energies (None without them)."""
    msp: Optional[float]
    """Maximum softmax probability at T = 1."""
    max_logit: Optional[float]
    verdict: Optional[str]
    """`in_distribution`, `out_of_distribution`, or None when the gate has no rule."""
    reason: Optional[str]
    """Why the verdict: `within_threshold` (accepted), `p_value_at_or_below_alpha`,
    `energy_above_threshold`, `decode_error`, `frozen_frame`, ..."""
    error: Optional[str]
    """Why the frame could not be scored."""
    logits: Optional[npt.NDArray[np.float32]]
    """f(x), shape (K,)."""
    health: Optional[dict[str, float]]
    """The frame's health scores (sharpness, noise_sigma, dark_fraction, ...), when the
    bundle's gate uses them."""
    @property
    def accepted(self) -> bool:
        """Whether the verdict is `in_distribution`."""
    def to_dict(self) -> dict:
        """The command line's JSON record: path, class, class_index, probability, energy, msp,
        max_logit, p_value, prediction_set, verdict, reason, error, logits (and health)."""

class Gate:
    """A loaded bundle that scores and judges frames.

    bundle: a bundle folder (model.onnx and gate.json) or an .onnx file.
    alpha: conformal level instead of the bundle's: reject when p <= alpha.
    threshold: energy threshold: reject when E(x) > threshold (as `--threshold`).
    threads: threads a batch's frames run on. batch: frames per forward pass.

    Raises FileNotFoundError (no such bundle), ValueError (an invalid setting, such as alpha
    outside (0, 1) or too small for the calibration set), GateError (a bundle or model that
    cannot be used).
    """

    def __init__(
        self,
        bundle: PathLike,
        *,
        alpha: Optional[float] = None,
        threshold: Optional[float] = None,
        threads: int = 1,
        batch: int = 32,
    ) -> None: ...
    def score(self, frame: Frame, *, bgr: bool = False) -> Result:
        """Scores and judges one frame. Raises TypeError for an array that is not uint8 (or not
        an array), ValueError for another shape; a frame that cannot be scored (empty, beyond
        the limits) is a rejected Result, not an exception."""
    def score_batch(self, frames: Iterable[Frame], *, bgr: bool = False) -> list[Result]:
        """Scores frames together, in forward passes of `batch`; results in order."""
    def score_file(self, path: PathLike) -> Result:
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
        """The energy above which frames are rejected (given, or what alpha amounts to), or None."""
    @property
    def model_sha256(self) -> str: ...

class StateChange:
    """A change of a Stream's debounced state."""

    frame: int
    """The frame that changed it."""
    previous: str
    """The state before: `unknown`, `in_distribution` or `out_of_distribution`."""
    state: str
    rejected_in_window: int

class StreamFrame:
    """One frame pushed into a Stream."""

    index: int
    """Position in the stream, from 0."""
    result: Result
    state: str
    """The debounced state after this frame."""
    rejected_in_window: int
    change: Optional[StateChange]
    """The state change this frame made, or None."""
    frame_difference: Optional[float]
    """Mean absolute difference of its 16x16 luma summary to the previous frame's (levels)."""

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
    def push(self, frame: Frame, *, bgr: bool = False) -> StreamFrame:
        """Scores and judges the next frame (as Gate.score, and the same errors)."""
    @property
    def state(self) -> str:
        """The debounced state now."""
    @property
    def frames(self) -> int:
        """Frames pushed so far."""
