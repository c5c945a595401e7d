//! The ebm-gate no_std core on a Cortex-M4F, without an OS, an allocator or tract.
//!
//! For each compiled-in 8x8 frame (`model_data::FRAMES`): the digits MLP of
//! `models/digits-mlp` (weights exported as constants by `models/tools/export_digits_rust.py`)
//! gives 10 logits; the core gives the free energy `E = -T logsumexp(z / T)`, its conformal
//! p-value against the bundle's sorted calibration energies, the verdict (reject when
//! `p <= alpha`, as `ebm-gate` does with the bundle's `gate.json`) and the debounced state of the
//! feed (3 of the last 5 frames rejected to switch out, back at 2 or fewer: `ebm-gate stream`'s
//! defaults). One line per frame goes out over semihosting:
//!
//! ```text
//! frame 0 digit_0 class 0 energy -7.030782 p 0.229167 verdict in_distribution reason within_threshold state unknown ticks 518 1668
//! ```
//!
//! `ticks` are SysTick's counts (core clock) for that frame's forward pass, then for its scores,
//! p-value, verdict and debouncer; a first
//! `calibration` line times a loop of a known number of instructions, so that under QEMU's
//! `-icount shift=0` (one instruction per virtual nanosecond: `cargo run` sets it) ticks convert
//! to instructions, and on a board to cycles. The run ends with a summary line and a semihosting
//! exit (code 0).

#![no_std]
#![no_main]

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;

use ebm_gate::core::conformal::{conformal_quantile, p_value};
use ebm_gate::core::debounce::Debouncer;
use ebm_gate::core::energy::Scores;
use ebm_gate::core::gate::{decide, Reason, Verdict};

#[rustfmt::skip]
mod model_data;
use model_data::*;

/// Logits `[10]` of one 8x8 gray frame (row-major, 0..255): normalise, Linear(64, HIDDEN),
/// ReLU, Linear(HIDDEN, 10), all in f32 on the stack.
fn logits(frame: &[u8; 64]) -> [f32; 10] {
    let mut x = [0.0f32; 64];
    for (xi, &p) in x.iter_mut().zip(frame) {
        *xi = (p as f32 / 255.0 - MEAN) / STD;
    }
    let mut h = [0.0f32; HIDDEN];
    for (hj, (w, b)) in h.iter_mut().zip(W1.iter().zip(&B1)) {
        let acc = w.iter().zip(&x).fold(*b, |acc, (wi, xi)| acc + wi * xi);
        *hj = acc.max(0.0);
    }
    let mut z = [0.0f32; 10];
    for (zk, (w, b)) in z.iter_mut().zip(W2.iter().zip(&B2)) {
        *zk = w.iter().zip(&h).fold(*b, |acc, (wi, hi)| acc + wi * hi);
    }
    z
}

extern "C" {
    /// End of the statics in RAM (cortex-m-rt's link.x): the stack may grow down to here.
    static mut __sheap: u32;
    /// Top of RAM, where the stack starts (link.x).
    static _stack_start: u32;
}

const STACK_PAINT: u32 = 0x5a5a_5a5a;

/// Fills the free RAM between the statics and (a margin below) the current stack pointer with
/// a pattern, so that [`stack_peak`] can tell how deep the stack went.
fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = core::ptr::addr_of_mut!(__sheap) as usize;
    while p + 4 <= sp - 256 {
        // SAFETY: free RAM between the statics and the live stack (256 bytes below the stack
        // pointer, more than this function's frame), word-aligned.
        unsafe { core::ptr::write_volatile(p as *mut u32, STACK_PAINT) };
        p += 4;
    }
}

/// The deepest the stack has gone since [`paint_stack`], bytes.
fn stack_peak() -> usize {
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let mut p = core::ptr::addr_of_mut!(__sheap) as usize;
    // SAFETY: reads of the RAM painted above.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == STACK_PAINT {
        p += 4;
    }
    top - p
}

