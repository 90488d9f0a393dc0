//! The protobuf codec of our services: tonic's prost codec, with one check before decoding.
//!
//! prost decodes a whole message before validation can look at it, so a 4 MB request made of
//! 350,000 empty reviews costs a tenth of a second of the async runtime and ~90 MB of structs
//! just to be refused for having too many. Counting the message's top-level fields first is a
//! single pass over the bytes with no allocation, so such a message is refused before it is
//! decoded. The bound is loose on purpose (`MAX_TOP_LEVEL_FIELDS`, above what any configuration
//! accepts); the configured limits are still checked, with their own messages, after decoding.

use hyper::body::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// More top-level fields than any valid request has: `limits.max_reviews_per_request` and
/// `feedback.max_verdicts_per_request` are at most 10,000 each, and a request has a few other
/// fields besides.
pub const MAX_TOP_LEVEL_FIELDS: usize = 20_000;

/// How the refusal's message starts, so the transport can count it (`status::is_decode_failure`).
pub const REFUSED_BEFORE_DECODING: &str = "refused before decoding: ";

/// `ProstCodec` with the field count checked before decoding (see the module docs).
pub struct BoundedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(self.0.decoder())
    }
}

pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Send> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands the decoder exactly one whole message, contiguous in one buffer.
        if let Some(fields) = count_top_level_fields(src.chunk(), MAX_TOP_LEVEL_FIELDS)
            && fields > MAX_TOP_LEVEL_FIELDS
        {
            return Err(too_many_entries());
        }
        let bytes = src.remaining();
        crate::serving::blocking::if_large(bytes, || self.0.decode(src))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The refusal of a request with more than `MAX_TOP_LEVEL_FIELDS` entries (the HTTP/JSON API
/// refuses such a body with the same words).
pub fn too_many_entries() -> Status {
    Status::invalid_argument(format!(
        "{REFUSED_BEFORE_DECODING}the request has more than {MAX_TOP_LEVEL_FIELDS} entries (reviews, tasks or \
         verdicts); no configuration accepts that many"
    ))
}

/// Top-level fields of the protobuf message in `bytes`, counting no further than `limit + 1`;
/// `None` when the bytes are not well-formed (prost then says why).
fn count_top_level_fields(mut bytes: &[u8], limit: usize) -> Option<usize> {
    let mut fields = 0;
    while !bytes.is_empty() && fields <= limit {
        let key = varint(&mut bytes)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut bytes)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut bytes)?).ok()?,
            5 => 4,
            _ => return None,
        };
        bytes = bytes.get(skip..)?;
        fields += 1;
    }
    Some(fields)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::grpc::pb;

    #[test]
    fn counts_the_fields_prost_would_decode() {
        let review = |i: usize| pb::Review { id: format!("r{i}"), text: "great product".into(), ..Default::default() };
        let req = pb::ClassifyRequest {
            reviews: (0..5).map(review).collect(),
            tasks: vec!["abuse".into()],
            request_id: "x".into(),
            surface: None,
        };
        assert_eq!(count_top_level_fields(&req.encode_to_vec(), 100), Some(7));
        // Stops counting past the limit.
        assert_eq!(count_top_level_fields(&req.encode_to_vec(), 2), Some(3));
        assert_eq!(count_top_level_fields(&[], 10), Some(0));
        // Malformed: a length past the end, a bad wire type.
        assert_eq!(count_top_level_fields(&[0x0a, 0x05, 0x01], 10), None);
        assert_eq!(count_top_level_fields(&[0x0f], 10), None);
    }
}
