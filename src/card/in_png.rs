//! The card inside a PNG: its `ccv3` text chunk if it has one, else `chara`, base64 of the
//! card's JSON; compressed chunks inflate only as far as a card can be long.

use base64::Engine as _;

use super::{CardError, MAX_CARD_BYTES};

/// The JSON of the card in the PNG `bytes`. `file` names it in errors.
pub(super) fn card_json(bytes: &[u8], file: &str) -> Result<String, CardError> {
    let png = |reason: String| CardError::Png {
        file: file.to_owned(),
        reason,
    };
    if bytes.len() > MAX_CARD_BYTES {
        return Err(png(format!("is over {MAX_CARD_BYTES} bytes")));
    }
    let limits = png::Limits { bytes: 64 << 20 };
    let decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    let mut reader = decoder
        .read_info()
        .map_err(|e| png(format!("is not a readable PNG: {e}")))?;
    // Front ends write the card after the image data: read to the end, skipping pixels.
    reader
        .finish()
        .map_err(|e| png(format!("is not a readable PNG: {e}")))?;
    let info = reader.info();
    // A compressed chunk (zTXt, or iTXt with its flag) inflates no further than the
    // base64 of the largest card: a small chunk must not grow into gigabytes.
    let limit = MAX_CARD_BYTES / 3 * 4 + 4;
    let too_large = |keyword: &str, e: png::DecodingError| {
        png(format!(
            "its `{keyword}` chunk does not inflate to at most {limit} bytes of text: {e}"
        ))
    };
    let chunk = |keyword: &str| -> Result<Option<String>, CardError> {
        if let Some(c) = info
            .uncompressed_latin1_text
            .iter()
            .find(|c| c.keyword.eq_ignore_ascii_case(keyword))
        {
            return Ok(Some(c.text.clone()));
        }
        // zTXt and iTXt are different types with the same two methods.
        macro_rules! inflate_first {
            ($chunks:expr) => {
                if let Some(c) = $chunks
                    .iter()
                    .find(|c| c.keyword.eq_ignore_ascii_case(keyword))
                {
                    let mut c = c.clone();
                    c.decompress_text_with_limit(limit)
                        .map_err(|e| too_large(keyword, e))?;
                    return c.get_text().map(Some).map_err(|e| too_large(keyword, e));
                }
            };
        }
        inflate_first!(info.compressed_latin1_text);
        inflate_first!(info.utf8_text);
        Ok(None)
    };
    let (keyword, encoded) = match (chunk("ccv3")?, chunk("chara")?) {
        (Some(v3), _) => ("ccv3", v3),
        (None, Some(v2)) => ("chara", v2),
        (None, None) => {
            return Err(png(
                "holds no character card (no `chara` or `ccv3` text chunk)".into(),
            ));
        }
    };
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| png(format!("its `{keyword}` chunk is not base64: {e}")))?;
    let json = String::from_utf8(json)
        .map_err(|_| png(format!("its `{keyword}` chunk is not UTF-8 text")))?;
    Ok(json)
}