#[entry]
fn main() -> ! {
    paint_stack();
    let mut cp = cortex_m::Peripherals::take().expect("core peripherals");
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(0x00ff_ffff);
    cp.SYST.clear_current();
    cp.SYST.enable_counter();

    // Calibration of the tick: a loop of exactly 2 x CAL_LOOPS instructions (subs + bne). Under
    // QEMU with `-icount shift=0` (the runner's setting) time advances per instruction, so this
    // gives instructions per tick; on a real part it gives the loop's cycles per tick.
    const CAL_LOOPS: u32 = 100_000;
    let start = cortex_m::peripheral::SYST::get_current();
    // SAFETY: a register-only countdown loop; no memory, no stack.
    unsafe {
        core::arch::asm!("2:", "subs {0}, {0}, #1", "bne 2b", inout(reg) CAL_LOOPS => _, options(nomem, nostack));
    }
    let cal_ticks = start.wrapping_sub(cortex_m::peripheral::SYST::get_current()) & 0x00ff_ffff;
    hprintln!("calibration: {} instructions (subs/bne loop) in {} ticks", 2 * CAL_LOOPS, cal_ticks);

    // The energy above which the conformal rule rejects (for the log; verdicts use p-values).
    // (None: too few calibration energies for this alpha; every p-value is then above it.)
    let threshold = conformal_quantile(&CALIBRATION_ENERGIES, ALPHA).unwrap_or(f32::INFINITY);
    hprintln!(
        "ebm-gate cortex-m: model {} ({} hidden units), T {}, alpha {}, {} calibration energies, threshold E <= {}",
        &MODEL_SHA256[..12],
        HIDDEN,
        TEMPERATURE,
        ALPHA,
        CALIBRATION_ENERGIES.len(),
        threshold
    );
    // `ebm-gate stream`'s defaults: window 5, out at >= 3 rejected, back at <= 2.
    let mut debouncer: Debouncer<8> = match Debouncer::new(5, 3, 2) {
        Ok(d) => d,
        Err(_) => panic!("debouncer settings"),
    };
    let (mut rejected, mut changes, mut total_ticks) = (0u32, 0u32, 0u32);
    for (i, (frame, name)) in FRAMES.iter().zip(FRAME_NAMES.iter()).enumerate() {
        let start = cortex_m::peripheral::SYST::get_current();
        let z = logits(frame);
        let mid = cortex_m::peripheral::SYST::get_current();
        // A frame that cannot be scored is rejected (the gate fails closed).
        let (class, energy, p, (verdict, reason)) = match Scores::from_logits(&z, TEMPERATURE) {
            Ok(s) => {
                let p = p_value(&CALIBRATION_ENERGIES, s.energy);
                (s.class, s.energy, p, decide(s.energy, f32::INFINITY, Some((p, ALPHA))))
            }
            Err(_) => (0, f32::NAN, f32::NAN, (Verdict::OutOfDistribution, Reason::NonFiniteEnergy)),
        };
        let step = debouncer.push(verdict);
        let end = cortex_m::peripheral::SYST::get_current();
        // SysTick counts down, modulo 2^24.
        let forward_ticks = start.wrapping_sub(mid) & 0x00ff_ffff;
        let gate_ticks = mid.wrapping_sub(end) & 0x00ff_ffff;
        total_ticks += forward_ticks + gate_ticks;
        if verdict == Verdict::OutOfDistribution {
            rejected += 1;
        }
        hprintln!(
            "frame {} {} class {} energy {:.6} p {:.6} verdict {} reason {} state {} ticks {} {}",
            i,
            name,
            class,
            energy,
            p,
            verdict.as_str(),
            reason.as_str(),
            step.state.as_str(),
            forward_ticks,
            gate_ticks
        );
        if let Some(from) = step.changed_from {
            changes += 1;
            hprintln!("event {} {} -> {}", i, from.as_str(), step.state.as_str());
        }
    }
    hprintln!(
        "done: {} frames, {} rejected, {} state changes, final state {}, {} SysTick ticks in all, peak stack {} bytes",
        FRAMES.len(),
        rejected,
        changes,
        debouncer.state().as_str(),
        total_ticks,
        stack_peak()
    );
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}
