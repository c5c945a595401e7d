//! Debounced verdicts over a stream of frames: k-of-n over a sliding window, with hysteresis.
//!
//! A camera feed gives one [`Verdict`] per frame; one glitchy frame (a torn frame, a flash)
//! should not flip the state of the feed. [`Debouncer`] keeps the last `n` verdicts in a
//! fixed-capacity ring ([`heapless::Deque`], no allocation) and counts the rejected ones, `r`:
//!
//! - from `InDistribution`, the state becomes `OutOfDistribution` when `r >= enter`;
//! - from `OutOfDistribution`, it becomes `InDistribution` again when `r <= exit`;
//! - it starts `Unknown` (nothing judged yet), and becomes `OutOfDistribution` as soon as
//!   `r >= enter`, or `InDistribution` once the window is full (`n` frames) with `r <= exit`:
//!   a feed is trusted only after a whole window looked clean, as after an outage.
//!
//! `exit < enter` is required. `exit = enter - 1` is plain k-of-n (`k = enter`): once decided,
//! the state is `OutOfDistribution` exactly when at least `k` of the last `n` frames were
//! rejected. A smaller `exit` adds hysteresis: the feed must look clean for longer before it is
//! trusted again (and a full window with `exit < r < enter` leaves the start `Unknown`). A
//! window shorter than `n` (the first frames) counts what it has.
//!
//! ```
//! use ebm_gate::core::debounce::{Debouncer, State};
//! use ebm_gate::core::gate::Verdict::{InDistribution as In, OutOfDistribution as Out};
//! // 3 of the last 5 frames rejected -> OOD; back when at most 1 of the last 5 is.
//! let mut d: Debouncer<8> = Debouncer::new(5, 3, 1).unwrap();
//! let feed = [In, In, In, In, In, Out, In, In, Out, Out, Out, In, In, In, In];
//! let states: Vec<State> = feed.iter().map(|&v| d.push(v).state).collect();
//! assert_eq!(states[3], State::Unknown); // 4 frames: not a window yet
//! assert_eq!(states[4], State::InDistribution); // a whole window, none rejected
//! assert_eq!(states[5], State::InDistribution); // one glitch does not flip it
//! assert_eq!(states[9], State::OutOfDistribution); // frames 5, 8, 9 of the last 5 rejected
//! assert_eq!(states[13], State::OutOfDistribution); // 2 of the last 5: hysteresis holds it
//! assert_eq!(states[14], State::InDistribution); // 1 of the last 5
//! ```

use heapless::Deque;

use super::gate::Verdict;

/// The debounced state of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not decided yet: too few frames judged (the start, or after [`Debouncer::reset`]).
    Unknown,
    /// The feed looks in-distribution.
    InDistribution,
    /// The feed looks out-of-distribution.
    OutOfDistribution,
    /// No frame came for a while (set by a stream's stall watchdog, never by [`Debouncer`]; the
    /// next frame starts a new window, `Unknown`).
    Stalled,
}

impl State {
    /// The stable lowercase name used in JSON output: `unknown` | `in_distribution` |
    /// `out_of_distribution` | `stalled`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::InDistribution => "in_distribution",
            State::OutOfDistribution => "out_of_distribution",
            State::Stalled => "stalled",
        }
    }
}

/// Why a [`Debouncer`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebounceError {
    /// The window `n` is 0 or larger than the capacity `N`.
    Window {
        /// The window asked for.
        n: usize,
        /// The capacity.
        capacity: usize,
    },
    /// The thresholds are not `exit < enter <= n`.
    Thresholds {
        /// Rejections in the window that switch to `OutOfDistribution`.
        enter: usize,
        /// Rejections in the window at or below which it switches back.
        exit: usize,
        /// The window.
        n: usize,
    },
}

impl core::fmt::Display for DebounceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DebounceError::Window { n, capacity } => write!(f, "window n = {n} must be in 1..={capacity}"),
            DebounceError::Thresholds { enter, exit, n } => {
                write!(f, "need exit < enter <= n, got exit = {exit}, enter = {enter}, n = {n}")
            }
        }
    }
}

/// What [`Debouncer::push`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The debounced state after this frame.
    pub state: State,
    /// `Some(previous state)` when this frame changed the state.
    pub changed_from: Option<State>,
    /// Rejected frames among the last `n` (or fewer, at the start).
    pub rejected_in_window: usize,
}

/// k-of-n debouncing with hysteresis over a window of at most `N` verdicts (see the module
/// docs). `N` is the capacity, fixed at compile time; the window `n <= N` is set at run time.
#[derive(Debug, Clone)]
pub struct Debouncer<const N: usize> {
    window: Deque<bool, N>,
    n: usize,
    enter: usize,
    exit: usize,
    rejected: usize,
    state: State,
}

impl<const N: usize> Debouncer<N> {
    /// A debouncer over the last `n` verdicts that switches to `OutOfDistribution` at `enter`
    /// rejections and back at `exit` or fewer.
    ///
    /// # Errors
    /// [`DebounceError::Window`] unless `1 <= n <= N`; [`DebounceError::Thresholds`] unless
    /// `exit < enter <= n`.
    pub fn new(n: usize, enter: usize, exit: usize) -> Result<Self, DebounceError> {
        if n == 0 || n > N {
            return Err(DebounceError::Window { n, capacity: N });
        }
        if !(exit < enter && enter <= n) {
            return Err(DebounceError::Thresholds { enter, exit, n });
        }
        Ok(Debouncer { window: Deque::new(), n, enter, exit, rejected: 0, state: State::Unknown })
    }

