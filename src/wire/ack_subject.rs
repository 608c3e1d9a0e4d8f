//! The JetStream delivery metadata in a consumed message's reply subject (`$JS.ACK.…`): the two
//! fields the reader needs, read without building the client's whole `Info`.
//!
//! Owns: [`delivery`], which reads the stream sequence and the time the message was stored
//! from either subject format of NATS ADR-15:
//! - `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<nanos>.<pending>`
//! - `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
//!   seq>.<nanos>.<pending>[.<token>…]` (11 tokens or more; later tokens are ignored, as
//!   async-nats does).
//!
//! Why: the reader consumes every input message once; `async_nats::jetstream::Message::info`
//! parses all nine fields, the consumer and stream names as strings and the timestamp into an
//! `OffsetDateTime`, which was a quarter of the reader thread's time in a drain (perf, 12-03).
//!
//! Must never: accept what async-nats would refuse (another prefix, too few tokens, a field
//! that is not a number): the reader then warns and skips the message as before.

/// What the reader takes from a delivered message's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub stream_sequence: u64,
    /// When the stream stored the message: milliseconds since the Unix epoch.
    pub published_ms: i64,
}

const PREFIX: &[u8] = b"$JS.ACK.";

/// Tokens after the prefix in the original format; the newer one has at least 9.
const TOKENS_V1: usize = 7;
const TOKENS_V2_MIN: usize = 9;

/// The delivery metadata of `reply`, or `None` when it is not a JetStream ack subject.
pub fn delivery(reply: &str) -> Option<Delivery> {
    let rest = reply.as_bytes().strip_prefix(PREFIX)?;
    // The first ten tokens are all either format needs.
    let mut tokens: [&[u8]; 10] = [&[]; 10];
    let mut count = 0;
    for token in rest.split(|byte| *byte == b'.') {
        if count < tokens.len() {
            tokens[count] = token;
        }
        count += 1;
    }
    let (sequence, nanos, pending) = match count {
        TOKENS_V1 => (tokens[3], tokens[5], tokens[6]),
        n if n >= TOKENS_V2_MIN => (tokens[5], tokens[7], tokens[8]),
        _ => return None,
    };
    // The other numeric fields are checked as async-nats checks them.
    let numeric = if count == TOKENS_V1 {
        [tokens[2], tokens[4], pending]
    } else {
        [tokens[4], tokens[6], pending]
    };
    if numeric.iter().any(|field| number(field).is_none()) {
        return None;
    }
    let nanos = i64::try_from(number(nanos)?).ok()?;
    Some(Delivery {
        stream_sequence: number(sequence)?,
        published_ms: nanos.div_euclid(1_000_000),
    })
}

/// A decimal `u64` of ASCII digits only (no sign, not empty, no overflow).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, digit| {
        let digit = digit.checked_sub(b'0').filter(|d| *d <= 9)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_formats_give_the_sequence_and_the_stored_time() {
        assert_eq!(
            delivery("$JS.ACK.CREDITFLOW_IN.reader.1.4242.17.1764754800123456789.9"),
            Some(Delivery {
                stream_sequence: 4242,
                published_ms: 1_764_754_800_123,
            })
        );
        assert_eq!(
            delivery("$JS.ACK._.ACCHASH.CREDITFLOW_IN.reader.2.7.5.1764754800999999999.0.abc"),
            Some(Delivery {
                stream_sequence: 7,
                published_ms: 1_764_754_800_999,
            })
        );
        // 11 tokens (no trailing random token) is also the newer format.
        assert_eq!(
            delivery("$JS.ACK.hub.HASH.S.c.1.9.9.1000000.0")
                .unwrap()
                .stream_sequence,
            9
        );
    }

    #[test]
    fn what_is_not_an_ack_subject_is_refused() {
        for reply in [
            "",
            "_INBOX.abc.def",
            "$JS.ACK.S.c.1.2.3.4",                      // 6 tokens
            "$JS.ACK.S.c.1.2.3.4.5.6",                  // 8 tokens
            "$JS.ACK.S.c.1.x.3.4.5",                    // sequence not a number
            "$JS.ACK.S.c.1.2.3.-4.5",                   // negative time
            "$JS.ACK.S.c.1.2.3.4.",                     // empty pending
            "$JS.ACK.S.c.1.99999999999999999999.3.4.5", // overflow
            "$JS.ACK.S.c.1.2.3.18446744073709551615.5", // time beyond i64
        ] {
            assert_eq!(delivery(reply), None, "{reply}");
        }
    }

    proptest! {
        #[test]
        fn any_metadata_reads_back(
            stream in "[A-Z_]{1,12}",
            consumer in "[a-z0-9]{1,12}",
            delivered in 1u64..1000,
            sequence in any::<u64>(),
            consumer_sequence in any::<u64>(),
            nanos in 0i64..i64::MAX,
            pending in any::<u64>(),
            newer in any::<bool>(),
        ) {
            let reply = if newer {
                format!("$JS.ACK._.HASH.{stream}.{consumer}.{delivered}.{sequence}.{consumer_sequence}.{nanos}.{pending}.rnd")
            } else {
                format!("$JS.ACK.{stream}.{consumer}.{delivered}.{sequence}.{consumer_sequence}.{nanos}.{pending}")
            };
            prop_assert_eq!(
                delivery(&reply),
                Some(Delivery { stream_sequence: sequence, published_ms: nanos / 1_000_000 })
            );
        }
    }
}
