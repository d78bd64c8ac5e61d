//! W3C Trace Context `traceparent` values: the one form in which trace
//! context enters the broker (request field or metadata), is stored with a
//! job, and leaves it again (every delivery).

use crate::error::BrokerError;
use std::fmt;

/// The request metadata key producers and workers send trace context in.
pub const METADATA_KEY: &str = "traceparent";

/// A parsed version-00 `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace that the producer, the broker and the workers share.
    pub trace_id: [u8; 16],
    /// The span the next span is a child of.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 says the trace is sampled, so children follow it.
    pub flags: u8,
}

/// Length of `00-<32 hex>-<16 hex>-<2 hex>`.
const LEN: usize = 55;

impl TraceParent {
    /// Parses the exact W3C form: lowercase hex, version 00, neither id all
    /// zero. Anything else is `None` (later versions are refused rather than
    /// guessed at: only 00 is defined).
    pub fn parse(s: &str) -> Option<TraceParent> {
        let b = s.as_bytes();
        if b.len() != LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || &b[..2] != b"00" {
            return None;
        }
        let lower_hex = |part: &[u8]| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !(lower_hex(&b[3..35]) && lower_hex(&b[36..52]) && lower_hex(&b[53..55])) {
            return None;
        }
        let mut tp = TraceParent { trace_id: [0; 16], span_id: [0; 8], flags: 0 };
        hex::decode_to_slice(&s[3..35], &mut tp.trace_id).ok()?;
        hex::decode_to_slice(&s[36..52], &mut tp.span_id).ok()?;
        let mut flags = [0u8; 1];
        hex::decode_to_slice(&s[53..55], &mut flags).ok()?;
        tp.flags = flags[0];
        if tp.trace_id == [0; 16] || tp.span_id == [0; 8] {
            return None;
        }
        Some(tp)
    }

    /// A traceparent a client set explicitly: empty means none, malformed is
    /// the client's error. `field` names it in the error (built only then).
    pub fn from_field(value: &str, field: impl FnOnce() -> String) -> Result<Option<TraceParent>, BrokerError> {
        if value.is_empty() {
            return Ok(None);
        }
        TraceParent::parse(value).map(Some).ok_or_else(|| {
            // Echo a bounded prefix: the value may be arbitrarily long.
            let shown: String = value.chars().take(LEN + 9).collect();
            BrokerError::InvalidArgument(format!(
                "{} {shown:?} is malformed: use the W3C form 00-<32 hex digits trace id>-<16 hex digits span \
                 id>-<2 hex digits flags>, lowercase, with neither id all zeros",
                field()
            ))
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.span_id), self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_the_spec_example() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), GOOD);
    }

    #[test]
    fn refuses_everything_but_the_exact_form() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for s in bad {
            assert_eq!(TraceParent::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn explicit_field_errors_name_the_field() {
        assert_eq!(TraceParent::from_field("", || unreachable!()).unwrap(), None);
        assert!(TraceParent::from_field(GOOD, || unreachable!()).unwrap().is_some());
        let e = TraceParent::from_field("nope", || "jobs[2].traceparent".into()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().starts_with("jobs[2].traceparent \"nope\" is malformed"), "{e}");
        let long = "x".repeat(10_000);
        assert!(TraceParent::from_field(&long, || "traceparent".into()).unwrap_err().to_string().len() < 400);
    }
}
