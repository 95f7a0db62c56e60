//! Snowflake order ids: 64 bits = sign 0 | 41-bit milliseconds since [`EPOCH_MS`]
//! | 10-bit worker | 12-bit sequence.
//!
//! Generation is lock-free: the last issued (millisecond, sequence) pair lives in
//! one `AtomicU64`, advanced by compare-and-swap. Within a millisecond the
//! sequence counts up; after 4096 ids the generator waits for the next
//! millisecond, so the ceiling is 4096 ids/ms = 4.096 M/s per worker.
//!
//! Clock steps backwards are the classic way to mint a duplicate. Here the
//! stored millisecond never goes back: while the clock is behind it by at most
//! [`MAX_BACKWARD_MS`], ids keep coming from the stored millisecond's remaining
//! sequence and then the generator waits for the clock to catch up; a larger
//! step is refused with [`IdError::ClockMovedBackwards`]. Either way no id is
//! ever issued twice.
//!
//! The clock is a parameter ([`Clock`]), so tests drive time by hand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Custom epoch: 2024-01-01T00:00:00Z. 41 bits of milliseconds last until 2093.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const WORKER_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const TIMESTAMP_BITS: u32 = 41;
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
pub const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;
const MAX_TIMESTAMP: u64 = (1 << TIMESTAMP_BITS) - 1;
/// Ids per second one worker can issue at most: 4096 per millisecond.
pub const CEILING_PER_SEC: f64 = ((MAX_SEQUENCE + 1) * 1000) as f64;

/// Backward clock steps up to this size are waited out. NTP slews and small
/// corrections are a few milliseconds; a step of more than this is a real clock
/// problem, and making every buyer wait it out would be worse than an error.
pub const MAX_BACKWARD_MS: u64 = 50;

/// A source of wall-clock milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        // A system clock before 1970 is not a state this service can act on;
        // reading it as 0 makes `next_id` refuse with `ClockBeforeEpoch`.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Shared clocks: the id minter and the worker lease read the same one.
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, by_ms: u64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why no id could be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "system clock moved backwards by {by_ms} ms (more than the {MAX_BACKWARD_MS} ms waited out); refusing to issue ids that could repeat"
    )]
    ClockMovedBackwards { by_ms: u64 },
    #[error("system clock reads before the snowflake epoch (2024-01-01)")]
    ClockBeforeEpoch,
    #[error("snowflake timestamp space is exhausted (year 2093)")]
    Exhausted,
}

/// An issued order id. Shown to clients as a decimal string: 64 bits do not fit
/// a JavaScript number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderId(pub u64);

impl OrderId {
    /// Parses a decimal id: 1 to [`Self::MAX_DIGITS`] ASCII digits (no sign,
    /// unlike `u64::from_str`), at most [`Self::MAX`]: anything with the sign
    /// bit set is not a snowflake. Exactly what [`Self::pattern`] admits.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty()
            || raw.len() > Self::MAX_DIGITS
            || !raw.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!(
                "`{raw}` is not 1 to {} decimal digits",
                Self::MAX_DIGITS
            ));
        }
        let value: u64 = raw
            .parse()
            .map_err(|_| format!("`{raw}` is not a decimal 64-bit integer"))?;
        if value > Self::MAX {
            return Err(format!("`{raw}` has the sign bit set: not a snowflake id"));
        }
        Ok(Self(value))
    }

    /// The largest id: the sign bit stays clear (SQL stores ids as BIGINT).
    pub const MAX: u64 = i64::MAX as u64;
    /// Digits of [`Self::MAX`].
    const MAX_DIGITS: usize = Self::MAX.ilog10() as usize + 1;

    /// A regular expression for the decimal strings of 0 to [`Self::MAX`],
    /// leading zeros allowed: any shorter run of digits, or one of
    /// [`Self::MAX_DIGITS`] digits that is below the bound at its first
    /// difference, or the bound itself. For the OpenAPI document, which has
    /// no numeric bound for a string.
    pub fn pattern() -> String {
        let bound = Self::MAX.to_string();
        let mut branches = vec![format!("[0-9]{{1,{}}}", bound.len() - 1)];
        for (at, digit) in bound.bytes().enumerate() {
            if digit > b'0' {
                let rest = bound.len() - at - 1;
                branches.push(format!(
                    "{}[0-{}][0-9]{{{rest}}}",
                    &bound[..at],
                    char::from(digit - 1)
                ));
            }
        }
        branches.push(bound);
        format!("^(?:{})$", branches.join("|"))
    }

    /// Splits the id into its fields.
    pub fn parts(self) -> IdParts {
        IdParts {
            unix_ms: (self.0 >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS,
            worker: ((self.0 >> SEQUENCE_BITS) & u64::from(MAX_WORKER)) as u16,
            sequence: (self.0 & MAX_SEQUENCE) as u16,
        }
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for OrderId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl utoipa::PartialSchema for OrderId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(Self::pattern()))
            .description(Some(
                "A snowflake order id, as a decimal string (64 bits do not fit a JavaScript number).",
            ))
            .examples(["383707502160703488"])
            .into()
    }
}