    /// Plain k-of-n: `OutOfDistribution` exactly when at least `k` of the last `n` frames were
    /// rejected (`enter = k`, `exit = k - 1`).
    ///
    /// # Errors
    /// As [`Debouncer::new`]; `k = 0` is a [`DebounceError::Thresholds`].
    pub fn k_of_n(k: usize, n: usize) -> Result<Self, DebounceError> {
        if k == 0 {
            return Err(DebounceError::Thresholds { enter: 0, exit: 0, n });
        }
        Self::new(n, k, k - 1)
    }

    /// Takes the next frame's verdict; `OutOfDistribution` counts as a rejection.
    pub fn push(&mut self, verdict: Verdict) -> Step {
        let rejected = verdict == Verdict::OutOfDistribution;
        if self.window.len() == self.n {
            if let Some(true) = self.window.pop_front() {
                self.rejected -= 1;
            }
        }
        // Cannot fail: the window holds fewer than n <= N items here.
        let _ = self.window.push_back(rejected);
        self.rejected += usize::from(rejected);
        let before = self.state;
        let full = self.window.len() == self.n;
        self.state = match before {
            State::InDistribution | State::Unknown if self.rejected >= self.enter => State::OutOfDistribution,
            State::OutOfDistribution if self.rejected <= self.exit => State::InDistribution,
            State::Unknown if full && self.rejected <= self.exit => State::InDistribution,
            s => s,
        };
        Step {
            state: self.state,
            changed_from: (self.state != before).then_some(before),
            rejected_in_window: self.rejected,
        }
    }

    /// The current debounced state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Forgets the window and returns to `Unknown` (after a camera restart, say).
    pub fn reset(&mut self) {
        self.window.clear();
        self.rejected = 0;
        self.state = State::Unknown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{InDistribution as In, OutOfDistribution as Out};

    /// The rule restated with a plain array recount over the last n verdicts each frame.
    fn reference(feed: &[Verdict], n: usize, enter: usize, exit: usize) -> ([State; 64], usize) {
        let mut out = [State::Unknown; 64];
        let mut state = State::Unknown;
        for (i, _) in feed.iter().enumerate() {
            let lo = (i + 1).saturating_sub(n);
            let r = feed[lo..=i].iter().filter(|&&v| v == Out).count();
            state = match state {
                State::InDistribution | State::Unknown if r >= enter => State::OutOfDistribution,
                State::OutOfDistribution if r <= exit => State::InDistribution,
                State::Unknown if i + 1 >= n && r <= exit => State::InDistribution,
                s => s,
            };
            out[i] = state;
        }
        (out, feed.len())
    }

    #[test]
    fn matches_a_recount_on_seeded_random_feeds() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for trial in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = 1 + (x % 12) as usize;
            let enter = 1 + ((x >> 8) % n as u64) as usize;
            let exit = ((x >> 16) % enter as u64) as usize;
            let p_out = (x >> 24) % 100;
            let mut feed = [In; 64];
            for v in feed.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = if x % 100 < p_out { Out } else { In };
            }
            let (want, len) = reference(&feed, n, enter, exit);
            let mut d: Debouncer<16> = Debouncer::new(n, enter, exit).unwrap();
            let mut prev = State::Unknown;
            for (i, &v) in feed[..len].iter().enumerate() {
                let s = d.push(v);
                assert_eq!(s.state, want[i], "trial {trial} n {n} enter {enter} exit {exit} frame {i}");
                assert_eq!(s.changed_from, (s.state != prev).then_some(prev));
                prev = s.state;
            }
        }
    }

    #[test]
    fn one_glitch_does_not_flip_and_bad_settings_are_errors() {
        let mut d: Debouncer<4> = Debouncer::k_of_n(2, 3).unwrap();
        assert_eq!(d.push(Out).state, State::Unknown);
        assert_eq!(d.push(In).state, State::Unknown);
        let s = d.push(In); // a full window with 1 <= exit rejected
        assert_eq!((s.state, s.changed_from), (State::InDistribution, Some(State::Unknown)));
        let s = d.push(Out);
        assert_eq!((s.state, s.rejected_in_window), (State::InDistribution, 1)); // the first Out left
        let s = d.push(Out);
        assert_eq!(s.changed_from, Some(State::InDistribution));
        d.reset();
        assert_eq!(d.state(), State::Unknown);
        // Enough rejections decide before the window is full; a hysteresis band at a full
        // window leaves the start undecided.
        let mut d: Debouncer<8> = Debouncer::new(5, 3, 1).unwrap();
        let states: Vec<State> = [Out, Out, Out].iter().map(|&v| d.push(v).state).collect();
        assert_eq!(states, [State::Unknown, State::Unknown, State::OutOfDistribution]);
        let mut d: Debouncer<8> = Debouncer::new(5, 3, 1).unwrap();
        let states: Vec<State> = [Out, In, Out, In, In, In].iter().map(|&v| d.push(v).state).collect();
        assert_eq!(states[4], State::Unknown); // 2 of 5: neither >= 3 nor <= 1
        assert_eq!(states[5], State::InDistribution); // 1 of the last 5
        assert_eq!(Debouncer::<4>::new(5, 2, 1).unwrap_err(), DebounceError::Window { n: 5, capacity: 4 });
        assert!(Debouncer::<4>::new(0, 1, 0).is_err());
        assert!(Debouncer::<4>::new(3, 2, 2).is_err());
        assert!(Debouncer::<4>::new(3, 4, 1).is_err());
        assert!(Debouncer::<4>::k_of_n(0, 3).is_err());
    }
}