impl utoipa::ToSchema for OrderId {}

impl<'de> serde::Deserialize<'de> for OrderId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The fields of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub worker: u16,
    pub sequence: u16,
}

/// A lock-free snowflake generator for one worker number.
#[derive(Debug)]
pub struct Snowflake<C: Clock = SystemClock> {
    worker: u16,
    /// `(ms since EPOCH_MS) << SEQUENCE_BITS | sequence` of the last id issued.
    /// One word, so one compare-and-swap claims an id.
    last: AtomicU64,
    clock: C,
}

impl Snowflake<SystemClock> {
    pub fn new(worker: u16) -> Self {
        Self::with_clock(worker, SystemClock)
    }
}

impl<C: Clock> Snowflake<C> {
    /// # Panics
    /// If `worker` > [`MAX_WORKER`]: the callers validate it first (config parser,
    /// lease), so this is a programming error.
    pub fn with_clock(worker: u16, clock: C) -> Self {
        assert!(worker <= MAX_WORKER, "worker {worker} out of range");
        Self {
            worker,
            last: AtomicU64::new(0),
            clock,
        }
    }

    /// A generator that issues no id in or before the Unix millisecond
    /// `floor_ms`: for a worker number whose earlier holders may have minted
    /// up to there. Until the clock passes the floor, `next_id` waits out a
    /// gap of up to [`MAX_BACKWARD_MS`] and refuses a larger one.
    pub fn with_floor(worker: u16, clock: C, floor_ms: u64) -> Self {
        let generator = Self::with_clock(worker, clock);
        if let Some(floor) = floor_ms.checked_sub(EPOCH_MS) {
            // The floor's sequence counts as used up: the next id needs a
            // later millisecond.
            generator
                .last
                .store((floor << SEQUENCE_BITS) | MAX_SEQUENCE, Ordering::Release);
        }
        generator
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// The Unix millisecond of the last id issued (or of the floor).
    pub fn last_unix_ms(&self) -> u64 {
        (self.last.load(Ordering::Acquire) >> SEQUENCE_BITS) + EPOCH_MS
    }

    /// Issues the next id.
    pub fn next_id(&self) -> Result<OrderId, IdError> {
        let mut spins = 0u32;
        loop {
            let now = self.elapsed_ms()?;
            let last = self.last.load(Ordering::Acquire);
            let last_ms = last >> SEQUENCE_BITS;
            let next = if now > last_ms {
                now << SEQUENCE_BITS
            } else if last_ms - now > MAX_BACKWARD_MS {
                return Err(IdError::ClockMovedBackwards {
                    by_ms: last_ms - now,
                });
            } else if last & MAX_SEQUENCE < MAX_SEQUENCE {
                // Same millisecond, or the clock slightly behind: keep counting
                // in the stored millisecond, which never goes back.
                last + 1
            } else {
                // Sequence exhausted: wait for the clock to pass `last_ms`.
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            };
            if self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(OrderId(
                    (next >> SEQUENCE_BITS) << (WORKER_BITS + SEQUENCE_BITS)
                        | u64::from(self.worker) << SEQUENCE_BITS
                        | (next & MAX_SEQUENCE),
                ));
            }
        }
    }

    fn elapsed_ms(&self) -> Result<u64, IdError> {
        let now = self
            .clock
            .now_ms()
            .checked_sub(EPOCH_MS)
            .ok_or(IdError::ClockBeforeEpoch)?;
        if now > MAX_TIMESTAMP {
            return Err(IdError::Exhausted);
        }
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    const T0: u64 = EPOCH_MS + 1_000_000;

    #[test]
    fn an_id_decodes_to_its_time_worker_and_sequence() {
        let generator = Snowflake::with_clock(7, ManualClock::new(T0));
        let first = generator.next_id().unwrap();
        let second = generator.next_id().unwrap();
        assert_eq!(
            first.parts(),
            IdParts {
                unix_ms: T0,
                worker: 7,
                sequence: 0
            }
        );
        assert_eq!(second.parts().sequence, 1);
        assert!(first.0 >> 63 == 0, "sign bit stays clear");
    }

    #[test]
    fn a_floored_generator_issues_nothing_at_or_before_its_floor() {
        let clock = Arc::new(ManualClock::new(T0));
        let generator = Snowflake::with_floor(7, Arc::clone(&clock), T0 + 1_000);
        assert!(matches!(
            generator.next_id(),
            Err(IdError::ClockMovedBackwards { by_ms: 1_000 })
        ));
        clock.set(T0 + 1_001);
        assert_eq!(generator.next_id().unwrap().parts().unix_ms, T0 + 1_001);
        assert_eq!(generator.last_unix_ms(), T0 + 1_001);
    }

    #[test]
    fn ids_parse_back_from_their_decimal_form() {
        let id = Snowflake::new(3).next_id().unwrap();
        assert_eq!(OrderId::parse(&id.to_string()), Ok(id));
        assert!(
            OrderId::parse("18446744073709551615").is_err(),
            "sign bit set"
        );
        assert!(OrderId::parse("12x").is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
    }

    #[test]
    fn ids_increase_strictly_on_one_thread_with_the_real_clock() {
        let generator = Snowflake::new(1);
        let mut previous = generator.next_id().unwrap();
        for _ in 0..200_000 {
            let id = generator.next_id().unwrap();
            assert!(id > previous);
            previous = id;
        }
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let generator = Arc::new(Snowflake::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let generator = Arc::clone(&generator);
                std::thread::spawn(move || {
                    (0..50_000)
                        .map(|_| generator.next_id().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            let ids = handle.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "increasing per thread");
            for id in ids {
                assert!(seen.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(seen.len(), 200_000);
    }

    #[test]
    fn an_exhausted_sequence_waits_for_the_next_millisecond() {
        let clock = Arc::new(ManualClock::new(T0));
        struct Shared(Arc<ManualClock>);
        impl Clock for Shared {
            fn now_ms(&self) -> u64 {
                self.0.now_ms()
            }
        }
        let generator = Snowflake::with_clock(0, Shared(Arc::clone(&clock)));
        for _ in 0..=MAX_SEQUENCE {
            generator.next_id().unwrap();
        }
        let ticker = {
            let clock = Arc::clone(&clock);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                clock.advance(1);
            })
        };
        let id = generator.next_id().unwrap();
        ticker.join().unwrap();
        assert_eq!(
            id.parts().unix_ms,
            T0 + 1,
            "4097th id waited for the next ms"
        );
        assert_eq!(id.parts().sequence, 0);
    }

    #[test]
    fn a_small_backward_step_keeps_ids_increasing() {
        let clock = ManualClock::new(T0);
        let generator = Snowflake::with_clock(0, clock);
        let before = generator.next_id().unwrap();
        generator.clock.set(T0 - 10);
        let after = generator.next_id().unwrap();
        assert!(after > before);
        assert_eq!(
            after.parts().unix_ms,
            T0,
            "the stored millisecond never goes back"
        );
    }

    #[test]
    fn a_large_backward_step_is_refused_not_duplicated() {
        let generator = Snowflake::with_clock(0, ManualClock::new(T0));
        generator.next_id().unwrap();
        generator.clock.set(T0 - 1_000);
        assert_eq!(
            generator.next_id(),
            Err(IdError::ClockMovedBackwards { by_ms: 1_000 })
        );
        generator.clock.set(T0 + 1);
        assert!(
            generator.next_id().is_ok(),
            "recovers once the clock is back"
        );
    }

    #[test]
    fn a_clock_before_the_epoch_is_an_error() {
        let generator = Snowflake::with_clock(0, ManualClock::new(EPOCH_MS - 1));
        assert_eq!(generator.next_id(), Err(IdError::ClockBeforeEpoch));
    }

    /// Plays a script of clock readings, then keeps moving forward one ms per
    /// reading so any wait in the generator ends.
    struct ScriptedClock {
        script: Vec<u64>,
        calls: AtomicU64,
    }

    impl Clock for ScriptedClock {
        fn now_ms(&self) -> u64 {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
            match self.script.get(call) {
                Some(t) => *t,
                None => {
                    self.script.last().copied().unwrap_or(T0)
                        + (call - self.script.len()) as u64
                        + 1
                }
            }
        }
    }

    proptest! {
        #[test]
        fn no_clock_script_ever_yields_a_duplicate_or_a_decrease(
            steps in prop::collection::vec(-80i64..=3, 1..400),
            draws in 1usize..3000,
        ) {
            let mut t = T0 as i64;
            let script: Vec<u64> = steps.iter().map(|s| { t += s; t as u64 }).collect();
            let generator = Snowflake::with_clock(5, ScriptedClock { script, calls: AtomicU64::new(0) });
            let mut previous: Option<OrderId> = None;
            for _ in 0..draws {
                match generator.next_id() {
                    Ok(id) => {
                        if let Some(p) = previous { prop_assert!(id > p, "{id} after {p}"); }
                        prop_assert_eq!(id.parts().worker, 5);
                        previous = Some(id);
                    }
                    Err(IdError::ClockMovedBackwards { by_ms }) => prop_assert!(by_ms > MAX_BACKWARD_MS),
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            }
        }
    }
}
